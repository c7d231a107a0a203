//! What every qefleet process needs: NATS connection and provisioning, subject names,
//! metrics, retry dispositions, shutdown, and the embedded nats-server.

pub mod client;
pub mod commit;
pub mod config;
pub mod consume;
pub mod embedded;
pub mod ledger;
pub mod logging;
pub mod messages;
pub mod metrics;
pub mod nats;
pub mod provision;
pub mod pull;
pub mod queues;
pub mod retry;
pub mod shutdown;
pub mod subjects;
pub mod trace;
