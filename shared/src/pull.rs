//! Pulling messages to handle many at once (the worker's jobs, the scheduler's
//! fire-and-forget submissions): requests for as many messages as can start now, several
//! under way at once.
//!
//! A message is asked for only when a permit is free for it, so nothing waits in a local
//! buffer while its ack_wait runs out. Each request waits at the server (up to a second)
//! and takes jobs as they come. When permits free up while requests are out, more are
//! asked for at once, in a request of their own (once fewer than half the free permits
//! are asked for). The worker used to make one request at a time, each after the last
//! had ended: with every permit busy it started at most one job per round trip.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::shutdown::Shutdown;

/// How long a request waits at the server.
const EXPIRES: Duration = Duration::from_secs(1);

/// What the requests answer.
enum Pulled {
    Job(Box<Message>),
    /// A request ended (delivered all it asked for, expired, or failed).
    Ended,
}

/// Requests under way, and the jobs they have asked for and not yet delivered.
struct Puller {
    consumer: PullConsumer,
    sender: mpsc::UnboundedSender<(usize, Pulled)>,
    receiver: mpsc::UnboundedReceiver<(usize, Pulled)>,
    /// Jobs asked for and not yet delivered, by all requests under way.
    outstanding: usize,
    requests: JoinSet<()>,
}

impl Puller {
    fn new(consumer: PullConsumer) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            consumer,
            sender,
            receiver,
            outstanding: 0,
            requests: JoinSet::new(),
        }
    }

    /// Jobs asked for and not yet delivered.
    fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// With `free` permits, asks for more jobs once fewer than half as many are asked
    /// for: up to `free`. Not for every permit given back, which under a trickle of
    /// short jobs would make a request of every job.
    fn top_up(&mut self, free: usize) {
        while self.requests.try_join_next().is_some() {}
        if self.outstanding * 2 >= free {
            return;
        }
        let wanted = free - self.outstanding;
        self.outstanding += wanted;
        let (consumer, sender) = (self.consumer.clone(), self.sender.clone());
        self.requests.spawn(async move {
            let mut delivered = 0;
            let mut failed = false;
            match consumer
                .batch()
                .max_messages(wanted)
                .expires(EXPIRES)
                .messages()
                .await
            {
                Ok(mut batch) => {
                    while let Some(message) = batch.next().await {
                        let Ok(message) = message else {
                            failed = true;
                            break;
                        };
                        delivered += 1;
                        if sender.send((1, Pulled::Job(Box::new(message)))).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "pull request failed; NATS unavailable?");
                    failed = true;
                }
            }
            if failed {
                // Not again at once: the server or the connection is in trouble.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let _ = sender.send((wanted - delivered, Pulled::Ended));
        });
    }

    /// The next answer of a request.
    async fn next(&mut self) -> Pulled {
        let (settled, pulled) = self
            .receiver
            .recv()
            .await
            .expect("the puller holds a sender");
        self.outstanding -= settled;
        pulled
    }
}

/// Calls `handle` on each message of `consumer`, up to `limit` at once, until shutdown
/// begins. Messages the requests still deliver after that (they run to their expiry) are
/// handed back (nak) unstarted, for up to 10 s. Returns the handlers still running, for
/// the caller to drain as it sees fit.
pub async fn pull_concurrently<F, Fut>(
    consumer: PullConsumer,
    limit: usize,
    mut shutdown: Shutdown,
    handle: F,
) -> JoinSet<()>
where
    F: Fn(Message) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limit.max(1)));
    // Signalled when a handler gives its permit back: more may be asked for.
    let freed = Arc::new(Notify::new());
    let mut in_flight = JoinSet::new();
    let mut puller = Puller::new(consumer);
    while !shutdown.is_triggered() {
        puller.top_up(permits.available_permits());
        let pulled = tokio::select! {
            _ = shutdown.wait() => break,
            _ = freed.notified() => continue,
            pulled = puller.next() => pulled,
        };
        let Pulled::Job(message) = pulled else {
            continue;
        };
        if shutdown.is_triggered() {
            hand_back(&message).await;
            break;
        }
        // Only as many messages are asked for as permits are free, and only here are
        // they taken: this does not wait.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (work, freed) = (handle(*message), freed.clone());
        in_flight.spawn(async move {
            work.await;
            drop(permit);
            freed.notify_one();
        });
        while in_flight.try_join_next().is_some() {}
    }
    let handing_back = tokio::time::Instant::now() + Duration::from_secs(10);
    while puller.outstanding() > 0 {
        match tokio::time::timeout_at(handing_back, puller.next()).await {
            Ok(Pulled::Job(message)) => hand_back(&message).await,
            Ok(Pulled::Ended) => {}
            Err(_) => break,
        }
    }
    in_flight
}

/// Hands a message delivered after the shutdown began straight back, unstarted.
async fn hand_back(message: &Message) {
    if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
        tracing::debug!(error = %e, "nak during shutdown failed; redelivered after ack_wait");
    }
}
