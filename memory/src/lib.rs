//! The ReasoningBank: trajectories of completed jobs, retrieved by code similarity
//! (HNSW over L2-normalised embeddings, persisted in sled), distilled into patterns
//! with k-means++.

pub mod bank;
pub mod hnsw;
pub mod kmeans;
pub mod store;
pub mod vector;

pub use bank::{Bank, BankError, BankSettings, Inserted, Neighbour, Pattern, Trajectory};
