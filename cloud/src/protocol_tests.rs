//! Providers against a local HTTP server that speaks each protocol (the stand-in the
//! project allows for paid APIs): success with usage, 429 with retry-after, 529/503, 500,
//! timeouts, malformed JSON, cut-off bodies, refusals, the breaker and the fallback chain.

use std::time::{Duration, Instant};

use qefleet_shared::retry::RetryPolicy;
use serde_json::json;

use crate::stub::{anthropic_ok, openai_ok, status, Reply, Stub};
use crate::*;

fn config(name: &str, protocol: Protocol, url: &str) -> ProviderConfig {
    let mut c = ProviderConfig::new(name, protocol, url, "test-model");
    c.key = Some(Secret::new("sk-test-SECRET", "test"));
    c.timeout = Duration::from_millis(500);
    c.attempts = 3;
    c.retry = RetryPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        multiplier: 2.0,
    };
    c.price = Price {
        input_per_mtok: 3.0,
        cached_input_per_mtok: Some(0.3),
        output_per_mtok: 15.0,
        effective: "2026-11-01".into(),
    };
    c
}

fn request() -> ChatRequest {
    ChatRequest {
        system: "You write tests.".into(),
        user: "def f(): pass".into(),
        max_tokens: 512,
        temperature: 0.0,
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

#[tokio::test]
async fn anthropic_messages_with_usage_and_cost() {
    let stub = Stub::start(vec![anthropic_ok("```python\nx\n```")]).await;
    let p = Provider::new(config("anthropic", Protocol::Anthropic, &stub.url)).expect("provider");
    let r = p.chat(&request(), soon()).await.expect("answer");
    assert_eq!(r.text, "```python\nx\n```");
    assert_eq!(
        r.usage,
        Usage {
            input: 1200,
            cached: 0,
            output: 300
        }
    );
    assert!((r.cost_usd - (1200.0 * 3.0 + 300.0 * 15.0) / 1e6).abs() < 1e-12);
    let seen = stub.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/messages");
    let head = seen[0].head.to_ascii_lowercase();
    assert!(
        head.contains("x-api-key: sk-test-secret")
            && head.contains("anthropic-version: 2023-06-01")
    );
    assert_eq!(seen[0].body["system"], "You write tests.");
    assert_eq!(seen[0].body["messages"][0]["role"], "user");
    assert_eq!(seen[0].body["model"], "test-model");
}

#[tokio::test]
async fn prompt_cache_reads_are_billed_at_the_cached_price() {
    let anthropic = Reply::Status(
        200,
        vec![],
        serde_json::json!({"content": [{"type": "text", "text": "x"}],
            "usage": {"input_tokens": 100, "cache_creation_input_tokens": 50,
                      "cache_read_input_tokens": 1000, "output_tokens": 10}})
        .to_string(),
    );
    let openai = Reply::Status(
        200,
        vec![],
        serde_json::json!({"choices": [{"message": {"content": "x"}}],
            "usage": {"prompt_tokens": 1150, "completion_tokens": 10,
                      "prompt_tokens_details": {"cached_tokens": 1000}}})
        .to_string(),
    );
    let stub = Stub::start(vec![anthropic, openai]).await;
    for protocol in [Protocol::Anthropic, Protocol::OpenAi] {
        let p = Provider::new(config("p", protocol, &stub.url)).expect("provider");
        let r = p.chat(&request(), soon()).await.expect("answer");
        assert_eq!(
            r.usage,
            Usage {
                input: 150,
                cached: 1000,
                output: 10
            },
            "{protocol:?}"
        );
        let want = (150.0 * 3.0 + 1000.0 * 0.3 + 10.0 * 15.0) / 1e6;
        assert!((r.cost_usd - want).abs() < 1e-12, "{}", r.cost_usd);
    }
}

#[tokio::test]
async fn openai_compatible_chat_completions() {
    let stub = Stub::start(vec![openai_ok("hello")]).await;
    let p = Provider::new(config("vllm", Protocol::OpenAi, &stub.url)).expect("provider");
    let r = p.chat(&request(), soon()).await.expect("answer");
    assert_eq!(
        (r.text.as_str(), r.usage),
        (
            "hello",
            Usage {
                input: 1000,
                cached: 0,
                output: 200
            }
        )
    );
    let seen = stub.requests();
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert!(seen[0]
        .head
        .to_ascii_lowercase()
        .contains("authorization: bearer sk-test-secret"));
    assert_eq!(seen[0].body["messages"][0]["role"], "system");
    assert_eq!(seen[0].body["messages"][1]["content"], "def f(): pass");
}

#[tokio::test]
async fn a_429_is_retried_after_the_servers_retry_after() {
    let stub = Stub::start(vec![
        Reply::Status(
            429,
            vec![("retry-after", "1".into())],
            json!({"error": {"message": "slow down"}}).to_string(),
        ),
        anthropic_ok("ok"),
    ])
    .await;
    let p = Provider::new(config("anthropic", Protocol::Anthropic, &stub.url)).expect("provider");
    let started = Instant::now();
    let r = p
        .chat(&request(), soon())
        .await
        .expect("answer after the wait");
    assert_eq!(r.text, "ok");
    assert_eq!(stub.requests().len(), 2);
    // The backoff alone would have waited 10-20 ms; the server asked for a second.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn overload_server_errors_timeouts_malformed_and_cut_off_bodies_are_retried() {
    for (name, first) in [
        ("529", status(529)),
        ("503", status(503)),
        ("500", status(500)),
        ("timeout", Reply::Hang),
        (
            "malformed",
            Reply::Status(200, vec![], "{\"content\": [ broken".into()),
        ),
        (
            "no content",
            Reply::Status(200, vec![], "{\"id\": 1}".into()),
        ),
        ("cut off", Reply::CutOff("{\"content\": [".into())),
    ] {
        let stub = Stub::start(vec![first, anthropic_ok("ok")]).await;
        let p =
            Provider::new(config("anthropic", Protocol::Anthropic, &stub.url)).expect("provider");
        let r = p.chat(&request(), soon()).await;
        assert_eq!(r.map(|r| r.text), Ok("ok".to_string()), "{name}");
        assert_eq!(stub.requests().len(), 2, "{name}");
        assert_eq!(p.breaker_state(), BreakerState::Closed, "{name}");
    }
}

#[tokio::test]
async fn retries_end_with_the_last_reason_and_refusals_are_not_retried() {
    let stub = Stub::start(vec![status(500), status(500), status(500), status(500)]).await;
    let p = Provider::new(config("anthropic", Protocol::Anthropic, &stub.url)).expect("provider");
    let err = p.chat(&request(), soon()).await.expect_err("all 500");
    assert!(
        matches!(&err, CloudError::Transient(m) if m.contains("server error (500): scripted 500") && m.contains("after 3 attempts")),
        "{err:?}"
    );
    assert_eq!(stub.requests().len(), 3);

    let stub = Stub::start(vec![status(401), anthropic_ok("never")]).await;
    let p = Provider::new(config("anthropic", Protocol::Anthropic, &stub.url)).expect("provider");
    let err = p.chat(&request(), soon()).await.expect_err("401");
    assert!(
        matches!(&err, CloudError::Refused(m) if m.contains("refused (401): scripted 401")),
        "{err:?}"
    );
    assert_eq!(stub.requests().len(), 1);
    assert_eq!(p.breaker_state(), BreakerState::Closed);
    assert!(!err.to_string().contains("sk-test-SECRET"));
}

#[tokio::test]
async fn an_open_breaker_stops_calls_until_its_probe_succeeds() {
    let stub = Stub::start(vec![
        status(500),
        status(500),
        status(500),
        openai_ok("back"),
    ])
    .await;
    let mut c = config("vllm", Protocol::OpenAi, &stub.url);
    c.breaker = BreakerSettings {
        failures: 3,
        window: Duration::from_secs(60),
        cool_down: Duration::from_millis(300),
    };
    let p = Provider::new(c).expect("provider");
    assert!(p.chat(&request(), soon()).await.is_err());
    assert_eq!(p.breaker_state(), BreakerState::Open);
    let err = p.chat(&request(), soon()).await.expect_err("open");
    assert!(matches!(err, CloudError::BreakerOpen(_)), "{err:?}");
    assert_eq!(stub.requests().len(), 3, "an open breaker sends nothing");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(p.breaker_state(), BreakerState::HalfOpen);
    let r = p
        .chat(&request(), soon())
        .await
        .expect("the probe succeeds");
    assert_eq!(r.text, "back");
    assert_eq!(p.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn the_chain_falls_back_to_the_next_provider() {
    let down = Stub::start(vec![status(529), status(529), status(529)]).await;
    let up = Stub::start(vec![openai_ok("from the second")]).await;
    let chain = FallbackChain::new(vec![
        Provider::new(config("anthropic", Protocol::Anthropic, &down.url)).expect("a"),
        Provider::new(config("openai", Protocol::OpenAi, &up.url)).expect("b"),
    ])
    .expect("chain");
    let r = chain.chat(&request(), soon()).await.expect("fallback");
    assert_eq!(
        (r.provider.as_str(), r.text.as_str()),
        ("openai", "from the second")
    );
    assert_eq!(down.requests().len(), 3);

    let nobody = FallbackChain::new(vec![Provider::new(config(
        "a",
        Protocol::OpenAi,
        &down.url,
    ))
    .expect("a")])
    .expect("chain");
    let err = nobody
        .chat(&request(), soon())
        .await
        .expect_err("exhausted");
    assert!(
        err.to_string()
            .starts_with("no cloud provider answered: a: "),
        "{err}"
    );
}

#[test]
fn keys_are_never_printed() {
    let c = config("anthropic", Protocol::Anthropic, "http://127.0.0.1:1");
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("sk-test-SECRET") && shown.contains("redacted"),
        "{shown}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("key");
    std::fs::write(&file, "sk-from-file\n").expect("write");
    let key = Secret::from_file(&file).expect("key");
    assert!(!format!("{key:?}").contains("sk-from-file"));
    assert!(
        matches!(Secret::from_env("QEFLEET_TEST_NO_SUCH_KEY"), Err(CloudError::Config(m)) if m.contains("QEFLEET_TEST_NO_SUCH_KEY is not set"))
    );
}
