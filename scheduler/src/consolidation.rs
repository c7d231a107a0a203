//! Exactly one consolidation job per `every` completions, however many scheduler replicas
//! run.
//!
//! The results stream stores one message per job id (the server refuses a second), so its
//! stream sequence counts completions exactly. Replicas share one durable consumer on it;
//! whoever receives sequence `k * every` triggers consolidation `k`. A create-only marker
//! in the `qe_consolidations` bucket and `Nats-Msg-Id = consolidate-<k>` make a
//! redelivered trigger harmless.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, kv, AckKind};
use qefleet_schemas::{codec, now_unix_ms, ConsolidationJob, ContentType, SCHEMA_VERSION};
use qefleet_shared::consume::for_each_message;
use qefleet_shared::messages::headers_for;
use qefleet_shared::metrics::Metrics;
use qefleet_shared::provision::ensure_consumer;
use qefleet_shared::shutdown::Shutdown;
use qefleet_shared::subjects::*;

const PENDING: &[u8] = b"pending";
const PUBLISHED: &[u8] = b"published";

/// Counts completions and publishes consolidation jobs until shutdown.
pub async fn run_counter(
    js: jetstream::Context,
    markers: kv::Store,
    every: u64,
    metrics: Metrics,
    shutdown: Shutdown,
) -> Result<(), String> {
    let consumer = ensure_consumer(
        &js,
        RESULTS_STREAM,
        pull::Config {
            durable_name: Some(COMPLETION_COUNTER_CONSUMER.to_string()),
            filter_subject: RESULTS_SUBJECTS.to_string(),
            ack_wait: Duration::from_secs(30),
            headers_only: true,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    for_each_message(&consumer, 256, shutdown, |message| {
        let (js, markers, metrics) = (js.clone(), markers.clone(), metrics.clone());
        async move {
            let Ok(seq) = message.info().map(|i| i.stream_sequence) else {
                return;
            };
            if seq % every == 0 {
                if let Err(e) = trigger(&js, &markers, seq / every, seq).await {
                    tracing::warn!(number = seq / every, error = %e, "consolidation trigger failed; will retry");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                    return;
                }
                metrics.consolidations_triggered.inc();
            }
            let _ = message.ack().await;
        }
    })
    .await;
    Ok(())
}

/// Publishes consolidation `number` unless a marker says it already was.
async fn trigger(
    js: &jetstream::Context,
    markers: &kv::Store,
    number: u64,
    completions: u64,
) -> Result<(), async_nats::Error> {
    let key = number.to_string();
    if markers.create(&key, PENDING.into()).await.is_err()
        && markers.get(&key).await?.as_deref() == Some(PUBLISHED)
    {
        return Ok(());
    }
    let job = ConsolidationJob {
        schema_version: SCHEMA_VERSION,
        number,
        completions,
        triggered_at_ms: now_unix_ms(),
    };
    let mut headers = headers_for(ContentType::MsgPack);
    headers.insert(HEADER_MSG_ID, format!("consolidate-{number}").as_str());
    js.publish_with_headers(
        CONSOLIDATE_SUBJECT,
        headers,
        codec::encode(&job, ContentType::MsgPack).into(),
    )
    .await?
    .await?;
    markers.put(&key, PUBLISHED.into()).await?;
    tracing::info!(number, completions, "consolidation job published");
    Ok(())
}
