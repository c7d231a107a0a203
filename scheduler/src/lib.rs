//! The qefleet scheduler: validates and analyses submissions, routes them to a pool,
//! queues them on JetStream, and triggers consolidation every N completions.

pub mod complexity;
pub mod consolidation;
pub mod control;
pub mod escalate;
pub mod liveness;
pub mod recall;
pub mod router;
pub mod service;
pub mod sona;
pub mod submit;
pub mod validate;

pub use service::{run, SchedulerArgs, SchedulerError};
