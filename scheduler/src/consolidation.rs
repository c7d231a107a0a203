//! Exactly one consolidation job per `every` completions, however many scheduler replicas
//! run.
//!
//! The results stream stores one message per job id (the server refuses a second), so its
//! last sequence counts completions exactly (ADR 0001). Each replica reads that sequence
//! with one stream-info request every [`POLL`], whatever the rate of results, and
//! triggers every consolidation `k` with `k * every` at or below it that the watermark in
//! the `qe_consolidations` bucket has not passed. A create-only marker per `k` and
//! `Nats-Msg-Id = consolidate-<k>` make two replicas triggering the same `k` harmless; the
//! watermark only moves forward (compare-and-set on its revision).
//!
//! Until stop 21 a durable consumer (`completion-counter`) read the headers of every
//! result to find the sequences `k * every`: a delivery and an acknowledgement per job.
//! [`retire_counter_consumer`] carries its progress over and deletes it.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream::Stream};
use qefleet_schemas::{codec, now_unix_ms, ConsolidationJob, ContentType, SCHEMA_VERSION};
use qefleet_shared::messages::headers_for;
use qefleet_shared::metrics::Metrics;
use qefleet_shared::shutdown::Shutdown;
use qefleet_shared::subjects::*;

const PENDING: &[u8] = b"pending";
const PUBLISHED: &[u8] = b"published";
/// How often each replica reads the results stream's last sequence.
pub const POLL: Duration = Duration::from_millis(500);

/// Counts completions and publishes consolidation jobs until shutdown.
pub async fn run_counter(
    js: jetstream::Context,
    markers: kv::Store,
    every: u64,
    metrics: Metrics,
    mut shutdown: Shutdown,
) -> Result<(), String> {
    let every = every.max(1);
    let mut results = js
        .get_stream(RESULTS_STREAM)
        .await
        .map_err(|e| format!("results stream: {e}"))?;
    retire_counter_consumer(&results, &markers, every).await;
    // The watermark as last read here: while no consolidation is due past it, a poll
    // needs no read of the bucket (the watermark only moves forward).
    let mut known = 0;
    loop {
        match count(&js, &mut results, &markers, every, known, &metrics).await {
            Ok(watermark) => known = watermark,
            Err(e) => tracing::warn!(error = %e, "consolidation trigger failed; will retry"),
        }
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Triggers the consolidations due by the results stream's last sequence and moves the
/// watermark past those published; returns the watermark as it stands for this replica
/// (`known` when nothing was due past it).
async fn count(
    js: &jetstream::Context,
    results: &mut Stream,
    markers: &kv::Store,
    every: u64,
    known: u64,
    metrics: &Metrics,
) -> Result<u64, async_nats::Error> {
    let completions = results.info().await?.state.last_sequence;
    if completions / every <= known {
        return Ok(known);
    }
    let (done, revision) = watermark(markers).await?;
    let mut reached = done;
    let mut failed = None;
    for number in done + 1..=completions / every {
        match trigger(js, markers, number, number * every).await {
            Ok(published) => {
                if published {
                    metrics.consolidations_triggered.inc();
                }
                reached = number;
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    if reached > done {
        advance(markers, reached, revision).await;
    }
    failed.map_or(Ok(reached), Err)
}

/// The watermark and its revision (`None` before the first consolidation).
async fn watermark(markers: &kv::Store) -> Result<(u64, Option<u64>), async_nats::Error> {
    let Some(entry) = markers.entry(CONSOLIDATION_WATERMARK_KEY).await? else {
        return Ok((0, None));
    };
    let done = std::str::from_utf8(&entry.value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("unreadable consolidation watermark {:?}", entry.value))?;
    Ok((done, Some(entry.revision)))
}

/// Moves the watermark to `reached` unless another replica moved it since it was read
/// (that replica read a later sequence or the same one; the next poll reads its value).
async fn advance(markers: &kv::Store, reached: u64, revision: Option<u64>) {
    let value = reached.to_string().into();
    let moved = match revision {
        Some(revision) => markers
            .update(CONSOLIDATION_WATERMARK_KEY, value, revision)
            .await
            .is_ok(),
        None => markers
            .create(CONSOLIDATION_WATERMARK_KEY, value)
            .await
            .is_ok(),
    };
    if !moved {
        tracing::debug!(reached, "consolidation watermark moved by another replica");
    }
}

/// Publishes consolidation `number` unless a marker says it already was; true when this
/// call published it.
async fn trigger(
    js: &jetstream::Context,
    markers: &kv::Store,
    number: u64,
    completions: u64,
) -> Result<bool, async_nats::Error> {
    let key = number.to_string();
    if markers.create(&key, PENDING.into()).await.is_err()
        && markers.get(&key).await?.as_deref() == Some(PUBLISHED)
    {
        return Ok(false);
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
    Ok(true)
}

/// Carries the progress of the durable consumer that counted completions before stop 21
/// into the watermark (unless one exists) and deletes the consumer, whose pending count
/// would otherwise grow by one per result for ever. Consolidations it triggered past its
/// acknowledgement floor have markers, so they are not published twice.
async fn retire_counter_consumer(results: &Stream, markers: &kv::Store, every: u64) {
    let Ok(info) = results.consumer_info(COMPLETION_COUNTER_CONSUMER).await else {
        return;
    };
    let counted = info.ack_floor.stream_sequence / every;
    if markers
        .create(CONSOLIDATION_WATERMARK_KEY, counted.to_string().into())
        .await
        .is_ok()
    {
        tracing::info!(
            counted,
            "consolidation watermark taken from the retired completion-counter consumer"
        );
    }
    match results.delete_consumer(COMPLETION_COUNTER_CONSUMER).await {
        Ok(_) => {
            tracing::info!("retired the completion-counter consumer (a watermark replaces it)")
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not delete the retired completion-counter consumer")
        }
    }
}
