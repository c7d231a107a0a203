//! A local, durable outbox for results: a result is written here (and fsynced) before it
//! is published, and removed only once JetStream has stored it. A result computed while
//! NATS is unreachable is published when it comes back; nothing computed is lost.

use std::path::Path;

use qefleet_schemas::ContentType;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot open the result outbox at {path}: {detail}. Another worker may be using it: give each worker its own --outbox-dir")]
    Open { path: String, detail: String },
    #[error("result outbox write failed: {0}")]
    Write(String),
}

/// A result waiting to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingResult {
    pub content_type: ContentType,
    /// Shared, so that the publisher's copies (queued, batched) cost no copying.
    pub payload: bytes::Bytes,
    /// The `traceparent` the result is published with (kept so a result published from
    /// the outbox after an outage stays in its job's trace).
    pub traceparent: Option<String>,
}

/// Outbox value layout: one tag byte (bit 0: JSON rather than MessagePack; bit 1: a
/// traceparent follows, as one length byte and its ASCII), then the payload. Values
/// written before traces existed (tag 0 or 1) read the same.
const TAG_JSON: u8 = 1;
const TAG_TRACE: u8 = 2;

#[derive(Debug, Clone)]
pub struct Outbox {
    db: sled::Db,
}

impl Outbox {
    pub fn open(path: &Path) -> Result<Self, OutboxError> {
        let db = qefleet_memory::store::open_db(path, qefleet_memory::store::LOCK_WAIT).map_err(
            |e| OutboxError::Open {
                path: path.display().to_string(),
                detail: e.to_string(),
            },
        )?;
        Ok(Self { db })
    }

    /// Stores a result durably (flushed to disk before returning).
    pub async fn put(&self, job_id: &str, result: &PendingResult) -> Result<(), OutboxError> {
        let mut value = Vec::with_capacity(result.payload.len() + 64);
        let trace = result
            .traceparent
            .as_deref()
            .filter(|t| t.len() <= usize::from(u8::MAX));
        let mut tag = match result.content_type {
            ContentType::MsgPack => 0,
            ContentType::Json => TAG_JSON,
        };
        if trace.is_some() {
            tag |= TAG_TRACE;
        }
        value.push(tag);
        if let Some(trace) = trace {
            value.push(trace.len() as u8);
            value.extend_from_slice(trace.as_bytes());
        }
        value.extend_from_slice(&result.payload);
        self.db
            .insert(job_id.as_bytes(), value)
            .map_err(|e| OutboxError::Write(e.to_string()))?;
        // sled 0.34's flush_async deadlocks under concurrent callers (spacejam/sled#1308,
        // fixed only on its unreleased main branch): flush synchronously off the runtime.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| OutboxError::Write(e.to_string()))?
            .map_err(|e| OutboxError::Write(e.to_string()))?;
        Ok(())
    }

    pub fn get(&self, job_id: &str) -> Option<PendingResult> {
        self.db
            .get(job_id.as_bytes())
            .ok()
            .flatten()
            .and_then(|v| decode(&v))
    }

    /// Removes a published result; true when this call removed it (so of two callers
    /// racing on one result, exactly one gets true).
    pub fn remove(&self, job_id: &str) -> bool {
        match self.db.remove(job_id.as_bytes()) {
            Ok(removed) => removed.is_some(),
            Err(e) => {
                tracing::warn!(job_id, error = %e, "cannot remove published result from outbox");
                false
            }
        }
    }

    /// Every pending result, oldest key order.
    pub fn pending(&self) -> Vec<(String, PendingResult)> {
        self.db
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| Some((String::from_utf8(k.to_vec()).ok()?, decode(&v)?)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.db.len()
    }

    pub fn is_empty(&self) -> bool {
        self.db.is_empty()
    }
}

fn decode(value: &[u8]) -> Option<PendingResult> {
    let (tag, mut payload) = value.split_first()?;
    let content_type = if tag & TAG_JSON != 0 {
        ContentType::Json
    } else {
        ContentType::MsgPack
    };
    let mut traceparent = None;
    if tag & TAG_TRACE != 0 {
        let (len, rest) = payload.split_first()?;
        let len = usize::from(*len);
        traceparent = Some(String::from_utf8(rest.get(..len)?.to_vec()).ok()?);
        payload = &rest[len..];
    }
    Some(PendingResult {
        content_type,
        payload: bytes::Bytes::copy_from_slice(payload),
        traceparent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_concurrent_puts_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Outbox::open(dir.path()).expect("open");
        let mut puts = tokio::task::JoinSet::new();
        for n in 0..200 {
            let outbox = outbox.clone();
            puts.spawn(async move {
                let result = PendingResult {
                    content_type: ContentType::MsgPack,
                    payload: vec![n as u8; 512].into(),
                    traceparent: None,
                };
                outbox.put(&format!("job-{n}"), &result).await
            });
        }
        let all = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while let Some(done) = puts.join_next().await {
                done.expect("task").expect("put");
            }
        })
        .await;
        assert!(all.is_ok(), "concurrent puts hung");
        assert_eq!(outbox.len(), 200);
    }

    #[tokio::test]
    async fn results_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let result = PendingResult {
            content_type: ContentType::Json,
            payload: bytes::Bytes::from_static(b"{}"),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        };
        let untraced = PendingResult {
            content_type: ContentType::MsgPack,
            payload: bytes::Bytes::from_static(&[0x80]),
            traceparent: None,
        };
        {
            let outbox = Outbox::open(dir.path()).expect("open");
            outbox.put("job-1", &result).await.expect("put");
            outbox.put("job-2", &untraced).await.expect("put");
            // A value written before traces existed: tag 1 (JSON), then the payload.
            outbox
                .db
                .insert("job-3", b"\x01{}".to_vec())
                .expect("insert");
        }
        let outbox = Outbox::open(dir.path()).expect("reopen");
        assert_eq!(outbox.get("job-1"), Some(result.clone()));
        assert_eq!(outbox.get("job-2"), Some(untraced.clone()));
        let old = PendingResult {
            content_type: ContentType::Json,
            payload: bytes::Bytes::from_static(b"{}"),
            traceparent: None,
        };
        assert_eq!(outbox.get("job-3"), Some(old));
        assert!(outbox.remove("job-2") && outbox.remove("job-3"));
        assert_eq!(outbox.pending(), vec![("job-1".to_string(), result)]);
        assert!(outbox.remove("job-1"), "removed by this call");
        assert!(!outbox.remove("job-1"), "a second remover gets nothing");
        assert!(outbox.is_empty());
    }
}
