//! Dead letters: a copy of the original message (payload and headers) with the reason,
//! delivery count and origin, on `qe.dlq.<pool>`. Also the sweeper that turns JetStream's
//! max-deliveries advisories into dead letters, so a job whose worker kept dying is not
//! left stranded in the work queue.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use qefleet_schemas::now_unix_ms;
use qefleet_shared::consume::for_each_message;
use qefleet_shared::provision::ensure_consumer;
use qefleet_shared::shutdown::Shutdown;
use qefleet_shared::subjects::*;
use serde::Deserialize;

/// Where a dead letter came from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub subject: &'a str,
    pub stream_sequence: u64,
    pub deliveries: i64,
}

/// Copies a message to the dead-letter stream and waits until JetStream stored it.
pub async fn dead_letter(
    js: &jetstream::Context,
    origin: Origin<'_>,
    headers: Option<&HeaderMap>,
    payload: Bytes,
    reason: &str,
) -> Result<(), async_nats::Error> {
    let mut copy = headers.cloned().unwrap_or_default();
    copy.insert(HEADER_DLQ_REASON, one_line(reason).as_str());
    copy.insert(HEADER_DLQ_SUBJECT, origin.subject);
    copy.insert(
        HEADER_DLQ_DELIVERIES,
        origin.deliveries.to_string().as_str(),
    );
    copy.insert(
        HEADER_DLQ_STREAM_SEQ,
        origin.stream_sequence.to_string().as_str(),
    );
    copy.insert(HEADER_DLQ_AT, now_unix_ms().to_string().as_str());
    // One dead letter per queued message, however often this is retried.
    copy.insert(
        HEADER_MSG_ID,
        format!("dlq-{}", origin.stream_sequence).as_str(),
    );
    let pool = pool_of_subject(origin.subject)
        .map(|p| p.as_str())
        .unwrap_or("unknown");
    js.publish_with_headers(dlq_subject(pool), copy, payload)
        .await?
        .await?;
    Ok(())
}

fn one_line(reason: &str) -> String {
    let mut s: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.truncate(1024);
    s
}

#[derive(Debug, Deserialize)]
struct MaxDeliveriesAdvisory {
    stream: String,
    consumer: String,
    stream_seq: u64,
    deliveries: i64,
}

/// Moves jobs that exhausted `max_deliver` to the dead-letter stream, until shutdown.
/// Workers of every pool share its durable consumer, so each advisory is handled once.
pub async fn sweep_advisories(js: jetstream::Context, shutdown: Shutdown) {
    let consumer = match ensure_consumer(
        &js,
        ADVISORIES_STREAM,
        pull::Config {
            durable_name: Some(ADVISORY_CONSUMER.to_string()),
            filter_subject: MAX_DELIVERIES_ADVISORIES.to_string(),
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        },
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "max-deliveries advisories are not swept");
            return;
        }
    };
    for_each_message(&consumer, 32, shutdown, |message| {
        let js = js.clone();
        async move {
            let outcome = match serde_json::from_slice::<MaxDeliveriesAdvisory>(&message.payload) {
                Ok(advisory) => sweep_one(&js, &advisory).await,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable advisory dropped from sweep");
                    Ok(())
                }
            };
            let ack = match outcome {
                Ok(()) => AckKind::Ack,
                Err(e) => {
                    tracing::warn!(error = %e, "advisory sweep failed; retrying");
                    AckKind::Nak(Some(Duration::from_secs(2)))
                }
            };
            let _ = message.ack_with(ack).await;
        }
    })
    .await;
}

async fn sweep_one(
    js: &jetstream::Context,
    advisory: &MaxDeliveriesAdvisory,
) -> Result<(), async_nats::Error> {
    let stream = js.get_stream(&advisory.stream).await?;
    let Ok(original) = stream.get_raw_message(advisory.stream_seq).await else {
        // Already dead-lettered by the worker on its last attempt, or acknowledged.
        return Ok(());
    };
    let reason = format!(
        "max deliveries ({}) exhausted on consumer {} without an acknowledgement (worker crashed or timed out each time)",
        advisory.deliveries, advisory.consumer
    );
    dead_letter(
        js,
        Origin {
            subject: original.subject.as_str(),
            stream_sequence: advisory.stream_seq,
            deliveries: advisory.deliveries,
        },
        Some(&original.headers),
        original.payload.clone(),
        &reason,
    )
    .await?;
    stream.delete_message(advisory.stream_seq).await?;
    tracing::warn!(seq = advisory.stream_seq, consumer = %advisory.consumer, "job dead-lettered after max deliveries");
    Ok(())
}
