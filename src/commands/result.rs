//! `qefleet result JOB_ID`: print a job's result, or where it is while it runs.

use std::process::ExitCode;
use std::time::Duration;

use qefleet_schemas::{codec, ContentType, EventKind, JobEvent, JobPhase, JobResult, JobState};
use qefleet_shared::client::{fetch_result, wait_for_result};
use qefleet_shared::config::parse_duration;
use qefleet_shared::messages;
use qefleet_shared::nats::NatsArgs;
use qefleet_shared::subjects::{event_subject, EVENTS_STREAM, JOB_STATE_BUCKET};

#[derive(Debug, clap::Args)]
pub struct ResultArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    pub job_id: String,
    /// Wait this long for the result.
    #[arg(long, value_parser = parse_duration)]
    pub wait: Option<Duration>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Omit the generated test file.
    #[arg(long)]
    pub brief: bool,
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| "not measured".into())
}

/// Human-readable summary of a result.
pub fn print_result(r: &JobResult, with_tests: bool) {
    println!("job {} ({}): {:?}", r.job_id, r.module_name, r.status);
    if let Some(e) = &r.error {
        println!("  error: {e}");
    }
    println!(
        "  tests: {} passed, {} failed, {} total",
        r.tests_passed, r.tests_failed, r.tests_total
    );
    println!(
        "  line coverage: {}   branch coverage: {}",
        pct(r.line_coverage),
        pct(r.branch_coverage)
    );
    println!(
        "  mutation score: {}   quality: {}",
        pct(r.mutation_score),
        r.quality_score
            .map(|q| format!("{q:.3}"))
            .unwrap_or_else(|| "not computed".into())
    );
    if let Some(met) = r.coverage_target_met {
        println!("  coverage target met: {met}");
    }
    println!(
        "  engine {} on {} pool ({} complexity), {} round(s), attempt {}, worker {}",
        r.engine, r.pool, r.complexity, r.refinement_rounds, r.attempt, r.worker_id
    );
    println!(
        "  timings: queued {} ms, run {} ms, total {} ms; cost ${:.4}, tokens {}+{}",
        r.timings.queued_ms,
        r.timings.run_ms,
        r.timings.total_ms,
        r.cost_usd,
        r.tokens.prompt,
        r.tokens.completion
    );
    if with_tests {
        if let Some(file) = &r.test_file {
            println!("----- generated tests -----\n{file}---------------------------");
        }
    }
}

pub async fn result(args: ResultArgs) -> anyhow::Result<ExitCode> {
    let client = super::client(&args.nats).await?;
    let js = async_nats::jetstream::new(client);
    let found = match args.wait {
        Some(wait) => Some(wait_for_result(&js, &args.job_id, wait).await?),
        None => fetch_result(&js, &args.job_id).await?,
    };
    match found {
        Some((result, _)) => {
            if args.json {
                println!(
                    "{}",
                    String::from_utf8_lossy(&codec::encode(&result, ContentType::Json))
                );
            } else {
                print_result(&result, !args.brief);
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let state = match js.get_key_value(JOB_STATE_BUCKET).await {
                Ok(kv) => kv.get(&args.job_id).await.ok().flatten(),
                Err(_) => None,
            };
            let started = last_started_event(&js, &args.job_id).await;
            match state.and_then(|b| codec::decode::<JobState>(&b, ContentType::Json).ok()) {
                Some(state) => println!(
                    "job {}: no result yet, {} on the {} pool ({})",
                    state.job_id,
                    match (&started, state.phase) {
                        (_, JobPhase::DeadLettered) =>
                            "dead-lettered (see `qefleet dlq list`)".to_string(),
                        (Some(detail), _) => format!("running ({detail})"),
                        (None, _) => "queued".to_string(),
                    },
                    state.route.pool,
                    state.route.subject
                ),
                None => println!(
                    "job {}: unknown (never submitted, or its state expired)",
                    args.job_id
                ),
            }
            Ok(ExitCode::from(3))
        }
    }
}

/// Detail of the job's latest `started` event, if a worker has started it.
async fn last_started_event(js: &async_nats::jetstream::Context, job_id: &str) -> Option<String> {
    let stream = js.get_stream_no_info(EVENTS_STREAM).await.ok()?;
    let message = stream
        .get_last_raw_message_by_subject(&event_subject(EventKind::Started, job_id))
        .await
        .ok()?;
    let (event, _) = messages::decode::<JobEvent>(Some(&message.headers), &message.payload).ok()?;
    Some(event.detail.unwrap_or_default())
}
