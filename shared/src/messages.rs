//! Reading and writing wire messages on NATS: content type from headers, and lifecycle
//! events.

use async_nats::{Client, HeaderMap};
use qefleet_schemas::codec::{self, CONTENT_TYPE_HEADER};
use qefleet_schemas::{now_unix_ms, ContentType, DecodeError, EventKind, JobEvent, Pool};
use serde::de::DeserializeOwned;

use crate::subjects::event_subject;

/// The encoding a message declares in its headers (MessagePack when none).
pub fn content_type(headers: Option<&HeaderMap>) -> Result<ContentType, DecodeError> {
    let value = headers
        .and_then(|h| h.get(CONTENT_TYPE_HEADER))
        .map(|v| v.as_str());
    ContentType::from_header(value)
}

/// Decodes a message by its declared content type.
pub fn decode<T: DeserializeOwned>(
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<(T, ContentType), DecodeError> {
    let ct = content_type(headers)?;
    Ok((codec::decode(payload, ct)?, ct))
}

/// Headers declaring `ct`, and the current trace context (a child span) when the caller
/// works inside [`crate::trace::scope`].
pub fn headers_for(ct: ContentType) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, ct.as_header());
    if let Some(trace) = crate::trace::current() {
        trace.child().inject(&mut headers);
    }
    headers
}

/// Publishes a lifecycle event. Events are observability, not state: a lost event is
/// logged, never fatal.
pub async fn emit_event(
    client: &Client,
    job_id: &str,
    kind: EventKind,
    pool: Option<Pool>,
    detail: Option<String>,
) {
    let event = JobEvent {
        schema_version: qefleet_schemas::SCHEMA_VERSION,
        job_id: job_id.to_string(),
        kind,
        at_ms: now_unix_ms(),
        pool,
        detail,
    };
    let payload = codec::encode(&event, ContentType::MsgPack);
    if let Err(e) = client
        .publish_with_headers(
            event_subject(kind, job_id),
            headers_for(ContentType::MsgPack),
            payload.into(),
        )
        .await
    {
        tracing::warn!(job_id, kind = kind.as_str(), error = %e, "could not publish event");
    }
}
