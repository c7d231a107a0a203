//! What an atomic batch costs nats-server against single publishes (ADR 0017): wall time
//! and the server's CPU time for the same 6400 messages of 300 bytes, once with the
//! embedded server's `sync_interval: always` and once with the server's default.
//!
//! Run: `cargo bench --bench atomic_batches` (Linux: the server's CPU is read from /proc).

mod support;
use support::server_cpu_seconds;

use std::time::Instant;

use async_nats::jetstream::{self, stream};
use qefleet_shared::embedded::{EmbeddedOptions, EmbeddedServer};

const MESSAGES: usize = 6400;
const PAYLOAD: usize = 300;

/// Publishes `size` messages as one atomic batch and waits for the commit's answer.
async fn batch(client: &async_nats::Client, name: &str, size: usize) {
    for k in 0..size {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Batch-Id", name);
        headers.insert("Nats-Batch-Sequence", (k + 1).to_string().as_str());
        let subject = format!("probe.{name}.{k}");
        let payload = vec![7u8; PAYLOAD].into();
        if k + 1 < size {
            client
                .publish_with_headers(subject, headers, payload)
                .await
                .expect("publish");
        } else {
            headers.insert("Nats-Batch-Commit", "1");
            let answer = client
                .request_with_headers(subject, headers, payload)
                .await
                .expect("commit");
            let text = String::from_utf8_lossy(&answer.payload);
            assert!(!text.contains("\"error\""), "batch refused: {text}");
        }
    }
}

fn report(what: &str, started: Instant, cpu_before: f64) {
    println!(
        "  {what:<40} {:>8.0} ms wall {:>7.2} s server CPU",
        started.elapsed().as_secs_f64() * 1000.0,
        server_cpu_seconds() - cpu_before
    );
}

async fn measure(default_sync: bool) {
    let server = EmbeddedServer::start(EmbeddedOptions {
        default_sync,
        ..Default::default()
    })
    .expect("nats-server");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "PROBE".into(),
        subjects: vec!["probe.>".into()],
        allow_atomic_publish: true,
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        ..Default::default()
    })
    .await
    .expect("stream");
    println!(
        "\n== {} ==",
        if default_sync {
            "server default sync"
        } else {
            "sync_interval: always"
        }
    );

    let (started, cpu) = (Instant::now(), server_cpu_seconds());
    let mut acks = Vec::with_capacity(64);
    for i in 0..MESSAGES {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("single-{i}").as_str());
        acks.push(
            js.publish_with_headers(
                format!("probe.single.{i}"),
                headers,
                vec![7u8; PAYLOAD].into(),
            )
            .await
            .expect("publish"),
        );
        if acks.len() == 64 || i + 1 == MESSAGES {
            for ack in acks.drain(..) {
                ack.await.expect("stored");
            }
        }
    }
    report("singles, 64 in flight", started, cpu);

    for size in [8usize, 64] {
        let (started, cpu) = (Instant::now(), server_cpu_seconds());
        for b in 0..MESSAGES / size {
            batch(&client, &format!("b{size}x{b}"), size).await;
        }
        report(&format!("batches of {size}, one at a time"), started, cpu);
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("atomic batches against single publishes ({MESSAGES} messages of {PAYLOAD} bytes)");
    for default_sync in [false, true] {
        runtime.block_on(measure(default_sync));
    }
}
