//! `qefleet submit FILE.py`: submit a module (or, with `--each-function`, a job per
//! function in one batch request), optionally wait for the results.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use qefleet_schemas::{now_unix_ms, ContentType, JobSpec, Pool, Strategy, SubmitReply};
use qefleet_shared::client::{submit as submit_job, submit_many, wait_for_result};
use qefleet_shared::config::parse_duration;
use qefleet_shared::nats::NatsArgs;

use super::result::print_result;

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Python module file to generate tests for.
    pub file: PathBuf,
    /// Importable module name (default: the file's stem).
    #[arg(long)]
    pub module_name: Option<String>,
    /// Idempotency key; submitting it again yields the same job.
    #[arg(long)]
    pub job_id: Option<String>,
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Only this function or Class.method.
    #[arg(long, conflicts_with = "each_function")]
    pub target: Option<String>,
    /// One job per function and method of the module, in as few batch requests as fit
    /// (256 jobs and the server's max_payload each; with --job-id, each job's id is
    /// `<job-id>-<function>`, dots as dashes).
    #[arg(long)]
    pub each_function: bool,
    /// Line coverage to aim for, 0.0-1.0.
    #[arg(long)]
    pub coverage_target: Option<f64>,
    /// Most the job may cost, in US dollars.
    #[arg(long)]
    pub max_usd: Option<f64>,
    /// Seconds the engine may spend.
    #[arg(long)]
    pub max_seconds: Option<u32>,
    /// Keep the job (and its source) on local workers.
    #[arg(long)]
    pub local_only: bool,
    #[arg(long, value_parser = parse_strategy)]
    pub strategy: Option<Strategy>,
    /// Insist on a pool (local or cloud).
    #[arg(long, value_parser = parse_pool)]
    pub pool: Option<Pool>,
    /// The job must start within this long (e.g. 10m).
    #[arg(long, value_parser = parse_duration)]
    pub deadline_in: Option<Duration>,
    /// KEY=VALUE labels returned on the result.
    #[arg(long = "meta", value_parser = parse_meta)]
    pub metadata: Vec<(String, String)>,
    /// Send JSON instead of MessagePack.
    #[arg(long)]
    pub json: bool,
    /// While no scheduler answers (one starting or restarting), keep trying this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub wait_for_scheduler: Duration,
    /// Wait this long for the result and print it.
    #[arg(long, value_parser = parse_duration)]
    pub wait: Option<Duration>,
}

fn queued_or_known(duplicate: bool) -> &'static str {
    if duplicate {
        "already submitted"
    } else {
        "queued"
    }
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| "one of cost, quality, privacy-first, balanced".to_string())
}

fn parse_pool(s: &str) -> Result<Pool, String> {
    Pool::parse(s).ok_or_else(|| "local or cloud".to_string())
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| "expected KEY=VALUE".to_string())
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let source = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {} (it must be UTF-8 text)", args.file.display()))?;
    let module_name = args.module_name.clone().unwrap_or_else(|| {
        args.file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("module")
            .to_string()
    });
    let mut job = JobSpec::python(&module_name, &source);
    job.job_id = args.job_id.clone();
    job.tenant = args.tenant.clone();
    job.target_function = args.target.clone();
    job.coverage_target = args.coverage_target;
    job.budget.max_usd = args.max_usd;
    job.budget.max_seconds = args.max_seconds;
    job.local_only = args.local_only;
    job.strategy = args.strategy;
    job.pool = args.pool;
    job.deadline_unix_ms = args
        .deadline_in
        .map(|d| now_unix_ms() + d.as_millis() as u64);
    job.metadata = args.metadata.iter().cloned().collect();
    let ct = if args.json {
        ContentType::Json
    } else {
        ContentType::MsgPack
    };
    let client = super::client(&args.nats).await?;
    if args.each_function {
        return submit_each_function(&client, &job, ct, &args).await;
    }
    match submit_job(&client, &job, ct, args.wait_for_scheduler).await? {
        SubmitReply::Accepted {
            job_id,
            duplicate,
            route,
            ..
        } => {
            println!("{job_id}");
            eprintln!(
                "{} to the {} pool ({}): {}",
                queued_or_known(duplicate),
                route.pool,
                route.subject,
                route.reasons.join("; ")
            );
            if let Some(wait) = args.wait {
                let js = async_nats::jetstream::new(client);
                let (result, _) = wait_for_result(&js, &job_id, wait).await?;
                print_result(&result, true);
            }
            Ok(ExitCode::SUCCESS)
        }
        SubmitReply::Rejected { error, .. } => {
            eprintln!("rejected ({:?}): {}", error.code, error.message);
            Ok(ExitCode::from(2))
        }
    }
}

/// `--each-function`: the module's functions (as the scheduler's analysis names them), a
/// job for each in as few batch requests as fit; prints each accepted job id on stdout,
/// and exits 2 when any job was rejected.
async fn submit_each_function(
    client: &async_nats::Client,
    job: &JobSpec,
    ct: ContentType,
    args: &SubmitArgs,
) -> anyhow::Result<ExitCode> {
    let functions = qefleet_scheduler::complexity::analyze(&job.source)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?
        .functions;
    if functions.is_empty() {
        anyhow::bail!("{} defines no function to test", args.file.display());
    }
    let jobs: Vec<JobSpec> = functions
        .iter()
        .map(|function| {
            let mut one = job.clone();
            one.target_function = Some(function.clone());
            one.job_id = job
                .job_id
                .as_ref()
                .map(|id| format!("{id}-{}", function.replace('.', "-")));
            one
        })
        .collect();
    let replies = submit_many(client, jobs, ct, args.wait_for_scheduler).await?;
    let mut accepted = Vec::new();
    for (function, reply) in functions.iter().zip(replies) {
        match reply {
            SubmitReply::Accepted {
                job_id,
                duplicate,
                route,
                ..
            } => {
                println!("{job_id}");
                eprintln!(
                    "{function}: {} to the {} pool ({})",
                    queued_or_known(duplicate),
                    route.pool,
                    route.subject
                );
                accepted.push(job_id);
            }
            SubmitReply::Rejected { error, .. } => {
                eprintln!("{function}: rejected ({:?}): {}", error.code, error.message);
            }
        }
    }
    if let Some(wait) = args.wait {
        let js = async_nats::jetstream::new(client.clone());
        let until = std::time::Instant::now() + wait;
        for job_id in &accepted {
            let left = until.saturating_duration_since(std::time::Instant::now());
            let (result, _) = wait_for_result(&js, job_id, left).await?;
            print_result(&result, false);
        }
    }
    Ok(if accepted.len() == functions.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
