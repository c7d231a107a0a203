//! `qefleet dlq list|show|replay|purge`: dead letters keep the original payload and
//! headers plus the reason; replay puts them back on their original subject, throttled,
//! resumable and idempotent (a replayed entry is removed from the dead-letter stream, and
//! its republish carries `Nats-Msg-Id = dlq-replay-<seq>`).

use std::path::PathBuf;
use std::process::ExitCode;

use async_nats::jetstream::{self, stream::Stream};
use async_nats::HeaderMap;
use qefleet_schemas::QueuedJob;
use qefleet_shared::messages;
use qefleet_shared::nats::NatsArgs;
use qefleet_shared::subjects::*;

use crate::progress::{Checkpoint, Progress, Throttle};

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// One line per dead letter: sequence, origin subject, job id, deliveries, reason.
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Headers and payload of one dead letter.
    Show { seq: u64 },
    /// Put dead letters back on their original subjects.
    Replay {
        /// Only these sequences (default: all).
        #[arg(long = "seq")]
        seqs: Vec<u64>,
        /// Most republishes per second.
        #[arg(long)]
        rate: Option<f64>,
        /// File remembering the last replayed sequence.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Delete dead letters for good.
    Purge {
        /// Only these sequences.
        #[arg(long = "seq")]
        seqs: Vec<u64>,
        /// Delete all of them (required when no --seq is given).
        #[arg(long)]
        all: bool,
    },
}

struct Letter {
    seq: u64,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
}

impl Letter {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    }

    fn job_id(&self) -> String {
        messages::decode::<QueuedJob>(Some(&self.headers), &self.payload)
            .map(|(j, _)| j.job_id().to_string())
            .unwrap_or_else(|_| "(undecodable)".into())
    }
}

async fn letters(stream: &mut Stream, only: &[u64], after: u64) -> anyhow::Result<Vec<Letter>> {
    let state = stream.info().await?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence.max(after + 1)..=state.last_sequence {
        if !only.is_empty() && !only.contains(&seq) {
            continue;
        }
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(Letter {
                seq,
                subject: m.subject.to_string(),
                headers: m.headers,
                payload: m.payload,
            });
        }
    }
    Ok(out)
}

pub async fn dlq(args: DlqArgs) -> anyhow::Result<ExitCode> {
    let client = super::client(&args.nats).await?;
    let js = jetstream::new(client);
    let mut stream = js.get_stream(DLQ_STREAM).await?;
    match args.command {
        DlqCommand::List { limit } => {
            let all = letters(&mut stream, &[], 0).await?;
            println!("{} dead letter(s)", all.len());
            for l in all.iter().take(limit) {
                println!(
                    "{:>6}  {:<24} job {:<24} deliveries {:<3} {}",
                    l.seq,
                    l.header(HEADER_DLQ_SUBJECT),
                    l.job_id(),
                    l.header(HEADER_DLQ_DELIVERIES),
                    l.header(HEADER_DLQ_REASON)
                );
            }
        }
        DlqCommand::Show { seq } => {
            let Some(l) = letters(&mut stream, &[seq], 0).await?.pop() else {
                anyhow::bail!("no dead letter with sequence {seq}");
            };
            println!("sequence: {}\nsubject: {}", l.seq, l.subject);
            for (name, values) in l.headers.iter() {
                for v in values {
                    println!("{name}: {}", v.as_str());
                }
            }
            let body = serde_json::from_slice::<serde_json::Value>(&l.payload)
                .ok()
                .or_else(|| rmp_serde::from_slice::<serde_json::Value>(&l.payload).ok())
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| String::from_utf8_lossy(&l.payload).into_owned());
            println!("\n{body}");
        }
        DlqCommand::Replay {
            seqs,
            rate,
            checkpoint,
        } => {
            let checkpoint = Checkpoint::new(checkpoint.as_deref());
            let after = checkpoint.load()?;
            let todo = letters(&mut stream, &seqs, after).await?;
            let mut throttle = Throttle::new(rate);
            let mut progress = Progress::new("dlq replay", Some(todo.len() as u64));
            for (n, l) in todo.iter().enumerate() {
                throttle.tick().await;
                let mut headers = HeaderMap::new();
                for (name, values) in l.headers.iter() {
                    if name.to_string().starts_with("Qefleet-Dlq-")
                        || name.to_string() == HEADER_MSG_ID
                    {
                        continue;
                    }
                    for v in values {
                        headers.append(name.clone(), v.clone());
                    }
                }
                headers.insert(HEADER_MSG_ID, format!("dlq-replay-{}", l.seq).as_str());
                let target = l.header(HEADER_DLQ_SUBJECT);
                anyhow::ensure!(
                    !target.is_empty(),
                    "dead letter {} has no {HEADER_DLQ_SUBJECT} header",
                    l.seq
                );
                js.publish_with_headers(target, headers, l.payload.clone())
                    .await?
                    .await?;
                stream.delete_message(l.seq).await?;
                checkpoint.save(l.seq)?;
                progress.update(n as u64 + 1, "");
            }
            progress.finish(todo.len() as u64, "replayed");
        }
        DlqCommand::Purge { seqs, all } => {
            if seqs.is_empty() {
                anyhow::ensure!(all, "pass --seq N (repeatable) or --all");
                let purged = stream.purge().await?;
                println!("purged {} dead letter(s)", purged.purged);
            } else {
                for seq in seqs {
                    stream.delete_message(seq).await?;
                    println!("deleted {seq}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
