//! The escalation cascade end to end: a local result below the quality gate goes once to
//! a `qefleet worker --pool cloud` process (its provider a local server speaking the
//! Anthropic protocol), which starts from the local suite; a `local_only` job never
//! does; and when the cloud cannot run an escalated job, the local result is the job's.

use std::sync::Arc;
use std::time::Duration;

use qefleet_cloud::stub::{anthropic_ok, Stub};
use qefleet_scheduler::SchedulerArgs;
use qefleet_schemas::{EventKind, JobEvent, JobStatus, Pool};
use qefleet_shared::subjects::{event_subject, EVENTS_STREAM};
use qefleet_worker::engines::DoctestEngine;
use qefleet_worker::PoolArg;

use crate::cloud::{cloud_config, cloud_worker};
use crate::support::*;

/// The doctest engine covers `add` only: a weak local result.
const MODULE: &str = "def add(a, b):\n    \"\"\"\n    >>> add(2, 3)\n    5\n    \"\"\"\n    return a + b\n\n\ndef sub(a, b):\n    if a < b:\n        return -(b - a)\n    return a - b\n";
const CLOUD_SUITE: &str = "```python\nimport calc\n\n\ndef test_add():\n    assert calc.add(2, 3) == 5\n\n\ndef test_sub():\n    assert calc.sub(5, 3) == 2\n\n\ndef test_sub_negative():\n    assert calc.sub(3, 5) == -2\n```";

async fn escalated_events(fleet: &Fleet, job_id: &str) -> Vec<JobEvent> {
    fleet
        .messages(EVENTS_STREAM)
        .await
        .into_iter()
        .filter(|m| m.subject.as_str() == event_subject(EventKind::Escalated, job_id))
        .filter_map(|m| {
            qefleet_shared::messages::decode::<JobEvent>(Some(&m.headers), &m.payload)
                .ok()
                .map(|(e, _)| e)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_local_results_go_to_the_cloud_once_private_ones_never_and_failures_keep_the_local_suite(
) {
    // Two answers for the escalated job (the second repeats the first and ends the loop);
    // every later request gets a 500.
    let stub = Stub::start(vec![anthropic_ok(CLOUD_SUITE), anthropic_ok(CLOUD_SUITE)]).await;
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let config = cloud_config(fleet.dir.path(), &stub.url);
    let metrics_port = cloud_worker(
        &mut fleet,
        &config,
        &[
            // One delivery: a provider failure ends the cloud's attempt at once.
            "--max-deliver",
            "1",
            "--compute-usd-per-hour",
            "3.6",
        ],
    );
    let mut local = fleet.worker_args(PoolArg::Local);
    local.results.quality_gate = 0.95;
    local.savings_reference = Some(config.clone());
    fleet
        .worker(local, Arc::new(DoctestEngine::probe(None).await))
        .await;
    // Jobs wait until the cloud worker is live, or they would stay local.
    eventually(
        Duration::from_secs(30),
        "the cloud worker is live",
        || async {
            fleet
                .live_workers()
                .await
                .iter()
                .any(|k| k.starts_with("cloud."))
        },
    )
    .await;

    let id = fleet.submit_ok(&job(MODULE)).await;
    let (result, _) = fleet.result(&id, Duration::from_secs(120)).await;
    assert_eq!(
        (result.status, result.pool, result.engine.as_str()),
        (JobStatus::Succeeded, Pool::Cloud, "cloud"),
        "{result:?}\n{}",
        fleet.worker_log(1)
    );
    let escalation = result.escalation.clone().expect("escalation recorded");
    assert_eq!(escalation.local_engine, "doctest");
    assert!(escalation.cloud_error.is_none());
    let local_quality = escalation.local_quality_score.expect("local quality");
    assert!(
        escalation.reason.contains("below the gate 0.95"),
        "{}",
        escalation.reason
    );
    assert!(
        result.quality_score.expect("quality") > local_quality,
        "the cloud improved on {local_quality}: {result:?}"
    );
    assert_eq!(result.tests_passed, 3);
    // The cloud started from the local suite: the first prompt carries it.
    let sent = stub.requests();
    assert_eq!(sent.len(), 2);
    let prompt = sent[0].body["messages"][0]["content"]
        .as_str()
        .unwrap_or("");
    assert!(
        prompt.contains("The current suite") && prompt.contains("add(2, 3)"),
        "{prompt}"
    );
    // Costs: the cloud's tokens, compute of both workers, and the equivalent priced.
    assert!((result.cost_usd - 2.0 * 0.0081).abs() < 1e-9);
    assert!(result.compute_usd > 0.0, "{result:?}");
    let equivalent = result.cloud_equivalent.clone().expect("equivalent");
    assert_eq!(
        (equivalent.prompt_tokens, equivalent.counted_by.as_str()),
        (2400, "reported")
    );
    let savings = result.savings_usd.expect("savings");
    assert!(
        (savings - (equivalent.usd - result.cost_usd - result.compute_usd)).abs() < 1e-12,
        "{savings}"
    );
    let events = escalated_events(&fleet, &id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("below the gate")),
        "{events:?}"
    );

    // The same weak result under the privacy flag stays local and never asks the cloud.
    let mut private = job(MODULE);
    private.local_only = true;
    let id = fleet.submit_ok(&private).await;
    let (result, _) = fleet.result(&id, Duration::from_secs(60)).await;
    assert_eq!(result.pool, Pool::Local, "{result:?}");
    assert!(result.escalation.is_none());
    assert!(result.quality_score.expect("quality") < 0.95);
    assert_eq!(
        stub.requests().len(),
        2,
        "a local_only job reached the cloud"
    );
    assert!(escalated_events(&fleet, &id).await.is_empty());
    // A local result prices what the cloud would have cost: a positive saving.
    let equivalent = result.cloud_equivalent.clone().expect("equivalent");
    assert_eq!(equivalent.counted_by, "estimate");
    assert!(equivalent.prompt_tokens > 100 && equivalent.completion_tokens > 0);
    assert!(result.savings_usd.expect("savings") > 0.0);

    // The provider now fails: the escalated job ends with its local suite, not nothing.
    let id = fleet.submit_ok(&job(MODULE)).await;
    let (result, _) = fleet.result(&id, Duration::from_secs(120)).await;
    assert_eq!(
        (result.status, result.pool, result.engine.as_str()),
        (JobStatus::Succeeded, Pool::Local, "doctest"),
        "{result:?}"
    );
    let escalation = result.escalation.clone().expect("escalation recorded");
    assert!(
        escalation
            .cloud_error
            .as_deref()
            .is_some_and(|e| e.contains("500")),
        "{escalation:?}"
    );
    assert!(result.test_file.is_some_and(|t| t.contains("add(2, 3)")));
    assert_eq!(escalated_events(&fleet, &id).await.len(), 1);
    let expected = [
        "qefleet_escalations_total{outcome=\"improved\"} 1",
        "qefleet_escalations_total{outcome=\"fell_back\"} 1",
        "qefleet_compute_usd_total{pool=\"cloud\"}",
        "qefleet_cloud_equivalent_usd_total{pool=\"cloud\"}",
    ];
    metrics_show(
        metrics_port,
        &expected,
        "escalation outcomes in the cloud worker's /metrics",
    )
    .await;
    fleet.stop().await;
}
