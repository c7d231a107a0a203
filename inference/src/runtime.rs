//! ONNX Runtime for the process: the shared library found and loaded once (ort's
//! `load-dynamic`), the execution provider chosen per session from `--device`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use crate::InferenceError;

/// Environment variable naming the ONNX Runtime shared library (ort's own convention).
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";
/// The ONNX Runtime version setup installs and this build is written against.
pub const ORT_VERSION: &str = "1.31.1";
const INSTALL_HINT: &str = "run ./scripts/setup.sh (or `pip install onnxruntime==1.31.1`, \
    `onnxruntime-gpu==1.31.1` for CUDA) and set ORT_DYLIB_PATH to its \
    onnxruntime/capi/libonnxruntime.so.1.31.1";

/// Where a session runs: `auto` tries CUDA and falls back to the CPU with a warning;
/// `cpu` and `cuda[:N]` insist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    Cuda(i32),
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<i32>) {
                Some(Ok(n)) if n >= 0 => Ok(Device::Cuda(n)),
                _ => Err(format!(
                    "unknown device {s:?}: expected auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The execution provider a session actually uses (a metric label and a status field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda(i32),
}

impl Provider {
    /// The label value: `cpu` or `cuda`.
    pub fn label(&self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda(_) => "cuda",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Provider::Cpu => f.write_str("cpu"),
            Provider::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Thread and memory settings of a session.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub device: Device,
    /// Threads within an operator (0: ONNX Runtime's default, one per core).
    pub intra_threads: usize,
    /// Threads across operators (only used with parallel execution; 1 is sequential).
    pub inter_threads: usize,
    /// ONNX Runtime's memory arena and memory pattern planning: faster repeated runs of
    /// similar shapes, more resident memory.
    pub memory_arena: bool,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            device: Device::Auto,
            intra_threads: 0,
            inter_threads: 1,
            memory_arena: true,
        }
    }
}

/// The loaded runtime: which library, which version.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    pub library: PathBuf,
    pub cuda_compiled_in: bool,
}

static RUNTIME: OnceLock<Result<(Environment, RuntimeInfo), String>> = OnceLock::new();

/// Loads ONNX Runtime once per process (ort allows one environment per process) and
/// returns what was loaded; later calls return the same.
pub fn runtime() -> Result<RuntimeInfo, InferenceError> {
    RUNTIME
        .get_or_init(|| {
            let library = find_library().map_err(|e| e.to_string())?;
            let env = ort::init_from(&library)
                .map_err(|e| {
                    format!(
                        "cannot load ONNX Runtime from {}: {e}; {INSTALL_HINT}",
                        library.display()
                    )
                })?
                .with_name("qefleet")
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime: {e}"))?;
            let cuda_compiled_in = ep::CUDA::is_available().unwrap_or(false);
            tracing::debug!(library = %library.display(), cuda_compiled_in, "ONNX Runtime loaded");
            Ok((
                env,
                RuntimeInfo {
                    library,
                    cuda_compiled_in,
                },
            ))
        })
        .as_ref()
        .map(|(_, info)| info.clone())
        .map_err(|e| InferenceError::Runtime(e.clone()))
}

/// Finds the ONNX Runtime library: `$ORT_DYLIB_PATH`, then the `onnxruntime` package of
/// the project's `.venv` (this directory or above, or above the executable).
pub fn find_library() -> Result<PathBuf, InferenceError> {
    if let Some(path) = std::env::var_os(DYLIB_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(InferenceError::Runtime(format!(
            "{DYLIB_ENV}={} is not a file; {INSTALL_HINT}",
            path.display()
        )));
    }
    for venv in qefleet_shared::embedded::venv_candidates() {
        if let Some(lib) = library_in_venv(&venv) {
            return Ok(lib);
        }
    }
    Err(InferenceError::Runtime(format!(
        "ONNX Runtime not found (looked at ${DYLIB_ENV} and .venv/lib/python3*/site-packages/onnxruntime); {INSTALL_HINT}"
    )))
}

fn library_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    let mut found: Vec<PathBuf> = lib
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .filter_map(|e| {
            let capi = e.path().join("site-packages/onnxruntime/capi");
            std::fs::read_dir(capi).ok()
        })
        .flat_map(|d| d.flatten().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so"))
        })
        .collect();
    // The versioned name (libonnxruntime.so.1.31.1) is the library itself.
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

/// Opens a session on `model` with the device and thread settings; returns it with the
/// provider it actually runs on.
pub fn open_session(
    model: &Path,
    settings: &SessionSettings,
) -> Result<(Session, Provider), InferenceError> {
    let info = runtime()?;
    let cuda = match settings.device {
        Device::Cpu => None,
        Device::Cuda(n) => Some(n),
        Device::Auto => info.cuda_compiled_in.then_some(0),
    };
    if let Some(n) = cuda {
        preload_cuda_libraries(&info.library);
        match build(model, settings, Some(n)) {
            Ok(session) => return Ok((session, Provider::Cuda(n))),
            Err(e) if settings.device == Device::Auto => {
                tracing::warn!(model = %model.display(), error = %e, "CUDA execution provider failed; falling back to the CPU");
            }
            Err(e) => {
                return Err(InferenceError::Runtime(format!(
                    "{e} (requested --device {}; {} ONNX Runtime at {} {} the CUDA execution provider: \
                     install onnxruntime-gpu==1.31.1 and its CUDA libraries with ./scripts/setup.sh --gpu, or use --device auto|cpu)",
                    settings.device,
                    ORT_VERSION,
                    info.library.display(),
                    if info.cuda_compiled_in { "has" } else { "lacks" }
                )))
            }
        }
    } else if settings.device == Device::Auto {
        tracing::warn!(
            library = %info.library.display(),
            "this ONNX Runtime has no CUDA execution provider (CPU build); running on the CPU"
        );
    }
    Ok((build(model, settings, None)?, Provider::Cpu))
}

/// The CUDA and cuDNN libraries the CUDA provider loads, dependencies first.
const CUDA_LIBRARIES: &[&str] = &[
    "libnvJitLink.so.13",
    "libcudart.so.13",
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libnvrtc.so.13",
    "libcurand.so.10",
    "libcufft.so.12",
    "libcudnn.so.9",
    "libcudnn_graph.so.9",
    "libcudnn_ops.so.9",
    "libcudnn_heuristic.so.9",
    "libcudnn_adv.so.9",
    "libcudnn_cnn.so.9",
    "libcudnn_engines_precompiled.so.9",
    "libcudnn_engines_runtime_compiled.so.9",
];

/// `pip install onnxruntime-gpu[cuda,cudnn]` puts the CUDA libraries in
/// `site-packages/nvidia/*/lib`, which the dynamic loader does not search: load them
/// first (as `onnxruntime.preload_dylibs()` does in Python) so the provider finds them by
/// name. Libraries the loader finds on its own (a system CUDA) need nothing; whatever is
/// still missing makes registration fail with ONNX Runtime's own message.
fn preload_cuda_libraries(library: &Path) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // .../site-packages/onnxruntime/capi/libonnxruntime.so.X → .../site-packages/nvidia
        let Some(nvidia) = library.ancestors().nth(3).map(|s| s.join("nvidia")) else {
            return;
        };
        let mut dirs: Vec<PathBuf> = Vec::new();
        for package in std::fs::read_dir(&nvidia).into_iter().flatten().flatten() {
            dirs.push(package.path().join("lib"));
            // CUDA 13 wheels nest one level deeper (nvidia/cu13/lib).
            for sub in std::fs::read_dir(package.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                dirs.push(sub.path().join("lib"));
            }
        }
        let mut pending: Vec<PathBuf> = CUDA_LIBRARIES
            .iter()
            .filter_map(|name| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()))
            .collect();
        // A library whose dependency comes later in the list loads on a later pass.
        loop {
            let before = pending.len();
            pending.retain(|lib| ort::util::preload_dylib(lib.as_path()).is_err());
            if pending.is_empty() || pending.len() == before {
                break;
            }
        }
        for lib in &pending {
            tracing::warn!(library = %lib.display(), "could not preload a CUDA library");
        }
    });
}

fn build(
    model: &Path,
    settings: &SessionSettings,
    cuda: Option<i32>,
) -> Result<Session, InferenceError> {
    let (env, _) = RUNTIME
        .get()
        .and_then(|r| r.as_ref().ok())
        .ok_or_else(|| InferenceError::Runtime("ONNX Runtime is not loaded".into()))?;
    let err = |what: &str, e: String| {
        InferenceError::Runtime(format!("{what} for {}: {e}", model.display()))
    };
    let invalid = |e: ort::Error<_>| err("invalid session settings", e.to_string());
    let mut builder = Session::builder(env)
        .map_err(|e| err("cannot create a session", e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(invalid)?
        .with_intra_threads(settings.intra_threads)
        .map_err(invalid)?
        .with_inter_threads(settings.inter_threads.max(1))
        .map_err(invalid)?
        .with_memory_pattern(settings.memory_arena)
        .map_err(invalid)?;
    if let Some(n) = cuda {
        builder = builder
            .with_execution_providers([ep::CUDA::default()
                .with_device_id(n)
                .build()
                .error_on_failure()])
            .map_err(|e| err("CUDA execution provider unavailable", e.to_string()))?;
    }
    builder
        .commit_from_file(model)
        .map_err(|e| err("cannot load the model", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        assert_eq!("auto".parse::<Device>(), Ok(Device::Auto));
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", ""] {
            let e = bad.parse::<Device>().expect_err(bad);
            assert!(e.contains("expected auto, cpu, cuda or cuda:N"), "{e}");
        }
    }

    #[test]
    fn a_venv_without_onnxruntime_has_no_library() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(library_in_venv(dir.path()), None);
        let capi = dir
            .path()
            .join("lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).expect("mkdir");
        std::fs::write(capi.join("libonnxruntime.so.1.31.1"), b"").expect("write");
        std::fs::write(capi.join("libonnxruntime_providers_shared.so"), b"").expect("write");
        assert_eq!(
            library_in_venv(dir.path()),
            Some(capi.join("libonnxruntime.so.1.31.1"))
        );
    }
}
