//! The qefleet worker: pulls jobs of one pool from JetStream, runs an engine on them,
//! publishes exactly one result per job id, and never drops a message.

pub mod args;
pub mod consolidator;
pub mod deadletter;
pub mod engine;
pub mod engines;
pub mod memory;
pub mod outbox;
mod registry;
pub mod results;
pub mod runtime;
pub mod sandbox;
pub mod savings;
pub mod sona;

pub use args::{EngineArg, PoolArg, ResultArgs, WorkerArgs};
pub use runtime::{run, WorkerError};
