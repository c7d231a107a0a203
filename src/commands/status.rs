//! `qefleet status`: streams, pool consumers (pending, ack-pending, redelivered), the
//! oldest pending job per pool, dead letters and live workers.

use std::process::ExitCode;

use futures_util::StreamExt;
use qefleet_schemas::{now_unix_ms, Pool};
use qefleet_shared::nats::NatsArgs;
use qefleet_shared::provision::stream_configs;
use qefleet_shared::subjects::{
    pool_consumer, pool_filter, CONTROL_BUCKET, JOBS_STREAM, ROUTE_MODE_KEY, SPEND_BUCKET,
    WORKERS_BUCKET,
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
    for config in stream_configs() {
        match js.get_stream(&config.name).await {
            Ok(mut s) => {
                let info = s.info().await?;
                streams.push(json!({"stream": config.name, "messages": info.state.messages, "bytes": info.state.bytes}));
            }
            Err(_) => streams.push(json!({"stream": config.name, "missing": true})),
        }
    }
    let mut pools = Vec::new();
    let jobs = js.get_stream(JOBS_STREAM).await.ok();
    for pool in Pool::ALL {
        let Some(jobs) = &jobs else { break };
        let consumer = jobs.consumer_info(pool_consumer(pool)).await.ok();
        // Jobs in the work queue for this pool (waiting or in flight), with or without a
        // consumer: a pool nobody has served yet still shows its backlog.
        let mut queued = 0u64;
        if let Ok(mut subjects) = jobs.info_with_subjects(pool_filter(pool)).await {
            while let Some(Ok((_, n))) = subjects.next().await {
                queued += n as u64;
            }
        }
        let oldest_ms = jobs
            .get_first_raw_message_by_subject(pool_filter(pool), 0)
            .await
            .ok()
            .map(|m| {
                let at = (m.time.unix_timestamp_nanos() / 1_000_000) as u64;
                now_unix_ms().saturating_sub(at)
            });
        pools.push(json!({
            "pool": pool,
            "queued": queued,
            "consumer": consumer.is_some(),
            "pending": consumer.as_ref().map(|c| c.num_pending),
            "ack_pending": consumer.as_ref().map(|c| c.num_ack_pending),
            "redelivered": consumer.as_ref().map(|c| c.num_redelivered),
            "oldest_pending_age_ms": oldest_ms,
        }));
    }
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
    let route_mode = match js.get_key_value(CONTROL_BUCKET).await {
        Ok(kv) => kv
            .get(ROUTE_MODE_KEY)
            .await
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).to_string()),
        Err(_) => None,
    };
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
    let report = json!({
        "server": {"version": server.version, "name": server.server_name},
        "streams": streams,
        "pools": pools,
        "live_workers": workers,
        "route_mode": route_mode,
        "cloud_spend_today_usd": cloud_spend_today,
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
    if let Some(usd) = cloud_spend_today {
        println!("cloud spend today ({day} UTC): ${usd:.4}");
    }
    println!("\nlive workers: {}", workers.len());
    for w in &workers {
        println!("  {w}");
    }
    Ok(ExitCode::SUCCESS)
}
