//! Publishing results exactly once per job id. The results stream refuses a second
//! message on `qe.results.<job_id>` (max one per subject, discard new per subject), and
//! `Nats-Msg-Id` = job id makes a retried publish a no-op.

use async_nats::jetstream;
use qefleet_shared::messages::headers_for;
use qefleet_shared::subjects::{result_subject, HEADER_MSG_ID, RESULTS_STREAM};
use qefleet_shared::trace::HEADER_TRACEPARENT;

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
    let mut headers = headers_for(result.content_type);
    headers.insert(HEADER_MSG_ID, job_id);
    if let Some(traceparent) = &result.traceparent {
        headers.insert(HEADER_TRACEPARENT, traceparent.as_str());
    }
    let ack = js
        .publish_with_headers(
            result_subject(job_id),
            headers,
            result.payload.clone().into(),
        )
        .await?
        .await;
    match ack {
        Ok(ack) if ack.duplicate => Ok(Published::AlreadyThere),
        Ok(_) => Ok(Published::New),
        Err(e) if is_subject_full(&e) => Ok(Published::AlreadyThere),
        Err(e) => Err(e.into()),
    }
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
