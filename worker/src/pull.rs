//! Pulling jobs: requests for as many jobs as the worker can start now, several under way
//! at once.
//!
//! A job is asked for only when a permit is free for it, so nothing waits in a local
//! buffer while its ack_wait runs out. Each request waits at the server (up to a second)
//! and takes jobs as they come. When permits free up while requests are out, more are
//! asked for at once, in a request of their own (once fewer than half the free permits
//! are asked for). The worker used to make one request at a time, each after the last
//! had ended: with every permit busy it started at most one job per round trip.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::Message;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// How long a request waits at the server.
const EXPIRES: Duration = Duration::from_secs(1);

/// What the requests answer.
pub enum Pulled {
    Job(Box<Message>),
    /// A request ended (delivered all it asked for, expired, or failed).
    Ended,
}

/// Requests under way, and the jobs they have asked for and not yet delivered.
pub struct Puller {
    consumer: PullConsumer,
    sender: mpsc::UnboundedSender<(usize, Pulled)>,
    receiver: mpsc::UnboundedReceiver<(usize, Pulled)>,
    /// Jobs asked for and not yet delivered, by all requests under way.
    outstanding: usize,
    requests: JoinSet<()>,
}

impl Puller {
    pub fn new(consumer: PullConsumer) -> Self {
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
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// With `free` permits, asks for more jobs once fewer than half as many are asked
    /// for: up to `free`. Not for every permit given back, which under a trickle of
    /// short jobs would make a request of every job.
    pub fn top_up(&mut self, free: usize) {
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
    pub async fn next(&mut self) -> Pulled {
        let (settled, pulled) = self
            .receiver
            .recv()
            .await
            .expect("the puller holds a sender");
        self.outstanding -= settled;
        pulled
    }
}
