//! `qefleet status`: streams, pool consumers (pending, ack-pending, redelivered), the
//! oldest pending job per pool, completions and consolidations, dead letters and live
//! workers.

use std::process::ExitCode;

use futures_util::StreamExt;
use qefleet_schemas::{now_unix_ms, Pool};
use qefleet_shared::nats::NatsArgs;
use qefleet_shared::provision::stream_configs;
use qefleet_shared::subjects::{
    CONSOLIDATIONS_BUCKET, CONSOLIDATION_WATERMARK_KEY, CONTROL_BUCKET, QUALITY_PREDICTOR_KEY,
    RESULTS_STREAM, ROUTE_MODE_KEY, SONA_BUCKET, SPEND_BUCKET, WORKERS_BUCKET,
};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = super::client(&args.nats).await?;
    let server = client.server_info();
    let js = async_nats::jetstream::new(client);
    let mut streams = Vec::new();
    // The results stream stores one result per job, so its last sequence counts the
    // completions (ADR 0001), also of results expired since.
    let mut completions = None;
    for config in stream_configs() {
        match js.get_stream(&config.name).await {
            Ok(mut s) => {
                let info = s.info().await?;
                if config.name == RESULTS_STREAM {
                    completions = Some(info.state.last_sequence);
                }
                streams.push(json!({"stream": config.name, "messages": info.state.messages, "bytes": info.state.bytes}));
            }
            Err(_) => streams.push(json!({"stream": config.name, "missing": true})),
        }
    }
    let queues = qefleet_shared::queues::sample(&js).await;
    let pools: Vec<serde_json::Value> = Pool::ALL
        .into_iter()
        .map(|pool| {
            // Jobs in the work queue for this pool (waiting or in flight), with or without
            // a consumer: a pool nobody has served yet still shows its backlog.
            let queue = queues.pool(pool);
            let consumer = queue.consumer;
            json!({
                "pool": pool,
                "queued": queue.queued(),
                "by_complexity": queue.by_class,
                "consumer": consumer.is_some(),
                "pending": consumer.map(|c| c.pending),
                "ack_pending": consumer.map(|c| c.ack_pending),
                "redelivered": consumer.map(|c| c.redelivered),
                "oldest_pending_age_ms": queue.oldest_age_ms,
            })
        })
        .collect();
    let mut workers = Vec::new();
    if let Ok(kv) = js.get_key_value(WORKERS_BUCKET).await {
        if let Ok(mut keys) = kv.keys().await {
            while let Some(Ok(key)) = keys.next().await {
                let info = kv
                    .get(&key)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .unwrap_or(json!({"worker": key}));
                workers.push(info);
            }
        }
    }
    // The routing switch and today's cloud spend (both written by the fleet as it runs).
    let route_mode = text_value(&js, CONTROL_BUCKET, ROUTE_MODE_KEY).await;
    let day = qefleet_shared::ledger::utc_day(now_unix_ms());
    let cloud_spend_today = match js.get_key_value(SPEND_BUCKET).await {
        Ok(kv) => qefleet_shared::ledger::spent(
            &kv,
            &qefleet_shared::ledger::spend_key(&day, qefleet_shared::ledger::ALL_TENANTS),
        )
        .await
        .ok(),
        Err(_) => None,
    };
    // The SONA quality predictor in use (the latest snapshot).
    let sona = match js.get_key_value(SONA_BUCKET).await {
        Ok(kv) => kv
            .entry(QUALITY_PREDICTOR_KEY)
            .await
            .ok()
            .flatten()
            .and_then(|e| {
                let s = qefleet_learn::SonaSnapshot::decode(&e.value).ok()?;
                Some(json!({
                    "revision": e.revision,
                    "adapter_version": s.version,
                    "consolidation": s.consolidation,
                    "jobs": s.jobs,
                    "jobs_by_pool": s.jobs_by_pool,
                }))
            }),
        Err(_) => None,
    };
    // Consolidations published so far: the schedulers' watermark.
    let consolidations = text_value(&js, CONSOLIDATIONS_BUCKET, CONSOLIDATION_WATERMARK_KEY)
        .await
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let report = json!({
        "server": {"version": server.version, "name": server.server_name},
        "streams": streams,
        "pools": pools,
        "completions": completions,
        "consolidations": consolidations,
        "dead_letters": queues.dead_letters,
        "live_workers": workers,
        "route_mode": route_mode,
        "cloud_spend_today_usd": cloud_spend_today,
        "sona": sona,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("nats-server {} ({})", server.version, server.server_name);
    println!("\n{:<16} {:>10} {:>12}", "STREAM", "MESSAGES", "BYTES");
    for s in &streams {
        println!(
            "{:<16} {:>10} {:>12}",
            s["stream"].as_str().unwrap_or(""),
            s["messages"],
            s["bytes"]
        );
    }
    println!(
        "\n{:<8} {:>8} {:>9} {:>12} {:>12} {:>14}",
        "POOL", "QUEUED", "PENDING", "ACK_PENDING", "REDELIVERED", "OLDEST_AGE"
    );
    for p in &pools {
        let age = p["oldest_pending_age_ms"]
            .as_u64()
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<8} {:>8} {:>9} {:>12} {:>12} {:>14}",
            p["pool"].as_str().unwrap_or(""),
            p["queued"],
            p["pending"],
            p["ack_pending"],
            p["redelivered"],
            age
        );
    }
    println!(
        "\nroute mode: {}",
        route_mode
            .as_deref()
            .unwrap_or("not set (schedulers' --route-mode)")
    );
    if let Some(n) = completions {
        println!("completions: {n} (consolidation jobs published: {consolidations})");
    }
    match &sona {
        Some(s) => println!(
            "SONA quality predictor: adapter v{} (consolidation {}, revision {}), learned from {} jobs {}",
            s["adapter_version"], s["consolidation"], s["revision"], s["jobs"], s["jobs_by_pool"]
        ),
        None => println!("SONA quality predictor: none yet (the first consolidation stores one)"),
    }
    if let Some(usd) = cloud_spend_today {
        println!("cloud spend today ({day} UTC): ${usd:.4}");
    }
    let dead: u64 = queues.dead_letters.values().sum();
    println!("dead letters: {dead}");
    println!("\nlive workers: {}", workers.len());
    for w in &workers {
        println!("  {w}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The value under `key` in `bucket` as text; `None` when either is missing.
async fn text_value(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    key: &str,
) -> Option<String> {
    let kv = js.get_key_value(bucket).await.ok()?;
    let value = kv.get(key).await.ok()??;
    Some(String::from_utf8_lossy(&value).to_string())
}
