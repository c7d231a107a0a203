//! `qefleet sona history|rollback`: the quality predictor's stored snapshots (the
//! `quality_predictor` key of `qe_sona`, ten revisions kept) and putting an earlier one
//! back in use. Schedulers swap a rolled-back snapshot in as they would a new one.

use std::process::ExitCode;

use async_nats::jetstream;
use qefleet_shared::nats::NatsArgs;
use qefleet_shared::provision;
use qefleet_shared::subjects::SONA_BUCKET;
use qefleet_worker::sona::{self, Revision};

#[derive(Debug, clap::Args)]
pub struct SonaArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(subcommand)]
    pub action: SonaAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum SonaAction {
    /// The stored snapshots, oldest first; the last is in use.
    History,
    /// Put an earlier snapshot back in use: the one before the latest, or --to REVISION.
    Rollback {
        /// The revision to restore (from `qefleet sona history`).
        #[arg(long)]
        to: Option<u64>,
    },
}

/// `2026-12-02 15:04:05 UTC`.
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000 % 86_400;
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        qefleet_shared::ledger::utc_day(unix_ms),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn describe(r: &Revision) -> String {
    let s = &r.snapshot;
    let pools = s
        .jobs_by_pool
        .iter()
        .map(|(pool, n)| format!("{pool} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "revision {:>4}  adapter v{:<4} consolidation {:<5} jobs {:<6} ({})  results to #{}  at {}",
        r.revision,
        s.version,
        s.consolidation,
        s.jobs,
        if pools.is_empty() { "none" } else { &pools },
        s.results_seq,
        utc(s.updated_at_ms),
    )
}

pub async fn sona(args: SonaArgs) -> anyhow::Result<ExitCode> {
    let client = super::client(&args.nats).await?;
    let js = jetstream::new(client);
    provision::ensure_all(&js).await?;
    let bucket = js.get_key_value(SONA_BUCKET).await?;
    match args.action {
        SonaAction::History => {
            let revisions = sona::history(&bucket).await.map_err(anyhow::Error::msg)?;
            if revisions.is_empty() {
                println!("no SONA snapshot yet: the first consolidation job stores one");
            }
            for (i, r) in revisions.iter().enumerate() {
                let marker = if i + 1 == revisions.len() { "* " } else { "  " };
                println!("{marker}{}", describe(r));
            }
        }
        SonaAction::Rollback { to } => {
            let done = sona::rollback(&bucket, to)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("rolled back from  {}", describe(&done.from));
            println!("to                {}", describe(&done.to));
            println!(
                "stored as revision {}; schedulers swap it in within a moment, and the next consolidation learns again from results after #{}",
                done.revision, done.to.snapshot.results_seq
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
