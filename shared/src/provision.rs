//! Idempotent provisioning of the fleet's streams, buckets and consumers.
//!
//! An existing stream whose settings differ from what the fleet needs is reported, never
//! overwritten: changing retention or discard policy under live data is an operator's call.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
    kv,
    stream::{
        Config as StreamConfig, DiscardPolicy, PersistenceMode, RetentionPolicy, StorageType,
    },
};
use qefleet_schemas::Pool;

use crate::subjects::*;

/// How long JetStream remembers `Nats-Msg-Id`s to drop duplicate publishes.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a worker's liveness entry lives without renewal.
pub const WORKER_TTL: Duration = Duration::from_secs(15);

const DAY: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("stream {stream} exists with settings the fleet cannot use: {differences}. Fix or delete it (`nats stream rm {stream}`) deliberately; qefleet will not overwrite it")]
    StreamConflict { stream: String, differences: String },
    #[error("JetStream request failed while provisioning {what}: {detail}")]
    JetStream { what: String, detail: String },
}

fn js_err(what: &str, e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::JetStream {
        what: what.to_string(),
        detail: e.to_string(),
    }
}

/// First server version with per-stream asynchronous persistence (`persist_mode`).
const ASYNC_PERSIST_SINCE: (u64, u64, u64) = (2, 12, 0);

/// The stream configurations the fleet needs on a server of `server_version`.
///
/// Events are observability: on servers that support it they are persisted
/// asynchronously, and results may be stored in atomic batches, so `sync_interval: always` costs an fsync only for what must survive a
/// crash (jobs, results, dead letters, submissions, job records).
pub fn stream_configs_for(server_version: &str) -> Vec<StreamConfig> {
    let async_events = supports_async_persist(server_version);
    let mut configs = stream_configs();
    if async_events {
        for config in configs.iter_mut().filter(|c| c.name == EVENTS_STREAM) {
            config.persist_mode = Some(PersistenceMode::Async);
        }
        // Workers commit the results that finish together as one atomic batch, one fsync
        // for all of them, and schedulers the jobs submitted together (ADR 0017); atomic
        // batches came with the same release.
        for config in configs
            .iter_mut()
            .filter(|c| c.name == RESULTS_STREAM || c.name == JOBS_STREAM)
        {
            config.allow_atomic_publish = true;
        }
    }
    configs
}

fn supports_async_persist(server_version: &str) -> bool {
    crate::nats::parse_server_version(server_version).is_some_and(|v| v >= ASYNC_PERSIST_SINCE)
}

/// The stream behind a key-value bucket keeping `history` values per key, as
/// `create_key_value` makes it, but persisted asynchronously (ADR 0016: the job-state
/// records are an index of what the fsynced streams hold, and one fsync fewer per
/// submission).
pub fn async_bucket_config(bucket: &str, max_age: Duration, history: i64) -> StreamConfig {
    StreamConfig {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: history,
        max_age,
        storage: StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        discard: DiscardPolicy::New,
        persist_mode: Some(PersistenceMode::Async),
        ..Default::default()
    }
}

/// The stream configurations the fleet needs (any supported server).
pub fn stream_configs() -> Vec<StreamConfig> {
    let work_queue = |name: &str, subjects: &[&str]| StreamConfig {
        name: name.to_string(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        allow_direct: true,
        ..Default::default()
    };
    let limits = |name: &str, subject: &str, max_age: Duration| StreamConfig {
        name: name.to_string(),
        subjects: vec![subject.to_string()],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        max_age,
        allow_direct: true,
        ..Default::default()
    };
    vec![
        work_queue(JOBS_STREAM, &[JOBS_SUBJECTS]),
        work_queue(SUBMISSIONS_STREAM, &[SUBMIT_QUEUE_SUBJECT]),
        work_queue(ADVISORIES_STREAM, &[MAX_DELIVERIES_ADVISORIES]),
        // One result per job id, enforced by the server: a second publish is refused.
        StreamConfig {
            max_messages_per_subject: 1,
            discard: DiscardPolicy::New,
            discard_new_per_subject: true,
            ..limits(RESULTS_STREAM, RESULTS_SUBJECTS, 30 * DAY)
        },
        limits(EVENTS_STREAM, EVENTS_SUBJECTS, 7 * DAY),
        limits(DLQ_STREAM, DLQ_SUBJECTS, Duration::ZERO),
    ]
}

/// Lists the settings of `existing` that differ from `wanted`, among those the fleet
/// depends on.
pub fn stream_differences(wanted: &StreamConfig, existing: &StreamConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, want: String, have: String| {
        if want != have {
            out.push(format!("{name} is {have}, needs {want}"));
        }
    };
    let mut want_subjects = wanted.subjects.clone();
    let mut have_subjects = existing.subjects.clone();
    want_subjects.sort();
    have_subjects.sort();
    check(
        "subjects",
        format!("{want_subjects:?}"),
        format!("{have_subjects:?}"),
    );
    check(
        "retention",
        format!("{:?}", wanted.retention),
        format!("{:?}", existing.retention),
    );
    check(
        "storage",
        format!("{:?}", wanted.storage),
        format!("{:?}", existing.storage),
    );
    check(
        "discard",
        format!("{:?}", wanted.discard),
        format!("{:?}", existing.discard),
    );
    // The server reports "unlimited" as -1 whatever the client sent (0 or -1).
    let limit = |n: i64| {
        if n <= 0 {
            "unlimited".to_string()
        } else {
            n.to_string()
        }
    };
    check(
        "max_msgs_per_subject",
        limit(wanted.max_messages_per_subject),
        limit(existing.max_messages_per_subject),
    );
    check(
        "discard_new_per_subject",
        wanted.discard_new_per_subject.to_string(),
        existing.discard_new_per_subject.to_string(),
    );
    if existing.duplicate_window < wanted.duplicate_window {
        out.push(format!(
            "duplicate_window is {:?}, needs at least {:?}",
            existing.duplicate_window, wanted.duplicate_window
        ));
    }
    out
}

/// The `existing` stream's configuration with what `wanted` adds switched on, when it
/// lacks any of it; `None` when nothing is missing. Additions only add a way to use the
/// stream (atomic batches, ADR 0017), so they are made in place, unlike the settings
/// [`stream_differences`] reports, which would change what the stream keeps.
pub fn additions(wanted: &StreamConfig, existing: &StreamConfig) -> Option<StreamConfig> {
    let mut config = existing.clone();
    config.allow_atomic_publish |= wanted.allow_atomic_publish;
    (config.allow_atomic_publish != existing.allow_atomic_publish).then_some(config)
}

/// Creates missing streams and buckets; verifies existing ones.
pub async fn ensure_all(js: &jetstream::Context) -> Result<(), ProvisionError> {
    let version = js.client().server_info().version;
    for wanted in stream_configs_for(&version) {
        ensure_stream(js, wanted).await?;
    }
    // Job records are an index of what the fsynced streams hold (ADR 0016).
    let records_async = supports_async_persist(&version);
    ensure_bucket(js, JOB_STATE_BUCKET, 30 * DAY, 1, records_async).await?;
    ensure_bucket(js, WORKERS_BUCKET, WORKER_TTL, 1, false).await?;
    ensure_bucket(js, CONSOLIDATIONS_BUCKET, Duration::ZERO, 1, false).await?;
    ensure_bucket(js, CONTROL_BUCKET, Duration::ZERO, 1, false).await?;
    ensure_bucket(js, SPEND_BUCKET, 3 * DAY, 1, false).await?;
    // Ten snapshots of each learned model: the current one and nine to roll back to.
    ensure_bucket(js, SONA_BUCKET, Duration::ZERO, 10, false).await?;
    Ok(())
}

async fn ensure_stream(
    js: &jetstream::Context,
    wanted: StreamConfig,
) -> Result<(), ProvisionError> {
    for _ in 0..2 {
        match js.get_stream(&wanted.name).await {
            Ok(mut stream) => {
                let info = stream.info().await.map_err(|e| js_err(&wanted.name, e))?;
                let differences = stream_differences(&wanted, &info.config);
                if differences.is_empty() {
                    if let Some(config) = additions(&wanted, &info.config) {
                        js.update_stream(config)
                            .await
                            .map_err(|e| js_err(&wanted.name, e))?;
                        tracing::info!(stream = %wanted.name, "switched on what the fleet now uses");
                    }
                    return Ok(());
                }
                return Err(ProvisionError::StreamConflict {
                    stream: wanted.name.clone(),
                    differences: differences.join("; "),
                });
            }
            Err(e) if is_stream_not_found(&e) => {
                match js.create_stream(wanted.clone()).await {
                    Ok(_) => {
                        tracing::info!(stream = %wanted.name, "created stream");
                        return Ok(());
                    }
                    // Another process created it in between: verify it on the next pass.
                    Err(e) if e.to_string().contains("already in use") => continue,
                    Err(e) => return Err(js_err(&wanted.name, e)),
                }
            }
            Err(e) => return Err(js_err(&wanted.name, e)),
        }
    }
    Err(js_err(
        &wanted.name,
        "stream kept changing while provisioning",
    ))
}

fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(inner)
            if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// A bucket as `create_key_value` makes it, or, with `persist_async`, as
/// [`async_bucket_config`] does; an existing one (of any persistence) is used as it is.
async fn ensure_bucket(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
    history: i64,
    persist_async: bool,
) -> Result<kv::Store, ProvisionError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    let created = if persist_async {
        js.create_stream(async_bucket_config(bucket, max_age, history))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        js.create_key_value(kv::Config {
            bucket: bucket.to_string(),
            history,
            max_age,
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    // Created, or created by another process in between: open it either way.
    js.get_key_value(bucket)
        .await
        .map_err(|open| match created {
            Err(create) => js_err(bucket, create),
            Ok(()) => js_err(bucket, open),
        })
}

/// Opens a bucket created by [`ensure_all`].
pub async fn bucket(js: &jetstream::Context, name: &str) -> Result<kv::Store, ProvisionError> {
    js.get_key_value(name).await.map_err(|e| js_err(name, e))
}

/// Delivery settings of a pool's durable consumer.
#[derive(Debug, Clone, Copy)]
pub struct DeliverySettings {
    /// Time a delivered job may go without ack or heartbeat before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries before a job is dead-lettered.
    pub max_deliver: i64,
    /// Jobs handed out and not yet acknowledged, across the pool.
    pub max_ack_pending: i64,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1000,
        }
    }
}

/// The durable pull consumer of a pool.
pub fn pool_consumer_config(pool: Pool, settings: DeliverySettings) -> pull::Config {
    pull::Config {
        durable_name: Some(pool_consumer(pool).to_string()),
        filter_subject: pool_filter(pool),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: settings.ack_wait,
        max_deliver: settings.max_deliver,
        max_ack_pending: settings.max_ack_pending,
        // Retries are delayed by the worker's retry policy (nak with delay); a crashed
        // worker's job comes back after ack_wait.
        backoff: Vec::new(),
        ..Default::default()
    }
}

/// Creates a durable pull consumer, or brings an existing one to `config`'s delivery
/// settings (they are the operator's to change; the filter is not).
pub async fn ensure_consumer(
    js: &jetstream::Context,
    stream: &str,
    config: pull::Config,
) -> Result<jetstream::consumer::PullConsumer, ProvisionError> {
    let name = config.durable_name.clone().unwrap_or_default();
    let what = format!("consumer {name} on {stream}");
    let stream_handle = js.get_stream(stream).await.map_err(|e| js_err(&what, e))?;
    match stream_handle.consumer_info(&name).await {
        Ok(info) => {
            let have = &info.config;
            if have.filter_subject != config.filter_subject {
                return Err(js_err(
                    &what,
                    format!(
                        "exists with filter {:?}, needs {:?}; delete it deliberately to change it",
                        have.filter_subject, config.filter_subject
                    ),
                ));
            }
            // Zero means "server default" in a request; the server reports the value.
            let differs = |want: i64, have: i64| want > 0 && want != have;
            if (config.ack_wait > Duration::ZERO && have.ack_wait != config.ack_wait)
                || differs(config.max_deliver, have.max_deliver)
                || differs(config.max_ack_pending, have.max_ack_pending)
            {
                tracing::info!(consumer = %name, "updating consumer delivery settings");
                stream_handle
                    .update_consumer(config.clone())
                    .await
                    .map_err(|e| js_err(&what, e))?;
            }
        }
        Err(_) => {
            if let Err(e) = stream_handle.create_consumer(config.clone()).await {
                // A concurrent creator with the same config wins; anything else is an error.
                tracing::debug!(consumer = %name, error = %e, "create raced; reusing");
            }
        }
    }
    stream_handle
        .get_consumer(&name)
        .await
        .map_err(|e| js_err(&what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_stream_keeps_one_result_per_job() {
        let results = stream_configs()
            .into_iter()
            .find(|c| c.name == RESULTS_STREAM)
            .expect("results stream");
        assert_eq!(results.max_messages_per_subject, 1);
        assert!(results.discard_new_per_subject);
    }

    #[test]
    fn events_persist_asynchronously_only_where_supported() {
        let persist = |version: &str| {
            stream_configs_for(version)
                .into_iter()
                .find(|c| c.name == EVENTS_STREAM)
                .and_then(|c| c.persist_mode)
        };
        assert_eq!(persist("2.15.1"), Some(PersistenceMode::Async));
        assert_eq!(persist("2.10.23"), None);
        let jobs = stream_configs_for("2.15.1").remove(0);
        assert_eq!(jobs.persist_mode, None, "jobs are always fsynced");
    }

    #[test]
    fn results_allow_atomic_batches_only_where_supported() {
        let atomic = |version: &str| {
            stream_configs_for(version)
                .into_iter()
                .filter(|c| c.allow_atomic_publish)
                .map(|c| c.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            atomic("2.15.1"),
            vec![JOBS_STREAM.to_string(), RESULTS_STREAM.to_string()]
        );
        assert!(atomic("2.10.23").is_empty());
    }

    #[test]
    fn additions_switch_on_what_is_wanted_and_never_off() {
        let results = || {
            stream_configs_for("2.15.1")
                .into_iter()
                .find(|c| c.name == RESULTS_STREAM)
                .expect("results stream")
        };
        let mut old = results();
        old.allow_atomic_publish = false;
        let added = additions(&results(), &old).expect("atomic batches added");
        assert!(added.allow_atomic_publish);
        assert!(additions(&results(), &results()).is_none());
        // A stream that allows more than the fleet asks for keeps it.
        let mut plain = results();
        plain.allow_atomic_publish = false;
        assert!(additions(&plain, &results()).is_none());
    }

    #[test]
    fn differences_name_each_setting() {
        let wanted = stream_configs().remove(0);
        let mut existing = wanted.clone();
        existing.retention = RetentionPolicy::Limits;
        existing.subjects = vec!["other.>".into()];
        let diffs = stream_differences(&wanted, &existing);
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert!(diffs[0].starts_with("subjects"));
        assert!(diffs[1].starts_with("retention"));
        assert!(stream_differences(&wanted, &wanted).is_empty());
        let mut normalised = wanted.clone();
        normalised.max_messages_per_subject = -1;
        assert!(stream_differences(&wanted, &normalised).is_empty());
    }
}
