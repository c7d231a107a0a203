//! The fleet's Prometheus metrics, named `qefleet_<name>_<unit>[_total]` with small fixed
//! label sets (never ids), and a minimal `/metrics` HTTP endpoint.

use std::net::SocketAddr;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// Label names, defined once.
pub mod labels {
    pub const POOL: &str = "pool";
    pub const COMPLEXITY: &str = "complexity";
    pub const OUTCOME: &str = "outcome";
    pub const ERROR_TYPE: &str = "error_type";
    pub const REASON: &str = "reason";
    pub const ENGINE: &str = "engine";
}

/// Every metric a qefleet process may export. Unused ones simply stay at zero.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub jobs_submitted: IntCounterVec,
    pub submissions_rejected: IntCounterVec,
    pub jobs_completed: IntCounterVec,
    pub jobs_failed: IntCounterVec,
    pub jobs_retried: IntCounterVec,
    pub jobs_dead_lettered: IntCounterVec,
    pub job_duration: HistogramVec,
    /// Refinement rounds of succeeded jobs.
    pub refinement_rounds: HistogramVec,
    /// Quality score (0-1) of succeeded jobs.
    pub quality_score: HistogramVec,
    pub consolidations_triggered: IntCounter,
    pub outbox_pending: IntGauge,
    pub jobs_in_flight: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        use labels::*;
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            c
        };
        let jobs_submitted = counter(
            "qefleet_jobs_submitted_total",
            "Jobs accepted and queued by the scheduler",
            &[POOL, COMPLEXITY],
        );
        let submissions_rejected = counter(
            "qefleet_submissions_rejected_total",
            "Submissions rejected before anything was queued, by error code",
            &[REASON],
        );
        let jobs_completed = counter(
            "qefleet_jobs_completed_total",
            "Jobs that reached a terminal result, by outcome (succeeded, failed, expired)",
            &[POOL, COMPLEXITY, OUTCOME],
        );
        let jobs_failed = counter(
            "qefleet_jobs_failed_total",
            "Job attempts that failed, by error type",
            &[POOL, COMPLEXITY, ERROR_TYPE],
        );
        let jobs_retried = counter(
            "qefleet_jobs_retried_total",
            "Job deliveries negatively acknowledged for a delayed retry",
            &[POOL],
        );
        let jobs_dead_lettered = counter(
            "qefleet_jobs_dead_lettered_total",
            "Messages moved to the dead-letter stream, by reason",
            &[POOL, REASON],
        );
        let job_duration = HistogramVec::new(
            HistogramOpts::new(
                "qefleet_job_duration_seconds",
                "Engine run time of a job attempt",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            ]),
            &[POOL, COMPLEXITY],
        )
        .unwrap_or_else(|e| panic!("job duration histogram: {e}"));
        let _ = registry.register(Box::new(job_duration.clone()));
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets),
                &[POOL, ENGINE],
            )
            .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            let _ = registry.register(Box::new(h.clone()));
            h
        };
        let refinement_rounds = histogram(
            "qefleet_refinement_rounds",
            "Refinement rounds of a succeeded job",
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        );
        let quality_score = histogram(
            "qefleet_quality_score",
            "Quality score (0-1) of a succeeded job's suite",
            vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        );
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        let outbox_pending = gauge(
            "qefleet_outbox_pending",
            "Results computed but not yet confirmed published",
        );
        let jobs_in_flight = gauge("qefleet_jobs_in_flight", "Jobs a worker is running now");
        let consolidations_triggered = IntCounter::new(
            "qefleet_consolidations_triggered_total",
            "Consolidation jobs published by this scheduler",
        )
        .unwrap_or_else(|e| panic!("consolidations counter: {e}"));
        let _ = registry.register(Box::new(consolidations_triggered.clone()));
        Self {
            registry,
            jobs_submitted,
            submissions_rejected,
            jobs_completed,
            jobs_failed,
            jobs_retried,
            jobs_dead_lettered,
            job_duration,
            refinement_rounds,
            quality_score,
            consolidations_triggered,
            outbox_pending,
            jobs_in_flight,
        }
    }

    /// The text exposition format of every registered metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `GET /metrics` on `listener` until shutdown. Returns the bound address so a
/// caller asking for port 0 learns the real one.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    mut shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((mut socket, _)) = accepted else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 2048];
                let n = socket.read(&mut request).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&request[..n]);
                let (status, body) = if line.starts_with("GET /metrics") {
                    ("200 OK", metrics.render())
                } else if line.starts_with("GET /healthz") {
                    ("200 OK", "ok\n".to_string())
                } else {
                    ("404 Not Found", "try /metrics\n".to_string())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(local)
}
