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
