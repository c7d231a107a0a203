//! Client-side calls of the fleet's API, for the CLI, tests and benchmarks: submit over
//! request/reply, read and await results.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::Client;
use qefleet_schemas::{
    codec, ContentType, JobResult, JobSpec, SubmitBatch, SubmitBatchReply, SubmitReply,
};

use crate::messages::{decode, headers_for};
use crate::subjects::{result_subject, RESULTS_STREAM, SUBMIT_BATCH_SUBJECT, SUBMIT_SUBJECT};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no scheduler answered on {subject}: is `qefleet scheduler` (or `qefleet up`) running against this NATS{}? ({detail})", if *subject == SUBMIT_BATCH_SUBJECT { ", in a version that serves batch requests" } else { "" })]
    NoScheduler {
        subject: &'static str,
        detail: String,
    },
    #[error("the request on {subject} is {bytes} bytes, more than the server's max_payload ({max}): send fewer or smaller modules at once (submit_many splits batches to fit), or raise max_payload")]
    TooLarge {
        subject: &'static str,
        bytes: usize,
        max: usize,
    },
    #[error("no reply on {subject} in time: a scheduler stopped mid-request or is overloaded, or none serves the subject while something else listens on it (which keeps the server from answering `no responders`); submitting again is safe with a job id")]
    NoReply { subject: &'static str },
    #[error("unreadable reply: {0}")]
    BadReply(String),
    #[error("no result for job {job_id} within {waited:?}")]
    Timeout { job_id: String, waited: Duration },
    #[error("NATS request failed: {0}")]
    Nats(String),
}

/// Submits a job over request/reply in the given encoding. While no scheduler is
/// subscribed (a fleet starting or restarting), retries for up to `wait_for_scheduler`.
pub async fn submit(
    client: &Client,
    job: &JobSpec,
    ct: ContentType,
    wait_for_scheduler: Duration,
) -> Result<SubmitReply, ClientError> {
    submit_raw(client, codec::encode(job, ct), ct, wait_for_scheduler).await
}

/// Submits raw bytes declared as `ct` (for replay, and tests of malformed input).
pub async fn submit_raw(
    client: &Client,
    payload: Vec<u8>,
    ct: ContentType,
    wait_for_scheduler: Duration,
) -> Result<SubmitReply, ClientError> {
    let reply = request(client, SUBMIT_SUBJECT, payload, ct, wait_for_scheduler).await?;
    decode::<SubmitReply>(reply.headers.as_ref(), &reply.payload)
        .map(|(r, _)| r)
        .map_err(|e| ClientError::BadReply(e.to_string()))
}

/// Submits up to [`SubmitBatch::MAX_JOBS`] jobs in one request on `qe.submit.batch`; the
/// reply answers each job in order (or rejects the whole batch). Waits for a scheduler as
/// [`submit`] does.
pub async fn submit_batch(
    client: &Client,
    jobs: Vec<JobSpec>,
    ct: ContentType,
    wait_for_scheduler: Duration,
) -> Result<SubmitBatchReply, ClientError> {
    let payload = codec::encode(&SubmitBatch::new(jobs), ct);
    let reply = request(
        client,
        SUBMIT_BATCH_SUBJECT,
        payload,
        ct,
        wait_for_scheduler,
    )
    .await?;
    decode::<SubmitBatchReply>(reply.headers.as_ref(), &reply.payload)
        .map(|(r, _)| r)
        .map_err(|e| ClientError::BadReply(e.to_string()))
}

/// A request to the schedulers, retried while none is subscribed, for up to `wait`.
async fn request(
    client: &Client,
    subject: &'static str,
    payload: Vec<u8>,
    ct: ContentType,
    wait: Duration,
) -> Result<async_nats::Message, ClientError> {
    let start = Instant::now();
    let payload = bytes::Bytes::from(payload);
    loop {
        match client
            .request_with_headers(subject, headers_for(ct), payload.clone())
            .await
        {
            Ok(reply) => return Ok(reply),
            Err(e)
                if e.kind() == async_nats::client::RequestErrorKind::NoResponders
                    && start.elapsed() < wait =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                use async_nats::client::RequestErrorKind as Kind;
                return Err(match e.kind() {
                    Kind::NoResponders => ClientError::NoScheduler {
                        subject,
                        detail: e.to_string(),
                    },
                    Kind::MaxPayloadExceeded => ClientError::TooLarge {
                        subject,
                        bytes: payload.len(),
                        max: client.server_info().max_payload,
                    },
                    Kind::TimedOut => ClientError::NoReply { subject },
                    _ => ClientError::Nats(e.to_string()),
                });
            }
        }
    }
}

/// Room a batch request leaves below the server's `max_payload` for its headers and the
/// batch's own fields.
const BATCH_HEADROOM: usize = 8 * 1024;

/// Submits any number of jobs in as few batch requests as fit: at most
/// [`SubmitBatch::MAX_JOBS`] each, and no larger than the server's `max_payload` (every
/// job carries its module's source, so a module split into a job per function multiplies
/// it). Returns a reply per job in order; a job too large to send at all, or a batch
/// rejected whole, is answered `Rejected` for its jobs while the others go on.
pub async fn submit_many(
    client: &Client,
    jobs: Vec<JobSpec>,
    ct: ContentType,
    wait_for_scheduler: Duration,
) -> Result<Vec<SubmitReply>, ClientError> {
    let budget = client
        .server_info()
        .max_payload
        .saturating_sub(BATCH_HEADROOM)
        .max(1);
    let mut replies = Vec::with_capacity(jobs.len());
    let mut batches: Vec<Vec<JobSpec>> = Vec::new();
    let mut size = 0;
    for job in jobs {
        let bytes = codec::encode(&job, ct).len();
        match batches.last_mut() {
            Some(last) if size + bytes <= budget && last.len() < SubmitBatch::MAX_JOBS => {
                last.push(job);
                size += bytes;
            }
            _ => {
                batches.push(vec![job]);
                size = bytes;
            }
        }
    }
    for batch in batches {
        send_batch(client, batch, ct, wait_for_scheduler, &mut replies).await?;
    }
    Ok(replies)
}

/// One batch of [`submit_many`], its replies appended to `replies`.
async fn send_batch(
    client: &Client,
    batch: Vec<JobSpec>,
    ct: ContentType,
    wait_for_scheduler: Duration,
    replies: &mut Vec<SubmitReply>,
) -> Result<(), ClientError> {
    let n = batch.len();
    let whole = |error: qefleet_schemas::ErrorReply| {
        (0..n).map(move |_| SubmitReply::Rejected {
            schema_version: qefleet_schemas::SCHEMA_VERSION,
            error: error.clone(),
        })
    };
    match submit_batch(client, batch, ct, wait_for_scheduler).await {
        Ok(SubmitBatchReply::Answered {
            replies: answered, ..
        }) if answered.len() == n => {
            replies.extend(answered);
        }
        Ok(SubmitBatchReply::Answered {
            replies: answered, ..
        }) => {
            return Err(ClientError::BadReply(format!(
                "{} replies for a batch of {n} jobs",
                answered.len()
            )))
        }
        Ok(SubmitBatchReply::Rejected { error, .. }) => replies.extend(whole(error)),
        Err(e @ ClientError::TooLarge { .. }) => {
            replies.extend(whole(qefleet_schemas::ErrorReply {
                code: qefleet_schemas::ErrorCode::SourceTooLarge,
                message: e.to_string(),
            }))
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The stored result of a job, with the encoding it was published in.
pub async fn fetch_result(
    js: &jetstream::Context,
    job_id: &str,
) -> Result<Option<(JobResult, ContentType)>, ClientError> {
    let stream = js
        .get_stream_no_info(RESULTS_STREAM)
        .await
        .map_err(|e| ClientError::Nats(e.to_string()))?;
    match stream
        .get_last_raw_message_by_subject(&result_subject(job_id))
        .await
    {
        Ok(message) => decode::<JobResult>(Some(&message.headers), &message.payload)
            .map(Some)
            .map_err(|e| ClientError::BadReply(e.to_string())),
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            Ok(None)
        }
        Err(e) => Err(ClientError::Nats(e.to_string())),
    }
}

/// Polls for a job's result until it exists or `timeout` passes. Transient NATS errors
/// (a restarting server) are waited out.
pub async fn wait_for_result(
    js: &jetstream::Context,
    job_id: &str,
    timeout: Duration,
) -> Result<(JobResult, ContentType), ClientError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(20);
    while start.elapsed() < timeout {
        if let Ok(Some(found)) = fetch_result(js, job_id).await {
            return Ok(found);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
    Err(ClientError::Timeout {
        job_id: job_id.to_string(),
        waited: timeout,
    })
}
