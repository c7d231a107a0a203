//! Client-side calls of the fleet's API, for the CLI, tests and benchmarks: submit over
//! request/reply, read and await results.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::Client;
use qefleet_schemas::{codec, ContentType, JobResult, JobSpec, SubmitReply};

use crate::messages::{decode, headers_for};
use crate::subjects::{result_subject, RESULTS_STREAM, SUBMIT_SUBJECT};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no scheduler answered on {SUBMIT_SUBJECT}: is `qefleet scheduler` (or `qefleet up`) running against this NATS? ({0})")]
    NoScheduler(String),
    #[error("unreadable reply: {0}")]
    BadReply(String),
    #[error("no result for job {job_id} within {waited:?}")]
    Timeout { job_id: String, waited: Duration },
    #[error("NATS request failed: {0}")]
    Nats(String),
}

/// Submits a job over request/reply in the given encoding.
pub async fn submit(client: &Client, job: &JobSpec, ct: ContentType) -> Result<SubmitReply, ClientError> {
    submit_raw(client, codec::encode(job, ct), ct).await
}

/// Submits, retrying while no scheduler has subscribed yet (a fleet still starting).
pub async fn submit_when_ready(
    client: &Client,
    job: &JobSpec,
    ct: ContentType,
    timeout: Duration,
) -> Result<SubmitReply, ClientError> {
    let start = Instant::now();
    loop {
        match submit(client, job, ct).await {
            Err(ClientError::NoScheduler(_)) if start.elapsed() < timeout => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Submits raw bytes declared as `ct` (for tests of malformed input and for replay).
pub async fn submit_raw(
    client: &Client,
    payload: Vec<u8>,
    ct: ContentType,
) -> Result<SubmitReply, ClientError> {
    let reply = client
        .request_with_headers(SUBMIT_SUBJECT, headers_for(ct), payload.into())
        .await
        .map_err(|e| ClientError::NoScheduler(e.to_string()))?;
    decode::<SubmitReply>(reply.headers.as_ref(), &reply.payload)
        .map(|(r, _)| r)
        .map_err(|e| ClientError::BadReply(e.to_string()))
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
    match stream.get_last_raw_message_by_subject(&result_subject(job_id)).await {
        Ok(message) => decode::<JobResult>(Some(&message.headers), &message.payload)
            .map(Some)
            .map_err(|e| ClientError::BadReply(e.to_string())),
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
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
