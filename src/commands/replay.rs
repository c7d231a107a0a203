//! `qefleet replay FILE.jsonl`: submit a backlog of jobs (one JobSpec JSON per line),
//! throttled, resumable from a checkpoint, idempotent: a line without a job_id gets one
//! derived from its content, so replaying a file twice queues each job once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use qefleet_schemas::{ContentType, SubmitReply};
use qefleet_shared::client::submit_raw;
use qefleet_shared::nats::NatsArgs;

use crate::progress::{Checkpoint, Progress, Throttle};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// JSON-lines file of job specs.
    pub file: PathBuf,
    /// Most submissions per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// File remembering how many lines are done (default: FILE.checkpoint).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
}

/// A stable job id for a line that names none (FNV-1a of its bytes).
pub fn derived_job_id(line: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in line.trim().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("replay-{hash:016x}")
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let checkpoint_path = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| args.file.with_extension("checkpoint"));
    let checkpoint = Checkpoint::new(Some(&checkpoint_path));
    let start = checkpoint.load()?.min(lines.len() as u64);
    if start > 0 {
        eprintln!(
            "resuming after line {start} (checkpoint {})",
            checkpoint_path.display()
        );
    }
    let client = super::client(&args.nats).await?;
    let mut throttle = Throttle::new(args.rate);
    let mut progress = Progress::new("replay", Some(lines.len() as u64));
    let (mut accepted, mut duplicates, mut rejected) = (0u64, 0u64, 0u64);
    for (index, line) in lines.iter().enumerate().skip(start as usize) {
        let number = index as u64 + 1;
        if line.trim().is_empty() {
            checkpoint.save(number)?;
            continue;
        }
        let payload = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(mut value) if value.is_object() => {
                if value.get("job_id").is_none_or(|v| v.is_null()) {
                    value["job_id"] = derived_job_id(line).into();
                }
                serde_json::to_vec(&value)?
            }
            _ => line.as_bytes().to_vec(),
        };
        throttle.tick().await;
        // Unavailable schedulers are an error for the whole run: stop, keep the checkpoint.
        let reply =
            submit_raw(&client, payload, ContentType::Json, Duration::from_secs(30)).await?;
        match reply {
            SubmitReply::Accepted {
                duplicate: true, ..
            } => duplicates += 1,
            SubmitReply::Accepted { .. } => accepted += 1,
            SubmitReply::Rejected { error, .. } => {
                rejected += 1;
                eprintln!(
                    "\rline {number}: rejected ({:?}): {}",
                    error.code, error.message
                );
            }
        }
        checkpoint.save(number)?;
        progress.update(
            number,
            &format!("accepted {accepted} duplicate {duplicates} rejected {rejected}"),
        );
    }
    progress.finish(
        lines.len() as u64,
        &format!("accepted {accepted} duplicate {duplicates} rejected {rejected}"),
    );
    Ok(if rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(derived_job_id("{\"a\":1}"), derived_job_id(" {\"a\":1} "));
        assert_ne!(derived_job_id("{\"a\":1}"), derived_job_id("{\"a\":2}"));
    }
}
