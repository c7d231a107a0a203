//! Messages stored in groups when the server is slow to store them (ADR 0017): the
//! worker's results and the scheduler's jobs.
//!
//! Under `sync_interval: always` every stored message costs the server an fsync, and a
//! publisher's rate was bounded by its messages' fsyncs. An atomic batch is stored with
//! one fsync for all its messages, but its commit costs the server a few milliseconds,
//! most of it CPU, whatever the batch holds. So: a message is published on its own while
//! one of [`IN_FLIGHT`] commit slots is free; messages that arrive while all are busy wait
//! and go out together, as one atomic batch or one by one, whichever way has been storing
//! them faster (see `Chooser`). Batches need `allow_atomic` on the stream (servers >=
//! 2.12); without it every message is published on its own.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;

/// When messages that wait together go as one atomic batch (`--result-batches`,
/// `--job-batches`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Batching {
    /// When at least 8 wait and batches have been storing them faster than single
    /// publishes (needs a server >= 2.12).
    Auto,
    /// Never: every message is published on its own.
    Never,
    /// Whenever at least 8 wait, however fast (needs a server >= 2.12).
    Always,
}

/// A message a [`GroupPublisher`] stores.
pub trait Commit: Clone + Send + Sync + 'static {
    /// What storing it answers.
    type Stored: Send + 'static;
    /// Its subject.
    fn subject(&self) -> String;
    /// Its headers in an atomic batch (the batch's own are added to them).
    fn batch_headers(&self) -> HeaderMap;
    fn payload(&self) -> Bytes;
    /// Stores it on its own.
    fn publish_single(
        &self,
        js: &jetstream::Context,
    ) -> impl Future<Output = Result<Self::Stored, async_nats::Error>> + Send;
    /// Whether that answer means it was stored now (counted), rather than found stored.
    fn stored_now(answer: &Self::Stored) -> bool;
    /// The answer for a message stored in a batch.
    fn stored_in_batch() -> Self::Stored;
}

/// Commits under way at once; messages arriving while all are busy are grouped. 2 made
/// results wait for a slot at a steady 1000 jobs/s on a slow fsync (ADR 0017).
pub const IN_FLIGHT: usize = 8;
/// Fewer waiting messages than this are always published one by one.
pub const MIN_BATCH: usize = 8;
/// The most messages in one batch (the server's limit is 1000 messages).
pub const MAX_BATCH: usize = 256;

const SINGLE: &str = "single";
const BATCH: &str = "batch";

/// Where commits are counted: called with the kind (`single` or `batch`) and the number
/// of messages a commit stored.
#[derive(Clone)]
pub struct Counts(Arc<dyn Fn(&'static str, usize) + Send + Sync>);

impl Counts {
    pub fn new(count: impl Fn(&'static str, usize) + Send + Sync + 'static) -> Self {
        Self(Arc::new(count))
    }

    /// Publishes one message on its own, counted when it is stored now.
    async fn publish_single<M: Commit>(
        &self,
        js: &jetstream::Context,
        message: &M,
    ) -> Result<M::Stored, async_nats::Error> {
        let published = message.publish_single(js).await;
        if published.as_ref().is_ok_and(M::stored_now) {
            (self.0)(SINGLE, 1);
        }
        published
    }
}

impl std::fmt::Debug for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counts")
    }
}

/// Publishes messages of one kind, committing those that wait together in groups.
#[derive(Debug)]
pub struct GroupPublisher<M: Commit> {
    js: jetstream::Context,
    queue: Option<Queue<M>>,
    counts: Counts,
}

impl<M: Commit> Clone for GroupPublisher<M> {
    fn clone(&self) -> Self {
        Self {
            js: self.js.clone(),
            queue: self.queue.clone(),
            counts: self.counts.clone(),
        }
    }
}

/// The way to the publisher task, and what it shares with callers.
#[derive(Debug)]
struct Queue<M: Commit> {
    sender: tokio::sync::mpsc::UnboundedSender<Waiting<M>>,
    shared: Arc<Shared>,
}

impl<M: Commit> Clone for Queue<M> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// Held by the callers and the task (which holds no sender: it ends when the last
/// publisher is dropped).
#[derive(Debug)]
struct Shared {
    /// Messages sent to the task and not yet taken into a group.
    queued: AtomicUsize,
    slots: Arc<tokio::sync::Semaphore>,
}

struct Waiting<M: Commit> {
    message: M,
    reply: tokio::sync::oneshot::Sender<Result<M::Stored, async_nats::Error>>,
}

impl<M: Commit> std::fmt::Debug for Waiting<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waiting")
    }
}

impl<M: Commit> GroupPublisher<M> {
    /// A publisher for `stream` as the server has it: batching as `wanted` says where the
    /// stream allows atomic batches, never where it does not.
    pub async fn for_stream(
        js: &jetstream::Context,
        stream: &str,
        wanted: Batching,
        counts: Counts,
    ) -> Result<Self, async_nats::Error> {
        let atomic = js
            .get_stream(stream)
            .await?
            .cached_info()
            .config
            .allow_atomic_publish;
        if !atomic && wanted != Batching::Never {
            tracing::info!(
                stream,
                "published one by one: the stream does not allow atomic batches (a server older than 2.12)"
            );
        }
        let batching = if atomic { wanted } else { Batching::Never };
        Ok(Self::with_batching(js, batching, counts))
    }

    /// A publisher batching as `batching` says (on a stream that allows atomic batches
    /// unless it is `Never`).
    pub fn with_batching(js: &jetstream::Context, batching: Batching, counts: Counts) -> Self {
        let queue = (batching != Batching::Never).then(|| {
            let (sender, rx) = tokio::sync::mpsc::unbounded_channel();
            let shared = Arc::new(Shared {
                queued: AtomicUsize::new(0),
                slots: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
            });
            let chooser = Chooser::new(batching == Batching::Always);
            tokio::spawn(commit_groups(
                js.clone(),
                rx,
                shared.clone(),
                chooser,
                counts.clone(),
            ));
            Queue { sender, shared }
        });
        Self {
            js: js.clone(),
            queue,
            counts,
        }
    }

    /// Publishes a message and waits until JetStream has stored it (or answered why not).
    pub async fn publish(&self, message: &M) -> Result<M::Stored, async_nats::Error> {
        let Some(queue) = &self.queue else {
            return self.counts.publish_single(&self.js, message).await;
        };
        // A free slot and nothing queued: publish here, without the hop to the task.
        if queue.shared.queued.load(Ordering::Acquire) == 0 {
            if let Ok(_slot) = queue.shared.slots.try_acquire() {
                return self.counts.publish_single(&self.js, message).await;
            }
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let waiting = Waiting {
            message: message.clone(),
            reply,
        };
        queue.shared.queued.fetch_add(1, Ordering::AcqRel);
        if queue.sender.send(waiting).is_err() {
            queue.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return self.counts.publish_single(&self.js, message).await;
        }
        match answer.await {
            Ok(published) => published,
            // The publisher task is gone (runtime shutting down): publish directly.
            Err(_) => self.counts.publish_single(&self.js, message).await,
        }
    }
}

/// How the task commits groups that find every slot busy (the publisher is saturated):
/// it runs epochs of [`EPOCH_GROUPS`] such groups (or [`EPOCH_LONGEST`] of them) one
/// way, measures the messages per second each way achieved, keeps to the faster and tries
/// the other again now and then (the server's sync setting, disk or load may change).
///
/// Rates, not per-commit costs, because what a batch costs is mostly the server's CPU
/// (1.5-2.5 ms a commit here, measured with results): on a server that fsyncs every
/// write that CPU is idle anyway and batches store messages several times as fast; on
/// one that does not, every commit takes CPU the server, scheduler and workers need, and
/// the whole fleet slows down, which no per-commit timing shows.
#[derive(Debug)]
struct Chooser {
    /// Batch whenever enough wait (tests of the batch path).
    always: bool,
    batches: bool,
    epoch: Option<Epoch>,
    /// Results per second of the last epochs committed one by one and in batches.
    singles_rate: Option<f64>,
    batches_rate: Option<f64>,
    /// Whether the epoch under way tries the slower way again.
    exploring: bool,
    since_explored: u64,
    explore_after: u64,
}

#[derive(Debug)]
struct Epoch {
    started: std::time::Instant,
    /// When its last group formed.
    last: std::time::Instant,
    /// Saturated groups.
    groups: usize,
    /// Every group, saturated or not.
    formed: usize,
    messages: usize,
}

impl Epoch {
    /// Whether a gap since its last group is a pause rather than the pace of commits:
    /// longer than [`EPOCH_IDLE`] and than four of its mean gaps (slow commits of large
    /// groups space them widely), or, before it has a gap to compare, than
    /// [`EPOCH_LONGEST`].
    fn paused(&self, now: std::time::Instant) -> bool {
        let gap = now - self.last;
        let gaps = u32::try_from(self.formed.saturating_sub(1)).unwrap_or(u32::MAX);
        let usual = if gaps == 0 {
            EPOCH_LONGEST
        } else {
            4 * ((self.last - self.started) / gaps)
        };
        gap > EPOCH_IDLE && gap > usual
    }
}

/// Saturated groups in an epoch.
pub const EPOCH_GROUPS: usize = 8;
/// After this many epochs the slower way is tried again (at first).
pub const EXPLORE_EVERY: u64 = 5;
/// The longest wait between tries of the slower way, in epochs.
pub const EXPLORE_AT_MOST: u64 = 80;
/// A gap this long between groups ends an epoch unmeasured (the publisher was idle).
const EPOCH_IDLE: std::time::Duration = std::time::Duration::from_millis(25);
/// An epoch this long is measured with the groups it has, if at least two: large groups
/// on a slow server (a burst of submissions under `sync_interval: always`) would otherwise
/// take seconds to fill one, and one way was never measured against the other.
const EPOCH_LONGEST: std::time::Duration = std::time::Duration::from_millis(500);

impl Chooser {
    fn new(always: bool) -> Self {
        Self {
            always,
            batches: false,
            epoch: None,
            singles_rate: None,
            batches_rate: None,
            exploring: false,
            since_explored: 0,
            explore_after: EXPLORE_EVERY,
        }
    }

    /// Whether a group of `waiting` messages, formed at `now`, goes as one batch.
    fn batch(&mut self, waiting: usize, now: std::time::Instant) -> bool {
        let saturated = waiting >= MIN_BATCH;
        if self.always {
            return saturated;
        }
        // A pause must not be measured.
        if self.epoch.as_ref().is_some_and(|e| e.paused(now)) {
            self.epoch = None;
        }
        if saturated
            && self.epoch.as_ref().is_some_and(|e| {
                e.groups >= EPOCH_GROUPS || (e.groups >= 2 && now - e.started >= EPOCH_LONGEST)
            })
        {
            if let Some(epoch) = self.epoch.take() {
                let seconds = (now - epoch.started).as_secs_f64().max(1e-6);
                let rate = epoch.messages as f64 / seconds;
                let kept = if self.batches {
                    &mut self.batches_rate
                } else {
                    &mut self.singles_rate
                };
                *kept = Some(kept.map_or(rate, |old| 0.5 * old + 0.5 * rate));
                self.batches = self.next_way();
            }
        }
        // An epoch opens with a saturated group and counts every message after it.
        if saturated && self.epoch.is_none() {
            self.epoch = Some(Epoch {
                started: now,
                last: now,
                groups: 0,
                formed: 0,
                messages: 0,
            });
        }
        if let Some(epoch) = &mut self.epoch {
            epoch.messages += waiting;
            epoch.last = now;
            epoch.formed += 1;
            epoch.groups += usize::from(saturated);
        }
        saturated && self.batches
    }

    /// Batches for the next epoch? Each way is measured once, then the faster is kept,
    /// and the other tried again after [`EXPLORE_EVERY`] epochs; each try that confirms
    /// the faster way doubles the wait (up to [`EXPLORE_AT_MOST`]), a try that finds the
    /// other faster resets it.
    fn next_way(&mut self) -> bool {
        let (Some(singles), Some(batches)) = (self.singles_rate, self.batches_rate) else {
            return self.singles_rate.is_some();
        };
        let faster = batches > singles;
        if self.exploring {
            self.exploring = false;
            self.since_explored = 0;
            self.explore_after = if self.batches == faster {
                EXPLORE_EVERY
            } else {
                (self.explore_after * 2).min(EXPLORE_AT_MOST)
            };
            return faster;
        }
        self.since_explored += 1;
        if self.since_explored >= self.explore_after {
            self.exploring = true;
            return !faster;
        }
        faster
    }
}

/// The publisher task: takes the first waiting message, waits for a commit slot, takes
/// every message that arrived meanwhile, and commits them.
async fn commit_groups<M: Commit>(
    js: jetstream::Context,
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<Waiting<M>>,
    shared: Arc<Shared>,
    mut chooser: Chooser,
    counts: Counts,
) {
    while let Some(first) = receiver.recv().await {
        let Ok(slot) = shared.slots.clone().acquire_owned().await else {
            break;
        };
        let mut group = vec![first];
        while group.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        shared.queued.fetch_sub(group.len(), Ordering::AcqRel);
        let batch = chooser.batch(group.len(), std::time::Instant::now());
        let (js, counts) = (js.clone(), counts.clone());
        tokio::spawn(async move {
            commit(&js, group, batch, &counts).await;
            drop(slot);
        });
    }
}

async fn commit<M: Commit>(
    js: &jetstream::Context,
    group: Vec<Waiting<M>>,
    batch: bool,
    counts: &Counts,
) {
    if batch {
        match publish_batch(&js.client(), &group).await {
            Ok(BatchOutcome::Stored) => {
                (counts.0)(BATCH, group.len());
                for waiting in group {
                    let _ = waiting.reply.send(Ok(M::stored_in_batch()));
                }
                return;
            }
            // Refused whole (a message already stored or a duplicate id, a limit): nothing
            // of it was stored, so each message goes on its own and learns its own fate.
            Ok(BatchOutcome::Refused(reason)) => {
                tracing::debug!(messages = group.len(), %reason, "batch refused; publishing its messages one by one");
            }
            // No answer: the batch may or may not be stored. Each caller gets the error
            // (a worker keeps its result in the outbox, whose publisher tells a stored
            // result of its own from another's; a submitter is told to submit again, and
            // the job id de-duplicates).
            Err(e) => {
                let reason = e.to_string();
                for waiting in group {
                    let _ = waiting.reply.send(Err(reason.clone().into()));
                }
                return;
            }
        }
    }
    let singles = group.into_iter().map(|waiting| async move {
        let published = counts.publish_single(js, &waiting.message).await;
        let _ = waiting.reply.send(published);
    });
    futures_util::future::join_all(singles).await;
}

enum BatchOutcome {
    Stored,
    Refused(String),
}

/// Publishes `group` as one atomic batch (ADR-50): every message carries the batch id and
/// its sequence, the last one the commit marker and a reply subject; the server answers
/// the commit once, after storing all of them or none.
async fn publish_batch<M: Commit>(
    client: &async_nats::Client,
    group: &[Waiting<M>],
) -> Result<BatchOutcome, async_nats::Error> {
    let batch_id = nuid::next().to_string();
    let with_batch_headers = |n: usize, waiting: &Waiting<M>| {
        let mut headers = waiting.message.batch_headers();
        headers.insert("Nats-Batch-Id", batch_id.as_str());
        headers.insert("Nats-Batch-Sequence", (n + 1).to_string().as_str());
        (
            waiting.message.subject(),
            headers,
            waiting.message.payload(),
        )
    };
    let Some((last, rest)) = group.split_last() else {
        return Ok(BatchOutcome::Refused("an empty batch".into()));
    };
    for (n, waiting) in rest.iter().enumerate() {
        let (subject, headers, payload) = with_batch_headers(n, waiting);
        client
            .publish_with_headers(subject, headers, payload)
            .await?;
    }
    let (subject, mut headers, payload) = with_batch_headers(rest.len(), last);
    headers.insert("Nats-Batch-Commit", "1");
    let answer = client
        .request_with_headers(subject, headers, payload)
        .await?;
    Ok(batch_outcome(&answer.payload))
}

/// Reads the server's answer to a batch commit: a PubAck, or an error naming why the
/// batch was refused.
fn batch_outcome(answer: &[u8]) -> BatchOutcome {
    #[derive(serde::Deserialize)]
    struct Answer {
        error: Option<serde_json::Value>,
        batch: Option<String>,
    }
    match serde_json::from_slice::<Answer>(answer) {
        Ok(Answer {
            error: None,
            batch: Some(_),
        }) => BatchOutcome::Stored,
        Ok(Answer { error: Some(e), .. }) => BatchOutcome::Refused(e.to_string()),
        _ => BatchOutcome::Refused(format!(
            "unexpected answer to a batch commit: {}",
            String::from_utf8_lossy(answer)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Runs one epoch of saturated groups of 32 messages, each taking `singles` when
    /// published one by one and `batch` as a batch; returns the epoch's way.
    fn epoch(
        chooser: &mut Chooser,
        clock: &mut Instant,
        singles: Duration,
        batch: Duration,
    ) -> bool {
        let mut ways = Vec::new();
        for _ in 0..EPOCH_GROUPS {
            let way = chooser.batch(32, *clock);
            *clock += if way { batch } else { singles };
            ways.push(way);
        }
        assert!(ways.iter().all(|w| *w == ways[0]), "one way per epoch");
        ways[0]
    }

    #[test]
    fn the_faster_way_is_kept_and_the_other_tried_again_now_and_then() {
        for (singles, batches, faster) in [
            // fsync on every write: a group one by one takes 10 ms, a batch 3 ms
            (Duration::from_millis(10), Duration::from_millis(3), true),
            // no fsync: one by one 0.5 ms, a batch 3 ms
            (Duration::from_micros(500), Duration::from_millis(3), false),
        ] {
            let mut chooser = Chooser::new(false);
            let mut clock = Instant::now();
            let mut ways = Vec::new();
            for _ in 0..20 {
                ways.push(epoch(&mut chooser, &mut clock, singles, batches));
            }
            // Measured once each way (singles first), then the faster one, with the
            // slower tried again after 5 epochs, then, confirmed slower, after 10.
            assert_eq!(&ways[..2], &[false, true]);
            let explored: Vec<usize> = (2..20).filter(|&i| ways[i] != faster).collect();
            assert_eq!(explored, vec![6, 17], "{ways:?}");
        }
    }

    #[test]
    fn large_slow_groups_are_measured_too() {
        // 250 messages a group, committed one by one in 600 ms and as a batch in 80 ms
        // (fsync on every write), 8 commits under way: a group forms every 75 or 10 ms.
        // Eight groups one by one would take longer than an epoch, so it ends on time,
        // and their spacing is the pace of commits, not a pause.
        let mut chooser = Chooser::new(false);
        let mut clock = Instant::now();
        let mut ways = Vec::new();
        for _ in 0..40 {
            let way = chooser.batch(250, clock);
            clock += if way {
                Duration::from_millis(10)
            } else {
                Duration::from_millis(75)
            };
            ways.push(way);
        }
        assert!(chooser.singles_rate.is_some() && chooser.batches_rate.is_some());
        assert!(ways[ways.len() - 3..].iter().all(|w| *w), "{ways:?}");
    }

    #[test]
    fn a_pause_ends_an_epoch_unmeasured_and_small_groups_go_one_by_one() {
        let mut chooser = Chooser::new(false);
        let mut clock = Instant::now();
        let ms = Duration::from_millis(1);
        epoch(&mut chooser, &mut clock, ms, ms);
        assert!(!chooser.batch(MIN_BATCH - 1, clock), "too few to batch");
        // A quiet minute: the epoch under way must not be measured across it.
        clock += Duration::from_secs(60);
        epoch(&mut chooser, &mut clock, ms, ms);
        assert!(
            chooser.singles_rate.is_none(),
            "the interrupted epoch was dropped"
        );
        chooser.batch(32, clock);
        // 8 groups of 32 in 8 ms; with the quiet minute counted it would be 4/s.
        let rate = chooser.singles_rate.expect("measured");
        assert!((rate - 32_000.0).abs() < 1.0, "{rate}");
        // Whatever the measurements, a batch needs MIN_BATCH messages.
        let mut always = Chooser::new(true);
        assert!(!always.batch(MIN_BATCH - 1, clock) && always.batch(MIN_BATCH, clock));
    }
}
