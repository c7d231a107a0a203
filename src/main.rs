//! `qefleet`: the one binary of the fleet. Each subcommand wires configuration to a
//! library entrypoint; the logic lives in the crates.

mod commands;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "qefleet",
    version,
    about = "Distributed test-generation fleet on NATS JetStream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run scheduler, local worker and maint worker in one process; starts its own
    /// nats-server when no --nats-url is given.
    Up(commands::up::UpArgs),
    /// Like `up`, then submit a bundled example module, print its result and exit.
    Demo(commands::up::DemoArgs),
    /// Run a scheduler replica.
    Scheduler(commands::serve::SchedulerCmd),
    /// Run a worker for one pool.
    Worker(commands::serve::WorkerCmd),
    /// Submit a Python module for test generation.
    Submit(commands::submit::SubmitArgs),
    /// Show a job's result (or its state while it runs).
    Result(commands::result::ResultArgs),
    /// Streams, consumers, backlog, oldest pending job, live workers.
    Status(commands::status::StatusArgs),
    /// Inspect and replay dead letters.
    Dlq(commands::dlq::DlqArgs),
    /// Submit a backlog of jobs from a JSON-lines file, throttled and resumable.
    Replay(commands::replay::ReplayArgs),
    /// Show or set the routing switch: auto, force-local, force-cloud.
    RouteMode(commands::route::RouteModeArgs),
    /// The SONA quality predictor's snapshots: history, rollback.
    Sona(commands::sona::SonaArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    qefleet_shared::logging::init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Up(args) => commands::up::up(args).await,
        Command::Demo(args) => commands::up::demo(args).await,
        Command::Scheduler(args) => commands::serve::scheduler(args).await,
        Command::Worker(args) => commands::serve::worker(args).await,
        Command::Submit(args) => commands::submit::submit(args).await,
        Command::Result(args) => commands::result::result(args).await,
        Command::Status(args) => commands::status::status(args).await,
        Command::Dlq(args) => commands::dlq::dlq(args).await,
        Command::Replay(args) => commands::replay::replay(args).await,
        Command::RouteMode(args) => commands::route::route_mode(args).await,
        Command::Sona(args) => commands::sona::sona(args).await,
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qefleet: {e:#}");
            ExitCode::FAILURE
        }
    }
}
