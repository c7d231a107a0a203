//! The loop every background consumer shares: pull a batch from a durable pull consumer
//! (a request that waits at the server at most a second, so shutdown is noticed, and
//! takes messages as they arrive: not `fetch()`, whose `no_wait` request ends once what
//! was there is delivered), hand each message to a handler, and ride out NATS outages by
//! retrying.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{consumer::PullConsumer, Message};
use futures_util::StreamExt;

use crate::shutdown::Shutdown;

/// Calls `handle` for each message until shutdown. The handler acknowledges.
pub async fn for_each_message<F, Fut>(
    consumer: &PullConsumer,
    batch: usize,
    mut shutdown: Shutdown,
    mut handle: F,
) where
    F: FnMut(Message) -> Fut,
    Fut: Future<Output = ()>,
{
    while !shutdown.is_triggered() {
        let Some(mut messages) = pull(consumer, batch, &mut shutdown).await else {
            continue;
        };
        while let Some(Ok(message)) = messages.next().await {
            handle(message).await;
        }
    }
}

/// One pull request for up to `n` messages. When it cannot be made (NATS unavailable),
/// `None` after half a second, or sooner once shutdown begins.
async fn pull(
    consumer: &PullConsumer,
    n: usize,
    shutdown: &mut Shutdown,
) -> Option<async_nats::jetstream::consumer::pull::Batch> {
    let fetched = consumer
        .batch()
        .max_messages(n)
        .expires(Duration::from_secs(1))
        .messages()
        .await;
    match fetched {
        Ok(messages) => Some(messages),
        Err(e) => {
            tracing::debug!(error = %e, "fetch failed; NATS unavailable?");
            tokio::select! {
                _ = shutdown.wait() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            None
        }
    }
}

/// Calls `apply` with a key's current value at start and with every value put since,
/// until shutdown. Deletes are skipped; watch errors are logged with `what`.
pub async fn watch_key(
    bucket: async_nats::jetstream::kv::Store,
    key: &str,
    what: &str,
    mut shutdown: Shutdown,
    mut apply: impl FnMut(&[u8]),
) {
    use async_nats::jetstream::kv::Operation;
    let mut updates = match bucket.watch_with_history(key).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch {what}");
            return;
        }
    };
    loop {
        let entry = tokio::select! {
            _ = shutdown.wait() => return,
            entry = updates.next() => entry,
        };
        match entry {
            Some(Ok(entry)) if entry.operation == Operation::Put => apply(&entry.value),
            Some(Ok(_)) => {}
            Some(Err(e)) => tracing::warn!(error = %e, "{what}: watch error"),
            None => return,
        }
    }
}
