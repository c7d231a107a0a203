//! Publishing results exactly once per job id. The results stream refuses a second
//! message on `qe.results.<job_id>` (max one per subject, discard new per subject), and
//! `Nats-Msg-Id` = job id makes a retried publish a no-op.

use async_nats::jetstream;
use qefleet_shared::messages::headers_for;
use qefleet_shared::subjects::{result_subject, HEADER_MSG_ID, RESULTS_STREAM};
use qefleet_shared::trace::HEADER_TRACEPARENT;

use qefleet_schemas::Pool;
pub use qefleet_shared::commit::{Batching, IN_FLIGHT, MAX_BATCH, MIN_BATCH};
use qefleet_shared::commit::{Commit, Counts, GroupPublisher};
use qefleet_shared::metrics::Metrics;

use crate::outbox::PendingResult;

/// Outcome of a publish attempt.
#[derive(Debug, PartialEq)]
pub enum Published {
    /// Stored now.
    New,
    /// A result for this job id already exists; this one was not stored.
    AlreadyThere,
}

const MAX_PER_SUBJECT_EXCEEDED: &str = "10077";

/// Publishes a result and waits for JetStream to store it.
pub async fn publish(
    js: &jetstream::Context,
    job_id: &str,
    result: &PendingResult,
) -> Result<Published, async_nats::Error> {
    let mut headers = headers_of(result);
    headers.insert(HEADER_MSG_ID, job_id);
    let ack = js
        .publish_with_headers(result_subject(job_id), headers, result.payload.clone())
        .await?
        .await;
    match ack {
        Ok(ack) if ack.duplicate => Ok(Published::AlreadyThere),
        Ok(_) => Ok(Published::New),
        Err(e) if is_subject_full(&e) => Ok(Published::AlreadyThere),
        Err(e) => Err(e.into()),
    }
}

/// A result's own headers: its encoding and its trace context.
fn headers_of(result: &PendingResult) -> async_nats::HeaderMap {
    let mut headers = headers_for(result.content_type);
    if let Some(traceparent) = &result.traceparent {
        headers.insert(HEADER_TRACEPARENT, traceparent.as_str());
    }
    headers
}

fn is_subject_full(e: &jetstream::context::PublishError) -> bool {
    let text = format!("{e:?} {e}");
    text.contains(MAX_PER_SUBJECT_EXCEEDED) || text.contains("maximum messages per subject")
}

/// Whether a result for this job id is already stored.
pub async fn exists(js: &jetstream::Context, job_id: &str) -> Result<bool, async_nats::Error> {
    Ok(stored(js, job_id).await?.is_some())
}

/// The stored result's payload for this job id, if there is one.
pub async fn stored(
    js: &jetstream::Context,
    job_id: &str,
) -> Result<Option<Vec<u8>>, async_nats::Error> {
    let stream = js.get_stream_no_info(RESULTS_STREAM).await?;
    match stream
        .get_last_raw_message_by_subject(&result_subject(job_id))
        .await
    {
        Ok(message) => Ok(Some(message.payload.to_vec())),
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Results committed in groups when the server is slow to store them (ADR 0017,
/// [`qefleet_shared::commit`]): a result goes on its own (with `Nats-Msg-Id`) while a
/// commit slot is free; results that wait together go as one atomic batch or one by one.
/// A batch holding an already-stored result is refused whole; its results then go one by
/// one and each learns its own fate.
#[derive(Clone, Debug)]
pub struct ResultPublisher(GroupPublisher<ResultCommit>);

/// One result as the group publisher stores it.
#[derive(Clone, Debug)]
pub struct ResultCommit {
    job_id: String,
    result: PendingResult,
}

impl Commit for ResultCommit {
    type Stored = Published;

    fn subject(&self) -> String {
        result_subject(&self.job_id)
    }

    fn batch_headers(&self) -> async_nats::HeaderMap {
        headers_of(&self.result)
    }

    fn payload(&self) -> bytes::Bytes {
        self.result.payload.clone()
    }

    async fn publish_single(
        &self,
        js: &jetstream::Context,
    ) -> Result<Published, async_nats::Error> {
        publish(js, &self.job_id, &self.result).await
    }

    fn stored_now(answer: &Published) -> bool {
        *answer == Published::New
    }

    fn stored_in_batch() -> Published {
        Published::New
    }
}

/// Commits counted in `qefleet_result_commit_results{pool, kind}`.
fn counts(metrics: Metrics, pool: Pool) -> Counts {
    let pool = pool.as_str();
    Counts::new(move |kind, results| {
        metrics
            .result_commit_size
            .with_label_values(&[pool, kind])
            .observe(results as f64);
    })
}

impl ResultPublisher {
    /// A publisher for the results stream as the server has it: batching as `wanted`
    /// says where the stream allows atomic batches, never where it does not.
    pub async fn new(
        js: &jetstream::Context,
        wanted: Batching,
        metrics: Metrics,
        pool: Pool,
    ) -> Result<Self, async_nats::Error> {
        GroupPublisher::for_stream(js, RESULTS_STREAM, wanted, counts(metrics, pool))
            .await
            .map(Self)
    }

    /// A publisher batching as `batching` says (on a stream that allows atomic batches
    /// unless it is `Never`).
    pub fn with_batching(
        js: &jetstream::Context,
        batching: Batching,
        metrics: Metrics,
        pool: Pool,
    ) -> Self {
        Self(GroupPublisher::with_batching(
            js,
            batching,
            counts(metrics, pool),
        ))
    }

    /// Publishes a result and waits until JetStream has stored it (or refused it as the
    /// job's second result).
    pub async fn publish(
        &self,
        job_id: &str,
        result: &PendingResult,
    ) -> Result<Published, async_nats::Error> {
        self.0
            .publish(&ResultCommit {
                job_id: job_id.to_string(),
                result: result.clone(),
            })
            .await
    }
}
