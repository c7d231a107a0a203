//! Submitting jobs and getting their results.

use std::time::Duration;

use qefleet_scheduler::SchedulerArgs;
use qefleet_schemas::{codec, ContentType, ErrorCode, JobStatus, Pool, SubmitReply};
use qefleet_shared::client::submit_raw;
use qefleet_shared::messages::headers_for;
use qefleet_shared::subjects::*;
use qefleet_worker::engines::DoctestEngine;
use qefleet_worker::PoolArg;
use std::sync::Arc;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_to_result_end_to_end_over_msgpack_and_json() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let args = fleet.worker_args(PoolArg::Local);
    fleet
        .worker(args, Arc::new(DoctestEngine::probe(None).await))
        .await;
    for ct in [ContentType::MsgPack, ContentType::Json] {
        let mut spec = job(CALC);
        spec.coverage_target = Some(0.5);
        spec.metadata.insert("ticket".into(), "QE-1".into());
        let reply = fleet.submit(&spec, ct).await;
        let SubmitReply::Accepted {
            job_id,
            duplicate,
            route,
            complexity,
            ..
        } = reply
        else {
            panic!("rejected: {reply:?}");
        };
        assert!(!duplicate);
        assert_eq!(route.pool, Pool::Local);
        assert!(
            route.subject.starts_with("qe.jobs.local."),
            "{}",
            route.subject
        );
        assert_eq!(complexity.expect("analysis").functions, 2);
        let (result, result_ct) = fleet.result(&job_id, Duration::from_secs(60)).await;
        assert_eq!(result_ct, ct, "results travel in the submission's encoding");
        assert_eq!(result.status, JobStatus::Succeeded, "{:?}", result.error);
        assert_eq!(
            (result.tests_total, result.tests_passed, result.tests_failed),
            (2, 2, 0)
        );
        let line = result.line_coverage.expect("line coverage measured");
        assert!(
            line > 0.7 && line < 1.0,
            "the TypeError branch is not covered: {line}"
        );
        assert_eq!(result.coverage_target_met, Some(true));
        let mutation = result.mutation_score.expect("mutation score measured");
        assert!(mutation > 0.0 && mutation < 1.0, "{mutation}");
        let quality = result.quality_score.expect("quality computed");
        assert!(quality > 0.3 && quality < 1.0, "{quality}");
        assert!(result
            .test_file
            .as_deref()
            .unwrap_or("")
            .contains("import calc"));
        assert_eq!(
            result.metadata.get("ticket").map(String::as_str),
            Some("QE-1")
        );
        assert_eq!(result.engine, "doctest");
        assert_eq!(result.attempt, 1);
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_submissions_are_rejected_with_a_clear_error_and_nothing_is_queued() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let valid = job(CALC);
    let mut cases: Vec<(Vec<u8>, ContentType, ErrorCode, &str)> = Vec::new();
    let mut empty = valid.clone();
    empty.source = "   ".into();
    cases.push((
        codec::encode(&empty, ContentType::Json),
        ContentType::Json,
        ErrorCode::EmptySource,
        "empty",
    ));
    let mut big = valid.clone();
    big.source = "x = 1\n".repeat(200_000);
    cases.push((
        codec::encode(&big, ContentType::MsgPack),
        ContentType::MsgPack,
        ErrorCode::SourceTooLarge,
        "limit",
    ));
    let mut rust = valid.clone();
    rust.language = "rust".into();
    cases.push((
        codec::encode(&rust, ContentType::MsgPack),
        ContentType::MsgPack,
        ErrorCode::UnsupportedLanguage,
        "python",
    ));
    let mut reserved = valid.clone();
    reserved.priority = Some(9);
    cases.push((
        codec::encode(&reserved, ContentType::Json),
        ContentType::Json,
        ErrorCode::ReservedField,
        "priority",
    ));
    let mut future = serde_json::to_value(&valid).expect("json");
    future["schema_version"] = 7.into();
    cases.push((
        serde_json::to_vec(&future).expect("bytes"),
        ContentType::Json,
        ErrorCode::UnknownSchemaVersion,
        "schema_version 7",
    ));
    let mut not_utf8 = codec::encode(&valid, ContentType::Json);
    let at = not_utf8
        .windows(3)
        .position(|w| w == b"def")
        .expect("source");
    not_utf8[at] = 0xff;
    cases.push((not_utf8, ContentType::Json, ErrorCode::InvalidUtf8, "UTF-8"));
    cases.push((
        b"\xc1 not msgpack".to_vec(),
        ContentType::MsgPack,
        ErrorCode::Malformed,
        "MessagePack",
    ));
    for (payload, ct, code, needle) in cases {
        let reply = submit_raw(&fleet.client, payload, ct, Duration::from_secs(20))
            .await
            .expect("reply");
        let SubmitReply::Rejected { error, .. } = reply else {
            panic!("{code:?} accepted");
        };
        assert_eq!(error.code, code, "{}", error.message);
        assert!(
            error.message.contains(needle),
            "{code:?}: {}",
            error.message
        );
    }
    assert_eq!(
        fleet.stream_messages(JOBS_STREAM).await,
        0,
        "nothing queued"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_job_id_submitted_twice_is_one_job() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let engine = ScriptedEngine::succeeding(Duration::from_millis(10));
    let args = fleet.worker_args(PoolArg::Local);
    fleet.worker(args, Arc::new(engine.clone())).await;
    let mut spec = job(CALC);
    spec.job_id = Some("order-42".into());
    let first = fleet.submit(&spec, ContentType::MsgPack).await;
    let second = fleet.submit(&spec, ContentType::Json).await;
    assert!(
        matches!(
            first,
            SubmitReply::Accepted {
                duplicate: false,
                ..
            }
        ),
        "{first:?}"
    );
    assert!(
        matches!(
            second,
            SubmitReply::Accepted {
                duplicate: true,
                ..
            }
        ),
        "{second:?}"
    );
    fleet.result("order-42", Duration::from_secs(20)).await;
    // A later resubmission (after the result) is still the same job.
    let third = fleet.submit(&spec, ContentType::MsgPack).await;
    assert!(
        matches!(
            third,
            SubmitReply::Accepted {
                duplicate: true,
                ..
            }
        ),
        "{third:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(engine.runs(), 1);
    assert_eq!(fleet.stream_messages(RESULTS_STREAM).await, 1);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_submissions_are_queued_or_dead_lettered_with_the_reason() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let args = fleet.worker_args(PoolArg::Local);
    fleet
        .worker(args, Arc::new(ScriptedEngine::succeeding(Duration::ZERO)))
        .await;
    let mut good = job(CALC);
    good.job_id = Some("batch-1".into());
    let mut bad = job(CALC);
    bad.language = "cobol".into();
    for spec in [&good, &bad] {
        queue_submission(&fleet, spec, ContentType::Json).await;
    }
    fleet.result("batch-1", Duration::from_secs(20)).await;
    let letter = fleet
        .only_dead_letter(Duration::from_secs(10), "rejected submission dead-lettered")
        .await;
    assert_eq!(letter.subject.as_str(), "qe.dlq.submit");
    assert!(
        header(&letter, HEADER_DLQ_REASON).contains("cobol"),
        "{}",
        header(&letter, HEADER_DLQ_REASON)
    );
    assert_eq!(
        fleet.stream_messages(SUBMISSIONS_STREAM).await,
        0,
        "both consumed"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_and_forget_submission_without_an_id_gets_one_from_its_place_in_the_stream() {
    let mut fleet = Fleet::start().await;
    // Queued before any scheduler runs, so the stored message can be read back.
    let ack = queue_submission(&fleet, &job(CALC), ContentType::Json).await;
    let stored = fleet
        .js
        .get_stream(SUBMISSIONS_STREAM)
        .await
        .expect("stream")
        .get_raw_message(ack.sequence)
        .await
        .expect("the submission");
    // Every delivery of this message carries the same place, so a redelivery after a
    // scheduler died before acknowledging it is the same job, not a second one.
    let id = qefleet_scheduler::submit::queued_submission_id(
        stored.time.unix_timestamp_nanos(),
        ack.sequence,
    );
    fleet.scheduler(SchedulerArgs::default()).await;
    let args = fleet.worker_args(PoolArg::Local);
    fleet
        .worker(args, Arc::new(ScriptedEngine::succeeding(Duration::ZERO)))
        .await;
    let (result, _) = fleet.result(&id, Duration::from_secs(20)).await;
    assert_eq!(result.job_id, id);
    assert_eq!(fleet.stream_messages(RESULTS_STREAM).await, 1);
    fleet.stop().await;
}

/// Fire-and-forget submissions are handled many at once: one at a time, each waited for
/// its job's stored acknowledgement before the next began, and none could share a commit.
/// A submission without an id, on its first delivery, is new: no record is read for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_submissions_are_handled_together_and_each_queued_once() {
    use qefleet_shared::commit::Batching;

    let mut fleet = Fleet::start().await;
    // Waiting in the stream before any scheduler runs, as a batch producer leaves them.
    for _ in 0..200 {
        queue_submission(&fleet, &job(CALC), ContentType::MsgPack).await;
    }
    let mut reads = fleet
        .client
        .subscribe(format!("$JS.API.DIRECT.GET.KV_{JOB_STATE_BUCKET}.>"))
        .await
        .expect("subscribes");
    fleet.client.flush().await.expect("flush");
    let port = fleet
        .scheduler_with_metrics(SchedulerArgs {
            job_batches: Batching::Always,
            ..SchedulerArgs::default()
        })
        .await;
    submissions_handled(&fleet, Duration::from_secs(30)).await;
    assert_eq!(
        fleet.stream_messages(JOBS_STREAM).await,
        200,
        "each job queued once"
    );
    assert_eq!(fleet.stream_messages(DLQ_STREAM).await, 0, "none rejected");
    let text = http_get(port, "/metrics").await;
    let batched = qefleet_shared::metrics::sample_sum(
        &text,
        "qefleet_job_commit_jobs_sum",
        &[("kind", "batch")],
    )
    .unwrap_or(0.0);
    assert!(
        batched > 0.0,
        "no two submissions were queued together:\n{text}"
    );
    assert_eq!(
        arrivals(&mut reads).await,
        0,
        "job records read for submissions that are new"
    );
    fleet.stop().await;
}

/// A fire-and-forget submission delivered again (a scheduler took it and died before
/// acknowledging it) may have been queued already, perhaps longer ago than the stream's
/// duplicate window: its record is read, and a known job is not queued twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_fire_and_forget_submission_of_a_known_job_is_not_queued_again() {
    use async_nats::jetstream::{consumer::pull, AckKind};
    use futures_util::StreamExt;
    use qefleet_schemas::{JobPhase, JobState, RouteDecision, Strategy, SCHEMA_VERSION};

    let mut fleet = Fleet::start().await;
    let ack = queue_submission(&fleet, &job(CALC), ContentType::Json).await;
    // A scheduler that took it and died: delivered once, never acknowledged.
    let consumer = qefleet_shared::provision::ensure_consumer(
        &fleet.js,
        SUBMISSIONS_STREAM,
        pull::Config {
            durable_name: Some(SUBMISSIONS_CONSUMER.to_string()),
            filter_subject: SUBMIT_QUEUE_SUBJECT.to_string(),
            ..Default::default()
        },
    )
    .await
    .expect("consumer");
    let mut taken = consumer
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch");
    let taken = taken.next().await.expect("one").expect("message");
    let info = taken.info().expect("info");
    let id = qefleet_scheduler::submit::queued_submission_id(
        info.published.unix_timestamp_nanos(),
        ack.sequence,
    );
    // ... after it had queued the job, outside the duplicate window: only the record
    // knows it.
    let state = JobState {
        schema_version: SCHEMA_VERSION,
        job_id: id.clone(),
        phase: JobPhase::Queued,
        route: RouteDecision {
            pool: Pool::Local,
            subject: "qe.jobs.local.simple".into(),
            router: "rule".into(),
            strategy: Strategy::Balanced,
            reasons: vec![],
        },
        complexity: qefleet_scheduler::complexity::analyze(CALC)
            .expect("analyses")
            .report,
        updated_at_ms: qefleet_schemas::now_unix_ms(),
    };
    fleet
        .js
        .get_key_value(JOB_STATE_BUCKET)
        .await
        .expect("bucket")
        .put(&id, codec::encode(&state, ContentType::Json).into())
        .await
        .expect("record");
    taken
        .ack_with(AckKind::Nak(None))
        .await
        .expect("handed back");

    fleet.scheduler(SchedulerArgs::default()).await;
    submissions_handled(&fleet, Duration::from_secs(20)).await;
    assert_eq!(
        fleet.stream_messages(JOBS_STREAM).await,
        0,
        "a known job is not queued again"
    );
    fleet.stop().await;
}

/// A batch request (`qe.submit.batch`) answers each job in order, as if it had been
/// submitted alone: accepted, rejected with its reason, or a duplicate; over MessagePack
/// and JSON. The jobs are queued and run like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_submissions_is_answered_job_by_job_in_order() {
    use qefleet_schemas::SubmitBatchReply;
    use qefleet_shared::client::submit_batch;

    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let mut chosen = job(CALC);
    chosen.job_id = Some("bb-1".into());
    let mut cobol = job(CALC);
    cobol.language = "cobol".into();
    let jobs = vec![chosen.clone(), job(CALC), cobol, chosen];
    let reply = submit_batch(
        &fleet.client,
        jobs,
        ContentType::MsgPack,
        Duration::from_secs(10),
    )
    .await
    .expect("a reply");
    let SubmitBatchReply::Answered { replies, .. } = reply else {
        panic!("the batch was rejected: {reply:?}")
    };
    assert_eq!(replies.len(), 4, "{replies:?}");
    let accepted = |r: &SubmitReply| match r {
        SubmitReply::Accepted {
            job_id, duplicate, ..
        } => (job_id.clone(), *duplicate),
        other => panic!("not accepted: {other:?}"),
    };
    let (first, second, last) = (
        accepted(&replies[0]),
        accepted(&replies[1]),
        accepted(&replies[3]),
    );
    assert_eq!((first.0.as_str(), last.0.as_str()), ("bb-1", "bb-1"));
    assert!(
        first.1 != last.1,
        "one of the two bb-1 is the job, the other its duplicate: {replies:?}"
    );
    assert!(!second.1 && second.0 != "bb-1", "{second:?}");
    match &replies[2] {
        SubmitReply::Rejected { error, .. } => {
            assert_eq!(error.code, ErrorCode::UnsupportedLanguage);
            assert!(error.message.contains("cobol"), "{}", error.message);
        }
        other => panic!("cobol accepted: {other:?}"),
    }
    assert_eq!(fleet.stream_messages(JOBS_STREAM).await, 2, "two new jobs");

    // JSON, and the jobs run like any other.
    let mut more = job(CALC);
    more.job_id = Some("bb-2".into());
    let reply = submit_batch(
        &fleet.client,
        vec![more],
        ContentType::Json,
        Duration::from_secs(10),
    )
    .await
    .expect("a reply");
    assert!(
        matches!(&reply, SubmitBatchReply::Answered { replies, .. }
            if matches!(&replies[..], [SubmitReply::Accepted { duplicate: false, .. }])),
        "{reply:?}"
    );
    let args = fleet.worker_args(PoolArg::Local);
    fleet
        .worker(args, Arc::new(ScriptedEngine::succeeding(Duration::ZERO)))
        .await;
    for id in ["bb-1", "bb-2", second.0.as_str()] {
        let (result, _) = fleet.result(id, Duration::from_secs(20)).await;
        assert_eq!(result.status, JobStatus::Succeeded, "{id}");
    }
    assert_eq!(fleet.stream_messages(RESULTS_STREAM).await, 3);
    fleet.stop().await;
}

/// A batch that cannot be read, holds no job or more than 256 is rejected whole with
/// the reason, and nothing of it is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_be_taken_is_rejected_whole_and_nothing_is_queued() {
    use qefleet_schemas::{SubmitBatch, SubmitBatchReply};
    use qefleet_shared::client::submit_batch;

    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let rejected = |reply: SubmitBatchReply| match reply {
        SubmitBatchReply::Rejected { error, .. } => error,
        other => panic!("not rejected: {other:?}"),
    };
    let too_many = vec![job(CALC); SubmitBatch::MAX_JOBS + 1];
    let error = rejected(
        submit_batch(
            &fleet.client,
            too_many,
            ContentType::MsgPack,
            Duration::from_secs(10),
        )
        .await
        .expect("a reply"),
    );
    assert_eq!(error.code, ErrorCode::InvalidField);
    assert!(error.message.contains("257"), "{}", error.message);
    let error = rejected(
        submit_batch(
            &fleet.client,
            vec![],
            ContentType::Json,
            Duration::from_secs(10),
        )
        .await
        .expect("a reply"),
    );
    assert_eq!(error.code, ErrorCode::InvalidField, "{}", error.message);
    for (body, code) in [
        (
            r#"{"schema_version": 1, "jobs": "calc"}"#,
            ErrorCode::Malformed,
        ),
        (r#"{"jobs": []}"#, ErrorCode::UnknownSchemaVersion),
    ] {
        let reply = fleet
            .client
            .request_with_headers(
                SUBMIT_BATCH_SUBJECT,
                headers_for(ContentType::Json),
                body.into(),
            )
            .await
            .expect("a reply");
        let (reply, ct) = qefleet_shared::messages::decode::<SubmitBatchReply>(
            reply.headers.as_ref(),
            &reply.payload,
        )
        .expect("decodes");
        assert_eq!(ct, ContentType::Json, "answered in the request's encoding");
        assert_eq!(rejected(reply).code, code, "{body}");
    }
    assert_eq!(
        fleet.stream_messages(JOBS_STREAM).await,
        0,
        "nothing queued"
    );
    fleet.stop().await;
}

/// Every job carries its module's source, so a large module split into a job per
/// function can outgrow one NATS message: `submit_many` sends as many batch requests as
/// fit the server's max_payload, and a batch that does not fit says so (it used to be
/// reported as no scheduler answering).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_split_into_many_jobs_goes_in_as_many_batches_as_fit() {
    use qefleet_shared::client::{submit_batch, submit_many, ClientError};

    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    // 12 functions in a module of about 480 KB (the scheduler takes up to 512 KiB): 5.8 MB
    // as 12 jobs, above the embedded server's max_payload of 4 MiB (1 MiB by default).
    let padding = "x".repeat(40_000);
    let source: String = (0..12)
        .map(|i| format!("def f{i}(x):\n    \"\"\"{padding}\"\"\"\n    return x + {i}\n\n"))
        .collect();
    let jobs: Vec<_> = (0..12)
        .map(|i| {
            let mut spec = job(&source);
            spec.job_id = Some(format!("big-f{i}"));
            spec.target_function = Some(format!("f{i}"));
            spec
        })
        .collect();
    let refused = submit_batch(
        &fleet.client,
        jobs.clone(),
        ContentType::MsgPack,
        Duration::from_secs(5),
    )
    .await
    .expect_err("too large for one message");
    assert!(
        matches!(refused, ClientError::TooLarge { max, .. } if max > 0)
            && refused.to_string().contains("max_payload"),
        "{refused}"
    );
    // Served before the requests are counted: a subscriber on the subject (the counter)
    // keeps the server from answering `no responders` while the scheduler subscribes.
    serving_batches(&fleet).await;
    let mut batches = fleet
        .client
        .subscribe(SUBMIT_BATCH_SUBJECT)
        .await
        .expect("subscribes");
    fleet.client.flush().await.expect("flush");
    let replies = submit_many(
        &fleet.client,
        jobs,
        ContentType::MsgPack,
        Duration::from_secs(5),
    )
    .await
    .expect("submitted");
    assert_eq!(replies.len(), 12);
    for (i, reply) in replies.iter().enumerate() {
        assert!(
            matches!(reply, SubmitReply::Accepted { job_id, duplicate: false, .. } if *job_id == format!("big-f{i}")),
            "{reply:?}"
        );
    }
    assert_eq!(arrivals(&mut batches).await, 2, "two batch requests");
    assert_eq!(fleet.stream_messages(JOBS_STREAM).await, 1 + 12);
    fleet.stop().await;
}

/// With no scheduler serving, a submission fails after the wait with a message that
/// names the subject and says what to check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_nobody_serves_says_which_subject_went_unanswered() {
    let fleet = Fleet::start().await;
    let wait = Duration::from_millis(200);
    let single =
        qefleet_shared::client::submit(&fleet.client, &job(CALC), ContentType::MsgPack, wait)
            .await
            .expect_err("no scheduler");
    let batch = qefleet_shared::client::submit_batch(
        &fleet.client,
        vec![job(CALC)],
        ContentType::MsgPack,
        wait,
    )
    .await
    .expect_err("no scheduler");
    let (single, batch) = (single.to_string(), batch.to_string());
    assert!(
        single.contains("no scheduler answered on qe.submit:") && single.contains("qefleet up"),
        "{single}"
    );
    assert!(
        batch.contains("qe.submit.batch") && batch.contains("serves batch requests"),
        "{batch}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_deadline_is_not_run_and_fails_with_that_reason() {
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let mut spec = job(CALC);
    spec.deadline_unix_ms = Some(qefleet_schemas::now_unix_ms() + 300);
    let job_id = fleet.submit_ok(&spec).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let engine = ScriptedEngine::succeeding(Duration::ZERO);
    let args = fleet.worker_args(PoolArg::Local);
    fleet.worker(args, Arc::new(engine.clone())).await;
    let (result, _) = fleet.result(&job_id, Duration::from_secs(20)).await;
    assert_eq!(result.status, JobStatus::Expired);
    assert!(
        result.error.as_deref().unwrap_or("").contains("deadline"),
        "{:?}",
        result.error
    );
    assert_eq!(engine.runs(), 0, "an expired job is never run");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_submitted_together_are_queued_in_atomic_batches_each_once() {
    use qefleet_shared::commit::Batching;

    let mut fleet = Fleet::start().await;
    let port = fleet
        .scheduler_with_metrics(SchedulerArgs {
            job_batches: Batching::Always,
            ..SchedulerArgs::default()
        })
        .await;
    // Jobs the stream has seen, whose records are gone (as after an OS crash, ADR 0016):
    // only the stream's de-duplication knows them, and a batch holding one is refused
    // whole.
    const SEEN: [u32; 3] = [27, 57, 87];
    let records = fleet
        .js
        .get_key_value(JOB_STATE_BUCKET)
        .await
        .expect("bucket");
    for n in SEEN {
        let mut seen = job(CALC);
        seen.job_id = Some(format!("b-{n}"));
        fleet.submit_ok(&seen).await;
        records
            .delete(format!("b-{n}"))
            .await
            .expect("record deleted");
    }

    // 200 new jobs at once: most wait for a commit slot and go in batches.
    for (n, duplicate) in submit_together(&fleet, "f", 200).await {
        assert!(!duplicate, "job f-{n}");
    }
    assert_eq!(
        fleet.stream_messages(JOBS_STREAM).await,
        203,
        "each job queued once"
    );
    let text = http_get(port, "/metrics").await;
    let batched = qefleet_shared::metrics::sample_sum(
        &text,
        "qefleet_job_commit_jobs_sum",
        &[("kind", "batch")],
    )
    .unwrap_or(0.0);
    assert!(batched > 0.0, "no job was queued in a batch:\n{text}");

    // 100 more, three of them seen: the batches holding those are refused, their jobs go
    // one by one, and just the three are answered as duplicates.
    for (n, duplicate) in submit_together(&fleet, "b", 100).await {
        assert_eq!(duplicate, SEEN.contains(&n), "job b-{n}");
    }
    assert_eq!(
        fleet.stream_messages(JOBS_STREAM).await,
        300,
        "each job queued once"
    );
    fleet.stop().await;
}

/// Routing reads the live workers from the `qe_workers` bucket, whose keys the server
/// lists through a consumer it creates for each read. Submissions that find the counts
/// stale at the same moment share one read (the others route by the last counts); each
/// used to make its own, a burst of consumers every second under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_that_find_the_live_worker_counts_stale_share_one_read() {
    use futures_util::StreamExt;
    use qefleet_scheduler::liveness::Liveness;
    let fleet = Fleet::start().await;
    let bucket = fleet
        .js
        .get_key_value(WORKERS_BUCKET)
        .await
        .expect("the workers bucket");
    bucket
        .put("local.w1", "{}".into())
        .await
        .expect("a live worker");
    let mut api = fleet
        .client
        .subscribe("$JS.API.CONSUMER.>")
        .await
        .expect("subscribes");
    fleet.client.flush().await.expect("flush");
    // Counts that are stale as soon as they are read: every call wants a read.
    let liveness = Arc::new(Liveness::new(bucket, Duration::ZERO));
    for wave in ["the first counts", "stale counts"] {
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let liveness = liveness.clone();
                tokio::spawn(async move { liveness.live_pools().await })
            })
            .collect();
        for call in calls {
            let pools = call.await.expect("no panic");
            assert_eq!(pools.0.get(&Pool::Local), Some(&1), "{wave}");
        }
    }
    let mut reads = 0;
    while let Ok(Some(request)) = tokio::time::timeout(Duration::from_millis(500), api.next()).await
    {
        let subject = request.subject.as_str();
        if subject.contains(".CREATE.") && subject.contains(WORKERS_BUCKET) {
            reads += 1;
        }
    }
    // One read per wave, a few more where a call came after a read had ended; one per
    // call (100) before.
    assert!(
        (2..10).contains(&reads),
        "{reads} reads of the workers bucket"
    );
    fleet.stop().await;
}

/// A worker with nothing to do keeps one pull request waiting at the server (renewed as
/// it expires) instead of asking again and again, and jobs arriving one at a time go to
/// that request as they come, not a request each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_waits_at_the_server_instead_of_polling() {
    use futures_util::StreamExt;
    let mut fleet = Fleet::start().await;
    fleet.scheduler(SchedulerArgs::default()).await;
    let mut args = fleet.worker_args(PoolArg::Local);
    args.concurrency = 16;
    fleet
        .worker(args, Arc::new(ScriptedEngine::succeeding(Duration::ZERO)))
        .await;
    // Served: the worker is pulling.
    let job_id = fleet.submit_ok(&job(CALC)).await;
    fleet.result(&job_id, Duration::from_secs(30)).await;
    let mut pulls = fleet
        .client
        .subscribe(format!("$JS.API.CONSUMER.MSG.NEXT.{JOBS_STREAM}.>"))
        .await
        .expect("subscribes");
    fleet.client.flush().await.expect("flush");
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut requests = 0;
    while let Ok(Some(_)) = tokio::time::timeout_at(until, pulls.next()).await {
        requests += 1;
    }
    // A waiting request expires and is renewed about once a second.
    assert!(
        requests <= 8,
        "{requests} pull requests in 3 s from an idle worker"
    );
    // Jobs arriving one at a time are delivered to the waiting request (for as many
    // jobs as the worker can start) as they come, not one request each.
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(fleet.submit_ok(&job(CALC)).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in &ids {
        fleet.result(id, Duration::from_secs(30)).await;
    }
    let mut requests = 0;
    while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_millis(200), pulls.next())
        .await
        .map(Ok::<_, ()>)
    {
        requests += 1;
    }
    assert!(
        requests <= 12,
        "{requests} pull requests for 40 jobs arriving one at a time"
    );
    fleet.stop().await;
}

/// Submits jobs `<prefix>-0..n` at once; returns, in order, whether each was answered as a
/// duplicate.
async fn submit_together(fleet: &Fleet, prefix: &str, n: u32) -> Vec<(u32, bool)> {
    let mut all = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = fleet.client.clone();
        let id = format!("{prefix}-{i}");
        all.spawn(async move {
            let mut spec = job(CALC);
            spec.job_id = Some(id);
            let reply = qefleet_shared::client::submit(
                &client,
                &spec,
                ContentType::MsgPack,
                Duration::from_secs(5),
            )
            .await
            .expect("a reply");
            match reply {
                SubmitReply::Accepted { duplicate, .. } => (i, duplicate),
                other => panic!("job {i}: {other:?}"),
            }
        });
    }
    let mut out = all.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out
}

/// Publishes a fire-and-forget submission and waits until JetStream has stored it.
async fn queue_submission(
    fleet: &Fleet,
    spec: &qefleet_schemas::JobSpec,
    ct: ContentType,
) -> async_nats::jetstream::publish::PublishAck {
    fleet
        .js
        .publish_with_headers(
            SUBMIT_QUEUE_SUBJECT,
            headers_for(ct),
            codec::encode(spec, ct).into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored")
}

/// Waits until the schedulers have handled and acknowledged every fire-and-forget
/// submission, for up to `within`.
async fn submissions_handled(fleet: &Fleet, within: Duration) {
    let until = std::time::Instant::now() + within;
    while fleet.stream_messages(SUBMISSIONS_STREAM).await > 0 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        fleet.stream_messages(SUBMISSIONS_STREAM).await,
        0,
        "every submission handled and acknowledged"
    );
}

/// Waits until a scheduler answers batch requests (one job, queued).
pub(crate) async fn serving_batches(fleet: &Fleet) {
    let reply = qefleet_shared::client::submit_batch(
        &fleet.client,
        vec![job(CALC)],
        ContentType::MsgPack,
        Duration::from_secs(10),
    )
    .await
    .expect("a scheduler serves batches");
    assert!(
        matches!(reply, qefleet_schemas::SubmitBatchReply::Answered { .. }),
        "{reply:?}"
    );
}
