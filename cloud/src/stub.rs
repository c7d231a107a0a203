//! A local HTTP server that speaks the providers' protocols from a script of replies and
//! records every request: the stand-in for paid APIs in tests (the project allows one for
//! remote APIs only). Not used by the fleet itself.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16, Vec<(&'static str, String)>, String),
    /// Never answers (the client's timeout ends it).
    Hang,
    /// Promises more body than it sends, then closes.
    CutOff(String),
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    /// Request line and headers as received.
    pub head: String,
    pub body: Value,
}

#[derive(Debug)]
pub struct Stub {
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Stub {
    /// Serves `replies` in order, one per request (then 500s).
    pub async fn start(replies: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (seen, replies) = (seen.clone(), replies.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    seen.lock()
                        .expect("lock")
                        .push(Recorded { path, head, body });
                    let reply = replies
                        .lock()
                        .expect("lock")
                        .pop_front()
                        .unwrap_or(Reply::Status(
                            500,
                            vec![],
                            "{\"error\":\"no reply scripted\"}".into(),
                        ));
                    let response = match reply {
                        Reply::Status(code, headers, body) => {
                            let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
                            format!("HTTP/1.1 {code} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}", body.len())
                        }
                        Reply::Hang => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        Reply::CutOff(body) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len() + 100
                        ),
                    };
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { url, requests }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }
}

/// A successful Messages API answer (1200 input, 300 output tokens).
pub fn anthropic_ok(text: &str) -> Reply {
    Reply::Status(
        200,
        vec![],
        json!({"id": "msg_1", "type": "message", "content": [{"type": "text", "text": text}],
               "usage": {"input_tokens": 1200, "output_tokens": 300}})
        .to_string(),
    )
}

/// A successful chat-completions answer (1000 prompt, 200 completion tokens).
pub fn openai_ok(text: &str) -> Reply {
    Reply::Status(
        200,
        vec![],
        json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
               "usage": {"prompt_tokens": 1000, "completion_tokens": 200}})
        .to_string(),
    )
}

/// An error status with a provider-style error body.
pub fn status(code: u16) -> Reply {
    Reply::Status(
        code,
        vec![],
        json!({"error": {"message": format!("scripted {code}")}}).to_string(),
    )
}
