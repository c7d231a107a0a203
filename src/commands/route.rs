//! `qefleet route-mode [auto|force-local|force-cloud]`: shows or sets the routing switch
//! every scheduler follows at run time (the `route_mode` key of `qe_control`).
//! `force-cloud` is the rollback to the cloud, `force-local` keeps everything local;
//! neither moves a `local_only` job off local workers.

use std::process::ExitCode;

use async_nats::jetstream;
use qefleet_scheduler::router::RouteMode;
use qefleet_shared::nats::NatsArgs;
use qefleet_shared::provision;
use qefleet_shared::subjects::{CONTROL_BUCKET, ROUTE_MODE_KEY};

#[derive(Debug, clap::Args)]
pub struct RouteModeArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The mode to set; without it, the current one is shown.
    #[arg(value_enum)]
    pub mode: Option<RouteMode>,
}

pub async fn route_mode(args: RouteModeArgs) -> anyhow::Result<ExitCode> {
    let client = super::client(&args.nats).await?;
    let js = jetstream::new(client);
    provision::ensure_all(&js).await?;
    let bucket = js.get_key_value(CONTROL_BUCKET).await?;
    if let Some(mode) = args.mode {
        bucket
            .put(ROUTE_MODE_KEY, mode.as_str().as_bytes().to_vec().into())
            .await?;
        println!(
            "route mode: {} (schedulers switch within a moment)",
            mode.as_str()
        );
    } else {
        match bucket.get(ROUTE_MODE_KEY).await? {
            Some(v) => println!("route mode: {}", String::from_utf8_lossy(&v)),
            None => println!(
                "route mode: not set (each scheduler's --route-mode applies, default auto)"
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}
