//! Results committed in groups (ADR 0017): many results finishing together are stored in
//! atomic batches, each exactly once, and a batch the server refuses loses nothing.

use qefleet_schemas::{ContentType, Pool};
use qefleet_shared::metrics::{sample_sum, Metrics};
use qefleet_shared::subjects::{result_subject, JOBS_STREAM, RESULTS_STREAM};
use qefleet_worker::outbox::PendingResult;
use qefleet_worker::results::{self, Batching, Published, ResultPublisher, MIN_BATCH};
use tokio::task::JoinSet;

use crate::support::*;

fn result(n: usize) -> PendingResult {
    PendingResult {
        content_type: ContentType::Json,
        payload: format!("{{\"n\":{n}}}").into_bytes().into(),
        traceparent: Some(format!(
            "00-4bf92f3577b34da6a3ce929d0e0e{n:04x}-00f067aa0ba902b7-01"
        )),
    }
}

/// Publishes results `0..n` (job ids `job-<i>`) at once and returns each one's outcome.
async fn publish_together(publisher: &ResultPublisher, n: usize) -> Vec<(usize, Published)> {
    let mut all = JoinSet::new();
    for i in 0..n {
        let publisher = publisher.clone();
        all.spawn(async move {
            let published = publisher
                .publish(&format!("job-{i}"), &result(i))
                .await
                .expect("stored or refused as a duplicate");
            (i, published)
        });
    }
    let mut out = all.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out
}

/// `count` and `sum` of `qefleet_result_commit_results` for one kind.
fn commits(metrics: &Metrics, kind: &str) -> (u64, u64) {
    let text = metrics.render();
    let value = |series: &str| sample_sum(&text, series, &[("kind", kind)]).map_or(0, |v| v as u64);
    (
        value("qefleet_result_commit_results_count"),
        value("qefleet_result_commit_results_sum"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_finishing_together_are_stored_in_atomic_batches_each_exactly_once() {
    let fleet = Fleet::start().await;
    let metrics = Metrics::new();
    let publisher =
        ResultPublisher::with_batching(&fleet.js, Batching::Always, metrics.clone(), Pool::Local);
    let outcomes = publish_together(&publisher, 200).await;
    assert!(outcomes.iter().all(|(_, p)| *p == Published::New));

    let (batches, batched) = commits(&metrics, "batch");
    let (singles, single) = commits(&metrics, "single");
    assert!(batches >= 1, "200 results at once formed no batch");
    assert!(batched >= MIN_BATCH as u64 * batches);
    assert_eq!(
        batched + single,
        200,
        "{batches} batches, {singles} singles"
    );

    // Each job has exactly its own result, with its headers, whichever way it went.
    assert_eq!(fleet.stream_messages(RESULTS_STREAM).await, 200);
    let stream = fleet.js.get_stream(RESULTS_STREAM).await.expect("stream");
    for i in [0, 57, 199] {
        let stored = stream
            .get_last_raw_message_by_subject(&result_subject(&format!("job-{i}")))
            .await
            .expect("stored");
        assert_eq!(stored.payload.as_ref(), result(i).payload.as_ref());
        let headers = stored.headers;
        assert_eq!(
            headers.get("traceparent").map(|v| v.to_string()),
            result(i).traceparent
        );
    }
    // A single publish carries the job id as its message id; a batched one its batch's
    // headers instead (documented in docs/API.md).
    for m in fleet.messages(RESULTS_STREAM).await {
        let job = m.subject.trim_start_matches("qe.results.");
        let id = m.headers.get("Nats-Msg-Id").map(|v| v.to_string());
        let batched = m.headers.get("Nats-Batch-Id").is_some()
            && m.headers.get("Nats-Batch-Sequence").is_some();
        assert!(
            id.as_deref() == Some(job) || (id.is_none() && batched),
            "{job}: {:?}",
            m.headers
        );
    }
    // A second result for a stored job is refused, batched or not.
    let again = publish_together(&publisher, 20).await;
    assert!(again.iter().all(|(_, p)| *p == Published::AlreadyThere));
    assert_eq!(fleet.stream_messages(RESULTS_STREAM).await, 200);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_holding_a_stored_result_is_refused_whole_and_its_results_go_one_by_one() {
    let fleet = Fleet::start().await;
    let metrics = Metrics::new();
    // Three results are already stored, with other payloads: jobs past the first IN_FLIGHT
    // (which go out on their own before any group forms), in different places of the
    // queue, so that at least one lands in a batch whatever order the tasks run in.
    const STORED: [usize; 3] = [27, 57, 87];
    let first = |i: usize| PendingResult {
        payload: format!("{{\"first\":{i}}}").into_bytes().into(),
        ..result(i)
    };
    for i in STORED {
        assert_eq!(
            results::publish(&fleet.js, &format!("job-{i}"), &first(i))
                .await
                .expect("stored"),
            Published::New
        );
    }
    let publisher =
        ResultPublisher::with_batching(&fleet.js, Batching::Always, metrics.clone(), Pool::Local);
    let outcomes = publish_together(&publisher, 100).await;
    for (i, published) in &outcomes {
        let expected = if STORED.contains(i) {
            Published::AlreadyThere
        } else {
            Published::New
        };
        assert_eq!(*published, expected, "job-{i}");
    }
    assert_eq!(fleet.stream_messages(RESULTS_STREAM).await, 100);
    // Nothing of the refused batch took a sequence: the stream's sequence still counts
    // completions (ADR 0001), which is what triggers consolidations.
    let mut stream = fleet.js.get_stream(RESULTS_STREAM).await.expect("stream");
    assert_eq!(stream.info().await.expect("info").state.last_sequence, 100);
    for i in STORED {
        let stored = results::stored(&fleet.js, &format!("job-{i}"))
            .await
            .expect("read");
        assert_eq!(
            stored.as_deref(),
            Some(first(i).payload.as_ref()),
            "the first result stays"
        );
    }
    let (_, batched) = commits(&metrics, "batch");
    let (_, single) = commits(&metrics, "single");
    assert_eq!(batched + single, 97, "every other result stored once");
    fleet.stop().await;
}

#[tokio::test]
async fn a_results_stream_made_before_atomic_batches_is_given_them_on_provisioning() {
    let fleet = Fleet::start().await;
    // The jobs stream too (jobs submitted together are queued in batches).
    for name in [RESULTS_STREAM, JOBS_STREAM] {
        let allows = || async {
            let mut stream = fleet.js.get_stream(name).await.expect("stream");
            stream
                .info()
                .await
                .expect("info")
                .config
                .allow_atomic_publish
        };
        assert!(allows().await, "{name} created with them");
        let mut stream = fleet.js.get_stream(name).await.expect("stream");
        let mut config = stream.info().await.expect("info").config.clone();
        config.allow_atomic_publish = false;
        fleet
            .js
            .update_stream(config)
            .await
            .expect("as an older qefleet made it");
        assert!(!allows().await);
        qefleet_shared::provision::ensure_all(&fleet.js)
            .await
            .expect("provisions");
        assert!(allows().await, "{name} switched on in place");
    }
    fleet.stop().await;
}
