//! One module per subcommand.

pub mod dlq;
pub mod replay;
pub mod result;
pub mod route;
pub mod serve;
pub mod sona;
pub mod status;
pub mod submit;
pub mod up;

use anyhow::Context as _;
use qefleet_shared::nats::{connect, NatsArgs};

/// Connects with the process's NATS settings.
pub async fn client(nats: &NatsArgs) -> anyhow::Result<async_nats::Client> {
    connect(nats, "qefleet").await.context("connecting to NATS")
}
