//! Where user code runs: a child process with CPU, memory, file-size and process-count
//! limits, its own session (so a timeout kills everything it started), an unprivileged
//! user when the worker runs as root, no network when the host allows a fresh network
//! namespace, private `/tmp`, `/var/tmp` and `/dev/shm` when it allows a mount namespace,
//! a cap on captured output, and a wall-clock limit.
//!
//! Every execution of submitted code (importing it, running tests, running mutants) goes
//! through [`Sandbox::run`].

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::Notify;

const LAUNCHER: &str = include_str!("launch.py");
const LAUNCHER_FILE: &str = ".qefleet_launch.py";

/// Resource limits of one sandboxed run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_mb: u64,
    pub processes: u64,
    pub file_size_mb: u64,
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: 2048,
            processes: 64,
            file_size_mb: 64,
            output_bytes: 1024 * 1024,
        }
    }
}

/// How the network is cut off, decided once by probing the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// `unshare --net`: a namespace with only a loopback device that is down.
    Namespace,
    /// `unshare --net --map-root-user`: the same for an unprivileged worker.
    UserNamespace,
    /// The host allows neither; code can reach the network (logged at start).
    Unrestricted,
}

/// `unshare` flags for a network mode, with a mount namespace when `mount` (util-linux
/// makes its mounts private, so nothing mounted inside reaches the host).
fn unshare_args(network: Network, mount: bool) -> Vec<&'static str> {
    let mut args = vec!["--net"];
    if mount {
        args.push("--mount");
    }
    if network == Network::UserNamespace {
        args.push("--map-root-user");
    }
    args
}

/// How a sandboxed run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited(Option<i32>),
    /// Killed at the wall-clock limit.
    TimedOut,
    /// Killed for printing more than the output cap.
    OutputCapped,
}

#[derive(Debug)]
pub struct Finished {
    pub ending: Ending,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.ending == Ending::Exited(Some(0))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot prepare the sandbox in {dir}: {source}")]
    Prepare {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
}

/// Runs commands under limits.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub python: PathBuf,
    pub limits: Limits,
    pub network: Network,
    /// Whether runs switch from root to `nobody` (root ignores the process-count limit and
    /// may write anywhere). Off when not root, or when `nobody` cannot run the interpreter.
    pub drop_root: bool,
    /// Whether runs get a mount namespace with empty, size-limited tmpfs over `/tmp`,
    /// `/var/tmp` and `/dev/shm` (the places `nobody` could otherwise write to and leave
    /// files for later runs); the work dir stays reachable at its path.
    pub private_tmp: bool,
}

impl Sandbox {
    /// Probes how the network can be isolated on this host.
    pub async fn new(python: PathBuf, limits: Limits) -> Self {
        let mut network = Network::Unrestricted;
        for (mode, args) in [
            (Network::Namespace, &["--net", "true"][..]),
            (
                Network::UserNamespace,
                &["--net", "--map-root-user", "true"][..],
            ),
        ] {
            let ok = Command::new("unshare")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if ok {
                network = mode;
                break;
            }
        }
        if network == Network::Unrestricted {
            tracing::warn!("no network namespace available (unshare --net failed): sandboxed code can reach the network");
        }
        let private_tmp = match network {
            Network::Unrestricted => false,
            _ => Command::new("unshare")
                .args(unshare_args(network, true))
                .arg("true")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success()),
        };
        if !private_tmp {
            tracing::warn!("no mount namespace available (unshare --mount failed): sandboxed code shares /tmp with the host");
        }
        let mut sandbox = Self {
            python,
            limits,
            network,
            drop_root: is_root(),
            private_tmp,
        };
        if sandbox.drop_root {
            let probe = tempfile::tempdir().ok();
            let works = match &probe {
                Some(dir) => sandbox
                    .run_python(dir.path(), &["-c", "pass"], &[], Duration::from_secs(20))
                    .await
                    .is_ok_and(|f| f.success()),
                None => false,
            };
            if !works {
                tracing::warn!(python = %sandbox.python.display(), "the user nobody cannot run this interpreter: sandboxed code runs as root, without the process-count limit (use a system-wide Python, see scripts/setup.sh)");
                sandbox.drop_root = false;
            }
        }
        sandbox
    }

    /// Runs `python args...` in `dir` under the limits, for at most `wall`.
    pub async fn run_python(
        &self,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        wall: Duration,
    ) -> Result<Finished, SandboxError> {
        let prepare = |source| SandboxError::Prepare {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::write(dir.join(LAUNCHER_FILE), LAUNCHER).map_err(prepare)?;
        if self.drop_root {
            hand_over(dir).map_err(prepare)?;
        }
        let cpu_seconds = wall.as_secs().max(1) + 1;
        let mut command = match self.network {
            Network::Unrestricted => Command::new(&self.python),
            network => {
                let mut c = Command::new("unshare");
                c.args(unshare_args(network, self.private_tmp))
                    .arg("--")
                    .arg(&self.python);
                c
            }
        };
        command
            .arg(LAUNCHER_FILE)
            .args([
                cpu_seconds.to_string(),
                self.limits.memory_mb.to_string(),
                self.limits.processes.to_string(),
                self.limits.file_size_mb.to_string(),
                u8::from(self.drop_root).to_string(),
                u8::from(self.private_tmp).to_string(),
            ])
            .arg("--")
            .arg(&self.python)
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PYTHONPATH", dir)
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("HOME", dir)
            .env("TMPDIR", dir)
            .env("LANG", "C.UTF-8")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| SandboxError::Spawn {
            program: self.python.display().to_string(),
            source,
        })?;
        let pid = child.id();
        let cap = self.limits.output_bytes;
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(SandboxError::Spawn {
                program: self.python.display().to_string(),
                source: std::io::Error::other("no pipes"),
            });
        };
        let overflow = Arc::new(Notify::new());
        let stdout = tokio::spawn(read_capped(out, cap, overflow.clone()));
        let stderr = tokio::spawn(read_capped(err, cap, overflow.clone()));
        let ending = tokio::select! {
            status = child.wait() => Ending::Exited(status.ok().and_then(|s| s.code())),
            _ = tokio::time::sleep(wall) => Ending::TimedOut,
            _ = overflow.notified() => Ending::OutputCapped,
        };
        kill_session(pid).await;
        let _ = child.kill().await;
        let (out, out_capped) = stdout.await.unwrap_or_default();
        let (err, err_capped) = stderr.await.unwrap_or_default();
        // A flooding child often dies of the closed pipe at the moment the cap is hit, so
        // its exit can win the race above: the cap decides.
        let ending = if out_capped || err_capped {
            Ending::OutputCapped
        } else {
            ending
        };
        Ok(Finished {
            ending,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        })
    }
}

/// Reads a pipe until EOF, or until `cap` bytes, when it tells `overflow` and stops.
/// Returns what was read and whether the cap was hit.
async fn read_capped<R: AsyncRead + Unpin>(
    mut pipe: R,
    cap: usize,
    overflow: Arc<Notify>,
) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return (buf, false),
            Ok(n) if buf.len() + n > cap => {
                buf.extend_from_slice(&chunk[..cap - buf.len()]);
                overflow.notify_one();
                return (buf, true);
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Kills everything in the run's session: the launcher called setsid, and `unshare`
/// without `--fork` execs in place, so the session id is the child's pid.
async fn kill_session(pid: Option<u32>) {
    let Some(pid) = pid else { return };
    let _ = Command::new("pkill")
        .args(["-KILL", "-s", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// Gives the work dir to the unprivileged user the launcher drops to when we are root.
fn hand_over(dir: &Path) -> std::io::Result<()> {
    const NOBODY: u32 = 65534;
    if !is_root() {
        return Ok(());
    }
    for entry in walk(dir)? {
        std::os::unix::fs::chown(&entry, Some(NOBODY), Some(NOBODY))?;
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            for entry in std::fs::read_dir(&out[i])? {
                out.push(entry?.path());
            }
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::python::find_python;

    async fn sandbox() -> Sandbox {
        Sandbox::new(
            find_python(),
            Limits {
                memory_mb: 512,
                processes: 32,
                file_size_mb: 4,
                output_bytes: 64 * 1024,
            },
        )
        .await
    }

    async fn run(code: &str, wall: Duration) -> (Sandbox, Finished) {
        let sandbox = sandbox().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let finished = sandbox
            .run_python(dir.path(), &["-c", code], &[], wall)
            .await
            .expect("sandbox starts");
        (sandbox, finished)
    }

    #[tokio::test]
    async fn an_infinite_loop_is_stopped_at_the_wall_clock_limit() {
        let start = std::time::Instant::now();
        let (_, f) = run("while True: pass", Duration::from_millis(800)).await;
        assert_eq!(f.ending, Ending::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_flood_of_output_is_cut_at_the_cap() {
        let (_, f) = run(
            "import sys\nwhile True: sys.stdout.write('x' * 4096)",
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(f.ending, Ending::OutputCapped);
        assert_eq!(f.stdout.len(), 64 * 1024);
    }

    #[tokio::test]
    async fn a_fork_bomb_is_contained_and_cleaned_up() {
        let code = "import os, time\nfor _ in range(10000):\n    try:\n        os.fork()\n    except OSError:\n        pass\ntime.sleep(30)";
        let (sandbox, f) = run(code, Duration::from_secs(3)).await;
        assert!(
            sandbox.drop_root || !is_root(),
            "as root the sandbox must switch to nobody (see scripts/setup.sh)"
        );
        assert_eq!(f.ending, Ending::TimedOut);
        let left = std::process::Command::new("pgrep")
            .args(["-u", "nobody", "-f", "import os, time"])
            .output()
            .expect("pgrep");
        assert!(
            left.stdout.is_empty(),
            "processes left behind: {}",
            String::from_utf8_lossy(&left.stdout)
        );
    }

    #[tokio::test]
    async fn the_network_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().expect("addr").port();
        let code = format!(
            "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('CONNECTED')\nexcept OSError as e:\n    print('BLOCKED', e)"
        );
        let (sandbox, f) = run(&code, Duration::from_secs(20)).await;
        assert_ne!(
            sandbox.network,
            Network::Unrestricted,
            "this host should allow `unshare --net`"
        );
        assert!(f.stdout.starts_with("BLOCKED"), "{} {}", f.stdout, f.stderr);
    }

    #[tokio::test]
    async fn temp_dirs_are_private_to_the_run() {
        let marker = format!("/tmp/qefleet-escape-{}", std::process::id());
        let code = format!(
            "open('{marker}', 'w').write('x')\nopen('left.txt', 'w').write('y')\nprint('WROTE')"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = Sandbox::new(find_python(), Limits::default()).await;
        assert!(
            sandbox.private_tmp,
            "this host should allow `unshare --mount`"
        );
        let f = sandbox
            .run_python(dir.path(), &["-c", &code], &[], Duration::from_secs(20))
            .await
            .expect("runs");
        assert!(f.stdout.contains("WROTE"), "{} {}", f.stdout, f.stderr);
        assert!(
            !std::path::Path::new(&marker).exists(),
            "a file written to /tmp stayed on the host"
        );
        assert!(
            dir.path().join("left.txt").exists(),
            "the work dir is the real one"
        );
    }

    #[tokio::test]
    async fn an_interpreter_under_tmp_stays_usable_with_a_private_tmp() {
        // A checkout in /tmp has its .venv there: the private /tmp must not hide it.
        let home = tempfile::tempdir().expect("tempdir");
        let venv = home.path().join("venv");
        let made = std::process::Command::new(find_python())
            .args(["-m", "venv", "--without-pip"])
            .arg(&venv)
            .status()
            .expect("venv");
        assert!(made.success());
        let sandbox = Sandbox::new(venv.join("bin/python"), Limits::default()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let f = sandbox
            .run_python(
                dir.path(),
                &["-c", "import sys; print('PREFIX', sys.prefix)"],
                &[],
                Duration::from_secs(20),
            )
            .await
            .expect("runs");
        assert!(
            f.stdout.starts_with("PREFIX /tmp"),
            "{} {}",
            f.stdout,
            f.stderr
        );
    }

    #[tokio::test]
    async fn memory_and_writes_outside_the_work_dir_are_refused() {
        let code = "try:\n    b = bytearray(2 * 1024**3)\n    print('ALLOCATED')\nexcept MemoryError:\n    print('NO MEMORY')\ntry:\n    open('/etc/qefleet-escape', 'w').write('x')\n    print('WROTE')\nexcept OSError:\n    print('NO WRITE')";
        let (sandbox, f) = run(code, Duration::from_secs(20)).await;
        assert!(f.stdout.contains("NO MEMORY"), "{} {}", f.stdout, f.stderr);
        if sandbox.drop_root {
            assert!(f.stdout.contains("NO WRITE"), "{} {}", f.stdout, f.stderr);
        }
        assert!(!std::path::Path::new("/etc/qefleet-escape").exists());
    }
}
