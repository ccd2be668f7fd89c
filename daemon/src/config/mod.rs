//! Configuration: one TOML file (`/etc/vllama/vllama.toml` unless `--config` names another),
//! then `VLLAMA_<SECTION>_<KEY>` environment overrides, validated into one typed [`Config`].
//!
//! Every error names the key, and the file line where the key came from the file, or the
//! environment variable where it came from the environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, HumanDuration};

mod engine;
pub mod ollama_env;
pub use engine::{
    EngineConfig, Executor, GpuMemory, LaunchMode, ModelConfig, PathsConfig, RemoteUrl, Transport,
};

/// Where the packaged daemon reads its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vllama/vllama.toml";
/// Environment variables with this prefix override configuration keys.
pub const ENV_PREFIX: &str = "VLLAMA_";
/// `VLLAMA_*` variables that are not configuration keys.
const ENV_NOT_KEYS: &[&str] = &["VLLAMA_CONFIG", crate::notify::TEST_HOOKS];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub api: ApiConfig,
    pub admin: AdminConfig,
    pub daemon: DaemonConfig,
    pub log: LogConfig,
    pub paths: PathsConfig,
    pub engine: EngineConfig,
    pub metrics: MetricsConfig,
    pub store: StoreConfig,
    /// The models this daemon serves, by canonical name (`qwen2.5:0.5b`, `tiny:latest`).
    pub models: BTreeMap<String, ModelConfig>,
}

/// `[api]`: the public HTTP listener (Ollama + OpenAI APIs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to bind when not socket-activated.
    pub listen: SocketAddr,
    /// Larger request bodies are answered 413.
    pub max_request_body: ByteSize,
    /// A client must send its request headers within this time.
    pub header_read_timeout: HumanDuration,
    /// Connections one client address may hold open without having sent a request; more
    /// are closed as they arrive (0: no bound).
    pub max_headerless_per_client: u32,
    /// Threads that serve the connections, each with its own event loop (0: one per core).
    /// Read at start.
    pub threads: u32,
    /// Browser origins allowed besides Ollama's defaults (localhost, 127.0.0.1, 0.0.0.0 on
    /// any port, app://, file://, tauri://, vscode-webview://); `*` wildcards.
    pub origins: Vec<String>,
    /// Clients may pull models (`/api/pull`).
    pub allow_pull: bool,
    /// Clients may delete models (`/api/delete`); else only `vllamactl rm` can.
    pub allow_delete: bool,
    /// The API keys (`vllamactl key add`); with any key in it every request but `GET /`,
    /// `HEAD /` and `/api/version` must present one. Relative: to the state directory.
    pub keys_file: PathBuf,
    /// Serve a non-loopback address with no keys (anyone who reaches it can use it).
    pub allow_unauthenticated: bool,
    /// Reverse proxies (addresses or networks) whose `X-Forwarded-For` names the client, for
    /// the logs, the client limits and fair turns.
    pub trusted_proxies: Vec<crate::forwarded::Network>,
    /// With no API keys: the limits of each client address (requests and tokens per minute,
    /// requests at once). Keys carry their own.
    pub client_limits: ClientLimits,
}

/// `[api.client_limits]`: none set, none applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientLimits {
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub concurrency: Option<u32>,
}

impl ClientLimits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.concurrency.is_some()
    }

    pub fn limits(&self) -> crate::limits::Limits {
        crate::limits::Limits {
            rpm: self.rpm,
            tpm: self.tpm,
            concurrency: self.concurrency,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 11434)),
            max_request_body: ByteSize(32 * ByteSize::MIB),
            header_read_timeout: HumanDuration::from_secs(30),
            max_headerless_per_client: 256,
            threads: 0,
            origins: Vec::new(),
            allow_pull: true,
            allow_delete: false,
            keys_file: PathBuf::from("api-keys.toml"),
            allow_unauthenticated: false,
            trusted_proxies: Vec::new(),
            client_limits: ClientLimits::default(),
        }
    }
}

/// `[admin]`: the admin API on a Unix socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Socket path to bind when not socket-activated (relative: to the config file's folder).
    pub socket: PathBuf,
    /// File mode of a socket vllamad binds itself.
    pub socket_mode: SocketMode,
    /// Members may use every admin route.
    pub admin_group: String,
    /// Members may use the read-only routes (status).
    pub status_group: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: PathBuf::from(vllama_proto::DEFAULT_ADMIN_SOCKET),
            socket_mode: SocketMode(0o660),
            admin_group: "vllama-admin".into(),
            status_group: "vllama".into(),
        }
    }
}

/// `[daemon]`: process-wide behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// On SIGTERM, requests in flight get this long to finish.
    pub shutdown_grace: HumanDuration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            shutdown_grace: HumanDuration::from_secs(30),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `RUST_LOG`-style filter, e.g. `"info"` or `"info,vllamad::admin=debug"`.
    pub filter: String,
    /// Where and how to log.
    pub format: LogFormat,
    /// One line per public API request (route, model, status, time to the response head).
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
            format: LogFormat::Auto,
            access: true,
        }
    }
}

/// The public Hugging Face Hub, unless `store.endpoint` or `$HF_ENDPOINT` names another.
pub const DEFAULT_HUB_ENDPOINT: &str = "https://huggingface.co";

/// `[store]`: where pulls come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The hub to pull from (unset: `$HF_ENDPOINT`, else the public hub).
    pub endpoint: Option<String>,
    /// A file holding a hub token, for gated and private models (unset: the `hf-token`
    /// systemd credential, else `$HF_TOKEN`).
    pub token_file: Option<PathBuf>,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `GET /metrics`.
    pub enabled: bool,
    /// Serve it on its own listener at this address instead of the API's (when not
    /// socket-activated; an activated socket named `metrics` wins).
    pub listen: Option<SocketAddr>,
    /// Each engine's own `/metrics` is left out of a scrape when it takes longer.
    pub engine_timeout: HumanDuration,
    /// How often GPUs (NVML) and engine memory are read, off the request path.
    pub sample_interval: HumanDuration,
    /// With API keys in force, `/metrics` on the API listener wants one too.
    pub require_key: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: None,
            engine_timeout: HumanDuration::from_secs(1),
            sample_interval: HumanDuration::from_secs(5),
            require_key: true,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald when stderr is the journal (`JOURNAL_STREAM`), else text.
    Auto,
    Journald,
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(LogFormat::Auto),
            "journald" => Ok(LogFormat::Journald),
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format `{other}`: use auto, journald, text or json"
            )),
        }
    }
}

/// A file mode, written in TOML as `"0660"` or as the integer `0o660`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl Serialize for SocketMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Text(String),
        }
        let bad = |shown: &dyn std::fmt::Display| {
            serde::de::Error::custom(format!(
                "`{shown}` is not a file mode: write octal digits such as \"0660\""
            ))
        };
        let mode = match Raw::deserialize(d)? {
            Raw::Int(v) => v,
            Raw::Text(t) => {
                u32::from_str_radix(t.trim_start_matches("0o"), 8).map_err(|_| bad(&t))?
            }
        };
        if mode > 0o777 {
            return Err(bad(&format_args!("{mode:o}")));
        }
        Ok(SocketMode(mode))
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// Named on the command line (or `VLLAMA_CONFIG`): then a missing file is an error.
    /// The default path may be absent: the built-in defaults apply.
    pub explicit: bool,
}

/// A loaded configuration and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: Config,
    /// The file read; `None` when it was absent and the defaults apply.
    pub file: Option<PathBuf>,
    /// Things to log once logging is up (e.g. a `VLLAMA_*` variable that is no key).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: TOML syntax error: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}key `{key}`: {message}", location(path, *line))]
    Key {
        path: PathBuf,
        line: Option<usize>,
        key: String,
        message: String,
    },
    #[error("environment variable {var} (key `{key}`): {message}")]
    Env {
        var: String,
        key: String,
        message: String,
    },
    #[error(
        "environment variable {var} is not a configuration key (ignored); the keys are: {known}"
    )]
    UnknownEnv { var: String, known: String },
}

fn location(path: &Path, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{}:{line}: ", path.display()),
        None => format!("{}: ", path.display()),
    }
}

impl ConfigError {
    /// The configuration key the error is about, where there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Key { key, .. } | ConfigError::Env { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Reads, overrides and validates the configuration. Blocking (file I/O): call it at start
/// or from `spawn_blocking`.
pub fn load(
    source: &ConfigSource,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let (config, file) = match std::fs::read_to_string(&source.path) {
        Ok(text) => {
            if old_engine_key(&text) {
                warnings.push(format!(
                    "{}: [engine] vllm is now called program; it is read as before, but rename it",
                    source.path.display()
                ));
            }
            (parse(&text, &source.path)?, Some(source.path.clone()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !source.explicit => {
            (Config::default(), None)
        }
        Err(e) => {
            return Err(ConfigError::Read {
                path: source.path.clone(),
                source: e,
            })
        }
    };
    let mut config = apply_env(config, env, &mut warnings)?;
    // Relative paths are relative to the file's folder, made absolute: engines run in other
    // working directories.
    let absolute = std::path::absolute(&source.path).unwrap_or_else(|_| source.path.clone());
    let base = absolute.parent().unwrap_or(Path::new("/"));
    validate(&mut config, base, file.as_deref().unwrap_or(&source.path))?;
    Ok(Loaded {
        config,
        file,
        warnings,
    })
}

/// Whether the file sets `[engine] vllm`, `engine.program`'s old name.
fn old_engine_key(text: &str) -> bool {
    text.parse::<toml::Table>().is_ok_and(|t| {
        t.get("engine")
            .and_then(toml::Value::as_table)
            .is_some_and(|e| e.contains_key("vllm"))
    })
}

/// Parses a configuration file's text. `path` is only used in error messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::Key {
            path: path.to_path_buf(),
            line: inner.span().map(|s| line_col(text, s.start).0),
            key,
            message: inner.message().trim().to_string(),
        }
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.as_bytes().get(..offset).unwrap_or(text.as_bytes());
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, column)
}

/// The environment variable for each configuration key, derived from the schema itself:
/// `VLLAMA_<SECTION>_<KEY>`, upper case.
pub fn env_keys() -> BTreeMap<String, (String, String)> {
    let mut keys = BTreeMap::new();
    if let Ok(table) = toml::Table::try_from(Config::default()) {
        for (section, value) in table {
            if let toml::Value::Table(fields) = value {
                for key in fields.keys() {
                    let var = format!("{ENV_PREFIX}{section}_{key}").to_uppercase();
                    keys.insert(var, (section.clone(), key.clone()));
                }
            }
        }
    }
    keys
}

/// Applies `VLLAMA_<SECTION>_<KEY>` variables. A `VLLAMA_*` variable that names no key is
/// not an error (the environment is not the operator's file, and other tools share the
/// prefix) but is reported in `warnings`, naming the valid variables.
fn apply_env(
    config: Config,
    env: impl IntoIterator<Item = (String, String)>,
    warnings: &mut Vec<String>,
) -> Result<Config, ConfigError> {
    let keys = env_keys();
    let env: Vec<(String, String)> = env.into_iter().collect();
    let mut overrides: Vec<(String, String, String, String)> = Vec::new();
    // Ollama's names first, so that a `VLLAMA_*` variable for the same key wins.
    for (var, value) in &env {
        let Some(mapped) = ollama_env::translate(var, value) else {
            continue;
        };
        match mapped {
            Ok((to, _)) if env.iter().any(|(v, _)| v == to) => warnings.push(format!(
                "{var} is ignored: {to} is set too, and vllama's own name wins"
            )),
            Ok((to, translated)) => {
                if let Some((section, key)) = keys.get(to) {
                    warnings.push(format!(
                        "{var}={value} is read as {section}.{key} = {translated} (vllama's name: {to})"
                    ));
                    overrides.push((var.clone(), section.clone(), key.clone(), translated));
                }
            }
            Err(why) => warnings.push(format!("{var} is ignored: {why}")),
        }
    }
    for (var, value) in env {
        if !var.starts_with(ENV_PREFIX) || ENV_NOT_KEYS.contains(&var.as_str()) {
            continue;
        }
        let Some((section, key)) = keys.get(&var) else {
            warnings.push(
                ConfigError::UnknownEnv {
                    known: keys.keys().cloned().collect::<Vec<_>>().join(", "),
                    var,
                }
                .to_string(),
            );
            continue;
        };
        overrides.push((var, section.clone(), key.clone(), value));
    }
    if overrides.is_empty() {
        return Ok(config);
    }
    let env_err = |var: &str, key: String, message: String| ConfigError::Env {
        var: var.to_string(),
        key,
        message,
    };
    let mut table = toml::Table::try_from(&config)
        .map_err(|e| env_err("VLLAMA_*", String::new(), e.to_string()))?;
    for (_, section, key, raw) in &overrides {
        let Some(toml::Value::Table(fields)) = table.get_mut(section) else {
            continue;
        };
        let value = match fields.get(key) {
            Some(toml::Value::String(_)) | None => toml::Value::String(raw.clone()),
            Some(_) => {
                // A number, boolean or array: read the variable as a TOML value.
                let doc = format!("v = {raw}");
                match doc.parse::<toml::Table>() {
                    Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.clone())),
                    Err(_) => toml::Value::String(raw.clone()),
                }
            }
        };
        fields.insert(key.clone(), value);
    }
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let var = overrides
            .iter()
            .find(|(_, s, k, _)| key == format!("{s}.{k}"))
            .map_or("VLLAMA_*", |(v, ..)| v.as_str())
            .to_string();
        env_err(&var, key, e.into_inner().message().trim().to_string())
    })
}

fn validate(config: &mut Config, base: &Path, file: &Path) -> Result<(), ConfigError> {
    let key_err = |key: &str, message: String| ConfigError::Key {
        path: file.to_path_buf(),
        line: None,
        key: key.to_string(),
        message,
    };
    if config.admin.socket.as_os_str().is_empty() {
        return Err(key_err("admin.socket", "must not be empty".into()));
    }
    if config.admin.socket.is_relative() {
        config.admin.socket = normalize(&base.join(&config.admin.socket));
    }
    // sun_path holds 108 bytes including the terminating NUL.
    if config.admin.socket.as_os_str().len() > 107 {
        return Err(key_err(
            "admin.socket",
            format!(
                "{} is longer than a Unix socket path may be (107 bytes)",
                config.admin.socket.display()
            ),
        ));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&config.log.filter) {
        return Err(key_err("log.filter", format!("not a valid filter: {e}")));
    }
    for (key, group) in [
        ("admin.admin_group", &config.admin.admin_group),
        ("admin.status_group", &config.admin.status_group),
    ] {
        let ok = !group.is_empty()
            && group.len() <= 32
            && group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(key_err(key, format!("`{group}` is not a valid group name")));
        }
    }
    for (key, path) in [
        ("paths.state_dir", &mut config.paths.state_dir),
        ("paths.runtime_dir", &mut config.paths.runtime_dir),
        ("paths.cache_dir", &mut config.paths.cache_dir),
        ("engine.program", &mut config.engine.program),
        ("engine.python", &mut config.engine.python),
    ] {
        if path.as_os_str().is_empty() {
            return Err(key_err(key, "must not be empty".into()));
        }
        // A bare program name (`vllm`, `python3`) is looked up in PATH.
        let program = matches!(key, "engine.program" | "engine.python");
        if path.is_relative() && (!program || path.components().count() > 1) {
            *path = normalize(&base.join(&*path));
        }
    }
    if config.api.keys_file.as_os_str().is_empty() {
        return Err(key_err("api.keys_file", "must not be empty".into()));
    }
    if config.api.keys_file.is_relative() {
        config.api.keys_file = normalize(&config.paths.state_dir.join(&config.api.keys_file));
    }
    // <runtime_dir>/engines/<id>.sock must fit in sun_path; ids are at most 48 bytes.
    if config.paths.runtime_dir.as_os_str().len() > 107 - "/engines/.sock".len() - 48 {
        return Err(key_err(
            "paths.runtime_dir",
            "too long for engine socket paths (at most 45 bytes)".into(),
        ));
    }
    // Keys become canonical names (`tiny` → `tiny:latest`), so a request's name finds its
    // model with one map lookup.
    let mut models = BTreeMap::new();
    for (name, mut model) in std::mem::take(&mut config.models) {
        let key = format!("models.\"{name}\"");
        // A local folder named relative to this file (`./m`, `../m`), like the paths above.
        if model.source.starts_with("./") || model.source.starts_with("../") {
            model.source = normalize(&base.join(&model.source)).display().to_string();
        }
        let canonical =
            crate::names::ModelName::parse(&name).map_err(|e| key_err(&key, e.to_string()))?;
        if models.contains_key(canonical.as_str()) {
            return Err(key_err(
                &key,
                format!("names the same model as another entry ({canonical})"),
            ));
        }
        match &model.remote {
            None if model.source.trim().is_empty() => {
                return Err(key_err(
                    &format!("{key}.source"),
                    "must not be empty (or set remote for an engine that runs elsewhere)".into(),
                ));
            }
            None => {
                if let Some(which) = [
                    ("token_file", model.token_file.is_some()),
                    ("ca_file", model.ca_file.is_some()),
                ]
                .iter()
                .find_map(|(k, set)| set.then_some(k))
                {
                    return Err(key_err(
                        &format!("{key}.{which}"),
                        "is for a remote engine: set remote too".into(),
                    ));
                }
            }
            Some(_) if !model.source.trim().is_empty() => {
                return Err(key_err(
                    &format!("{key}.remote"),
                    "a model is served either from source or by a remote engine, not both".into(),
                ));
            }
            Some(url) => {
                RemoteUrl::parse(url).map_err(|why| {
                    key_err(
                        &format!("{key}.remote"),
                        format!("`{url}` is not a remote engine's URL: {why}"),
                    )
                })?;
                for path in [&mut model.token_file, &mut model.ca_file]
                    .into_iter()
                    .flatten()
                {
                    if path.is_relative() {
                        *path = normalize(&base.join(&*path));
                    }
                }
            }
        }
        if model.pipeline_parallel == 0 {
            return Err(key_err(
                &format!("{key}.pipeline_parallel"),
                "must be 1 or more".into(),
            ));
        }
        if model.ray_address.is_some() && model.executor != Some(Executor::Ray) {
            return Err(key_err(
                &format!("{key}.ray_address"),
                "is for executor = \"ray\": set it too".into(),
            ));
        }
        if model.tensor_parallel == 0 {
            return Err(key_err(
                &format!("{key}.tensor_parallel"),
                "must be 1 or more".into(),
            ));
        }
        if model.cpu_weight.is_some_and(|w| !(1..=10_000).contains(&w)) {
            return Err(key_err(
                &format!("{key}.cpu_weight"),
                "must be 1 to 10000 (systemd's CPUWeight=)".into(),
            ));
        }
        models.insert(canonical.to_string(), model);
    }
    config.models = models;
    if config.metrics.sample_interval.0 < std::time::Duration::from_millis(100) {
        return Err(key_err(
            "metrics.sample_interval",
            "must be 100ms or more".into(),
        ));
    }
    if config.api.max_request_body.0 == 0 {
        return Err(key_err(
            "api.max_request_body",
            "must be more than 0".into(),
        ));
    }
    Ok(())
}

/// Folds `.` and `..` out of a path without touching the file system (the socket may not
/// exist yet, and its folder's symlinks are not ours to resolve).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Keys whose change a reload cannot apply: the listeners are bound once.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    if old.api.listen != new.api.listen {
        keys.push("api.listen".to_string());
    }
    if old.api.threads != new.api.threads {
        keys.push("api.threads".to_string());
    }
    if old.admin.socket != new.admin.socket {
        keys.push("admin.socket".to_string());
    }
    if old.admin.socket_mode != new.admin.socket_mode {
        keys.push("admin.socket_mode".to_string());
    }
    if old.metrics.listen != new.metrics.listen {
        keys.push("metrics.listen".to_string());
    }
    if old.log.format != new.log.format {
        keys.push("log.format".to_string());
    }
    if old.paths != new.paths {
        keys.push("paths".to_string());
    }
    if old.engine.launch != new.engine.launch {
        keys.push("engine.launch".to_string());
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("/etc/vllama/vllama.toml"))
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(p("").unwrap(), Config::default());
    }

    /// Keys read only at start are named after a reload that changed them; the rest apply.
    #[test]
    fn keys_read_at_start_are_named_when_a_reload_changes_them() {
        let old = Config::default();
        let new = p("[api]\nthreads = 4\nlisten = \"127.0.0.1:9\"\nheader_read_timeout = \"5s\"\n")
            .unwrap();
        assert_eq!(
            restart_only_changes(&old, &new),
            ["api.listen", "api.threads"]
        );
        assert!(restart_only_changes(&old, &old.clone()).is_empty());
    }

    /// The packaged file shows every key, commented out, at its default value.
    #[test]
    fn the_shipped_config_documents_every_default() {
        let shipped = include_str!("../../../packaging/vllama.toml");
        assert_eq!(
            p(shipped).unwrap(),
            Config::default(),
            "active lines change defaults"
        );
        let uncommented: String = shipped
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(p(&uncommented).unwrap(), Config::default());
        for var in env_keys().values() {
            let line = format!("#{} = ", var.1);
            assert!(
                shipped.contains(&line),
                "key {}.{} not documented",
                var.0,
                var.1
            );
        }
    }

    #[test]
    fn values_are_read() {
        let c = p(
            "[api]\nlisten = \"0.0.0.0:8080\"\nmax_request_body = \"1KiB\"\n\
             [admin]\nsocket_mode = 0o600\n[daemon]\nshutdown_grace = \"2m\"\n",
        )
        .unwrap();
        assert_eq!(c.api.listen.port(), 8080);
        assert_eq!(c.api.max_request_body, ByteSize(1024));
        assert_eq!(c.admin.socket_mode, SocketMode(0o600));
        assert_eq!(c.daemon.shutdown_grace, HumanDuration::from_secs(120));
    }

    #[test]
    fn model_names_are_made_canonical_and_must_differ() {
        let valid = |text: &str| {
            let mut c = p(text)?;
            let file = Path::new("/etc/vllama/vllama.toml");
            validate(&mut c, Path::new("/etc/vllama"), file).map(|()| c)
        };
        let c =
            valid("[models.\"tiny\"]\nsource = \"/m/a\"\n[models.\"Org/B\"]\nsource = \"/m/b\"\n")
                .unwrap();
        let names: Vec<&str> = c.models.keys().map(String::as_str).collect();
        assert_eq!(names, ["Org/B", "tiny:latest"]);
        let err = valid(
            "[models.\"tiny\"]\nsource = \"/m/a\"\n[models.\"tiny:latest\"]\nsource = \"/m/b\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("names the same model"), "{err}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = p("[api]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n").unwrap_err();
        match &err {
            ConfigError::Key { key, line, .. } => {
                assert_eq!(key, "api.lisen");
                assert_eq!(*line, Some(3));
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.starts_with("/etc/vllama/vllama.toml:3: key `api.lisen`"),
            "{text}"
        );
        assert!(text.contains("unknown field"), "{text}");
    }

    #[test]
    fn unknown_section_names_it() {
        let err = p("\n[apii]\nlisten = 1\n").unwrap_err();
        assert_eq!(err.key(), Some("apii"));
        assert!(err.to_string().contains(":2:"), "{err}");
    }

    #[test]
    fn wrong_types_name_key_and_line() {
        let cases = [
            ("[api]\nlisten = 5\n", "api.listen", 2),
            ("[api]\n\nlisten = \"localhost\"\n", "api.listen", 3),
            (
                "[api]\nmax_request_body = \"lots\"\n",
                "api.max_request_body",
                2,
            ),
            (
                "[daemon]\nshutdown_grace = \"-3s\"\n",
                "daemon.shutdown_grace",
                2,
            ),
            (
                "[daemon]\nshutdown_grace = true\n",
                "daemon.shutdown_grace",
                2,
            ),
            ("[admin]\nsocket_mode = \"0999\"\n", "admin.socket_mode", 2),
            ("[log]\nformat = \"xml\"\n", "log.format", 2),
            ("[admin]\nadmin_group = 7\n", "admin.admin_group", 2),
        ];
        for (text, key, line) in cases {
            match p(text) {
                Err(ConfigError::Key {
                    key: k, line: l, ..
                }) => {
                    assert_eq!(k, key, "{text}");
                    assert_eq!(l, Some(line), "{text}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = p("[api]\nlisten = \"127.0.0.1:1\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::Syntax { line: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn ollamas_variables_below_vllamas() {
        let mut warnings = Vec::new();
        let c = apply_env(
            Config::default(),
            env(&[
                ("OLLAMA_HOST", "0.0.0.0"),
                ("OLLAMA_KEEP_ALIVE", "-1"),
                ("OLLAMA_MAX_LOADED_MODELS", "2"),
                ("OLLAMA_ORIGINS", "http://a.test,http://b.test"),
                ("OLLAMA_CONTEXT_LENGTH", "8192"),
                ("OLLAMA_MAX_QUEUE", "64"),
                ("VLLAMA_ENGINE_MAX_QUEUE", "32"),
            ]),
            &mut warnings,
        )
        .unwrap();
        assert_eq!(c.api.listen.to_string(), "0.0.0.0:11434");
        assert_eq!(c.engine.keep_alive, crate::units::KeepAlive::Forever);
        assert_eq!(c.engine.max_loaded, 2);
        assert_eq!(c.api.origins, ["http://a.test", "http://b.test"]);
        assert_eq!(c.engine.context_length, 8192);
        assert_eq!(c.engine.max_queue, 32, "VLLAMA_* wins");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("OLLAMA_HOST=0.0.0.0 is read as api.listen")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("OLLAMA_MAX_QUEUE is ignored")),
            "{warnings:?}"
        );
        // A bad value names Ollama's variable.
        let err = apply_env(
            Config::default(),
            env(&[("OLLAMA_MAX_LOADED_MODELS", "many")]),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("OLLAMA_MAX_LOADED_MODELS"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_and_their_errors() {
        let mut warnings = Vec::new();
        let c = apply_env(
            Config::default(),
            env(&[
                ("VLLAMA_API_LISTEN", "127.0.0.1:9999"),
                ("VLLAMA_LOG_FILTER", "debug"),
                ("VLLAMA_CONFIG", "/elsewhere.toml"),
                ("HOME", "/root"),
            ]),
            &mut warnings,
        )
        .unwrap();
        assert_eq!(c.api.listen.port(), 9999);
        assert_eq!(c.log.filter, "debug");
        assert!(warnings.is_empty(), "{warnings:?}");

        let c = apply_env(
            Config::default(),
            env(&[("VLLAMA_API_LISTN", "x")]),
            &mut warnings,
        )
        .unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("VLLAMA_API_LISTN is not a configuration key"),
            "{warnings:?}"
        );
        assert!(warnings[0].contains("VLLAMA_API_LISTEN"), "{warnings:?}");

        let err = apply_env(
            Config::default(),
            env(&[("VLLAMA_API_LISTEN", "nowhere")]),
            &mut warnings,
        )
        .unwrap_err();
        match err {
            ConfigError::Env { var, key, .. } => {
                assert_eq!(var, "VLLAMA_API_LISTEN");
                assert_eq!(key, "api.listen");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_key_has_an_env_variable() {
        let keys = env_keys();
        for var in [
            "VLLAMA_API_LISTEN",
            "VLLAMA_API_MAX_REQUEST_BODY",
            "VLLAMA_ADMIN_SOCKET",
            "VLLAMA_ADMIN_SOCKET_MODE",
            "VLLAMA_DAEMON_SHUTDOWN_GRACE",
            "VLLAMA_LOG_FILTER",
            "VLLAMA_LOG_FORMAT",
        ] {
            assert!(
                keys.contains_key(var) || ENV_NOT_KEYS.contains(&var),
                "{var} missing"
            );
        }
    }

    #[test]
    fn relative_paths_become_absolute_even_from_a_relative_config_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("v.toml"),
            "[paths]\nstate_dir = \"state\"\n[models.\"m\"]\nsource = \"../models/m\"\n[models.\"r\"]\nsource = \"org/name\"\n",
        )
        .unwrap();
        let cwd = std::env::current_dir().unwrap();
        let relative = pathdiff(dir.path(), &cwd);
        let loaded = load(
            &ConfigSource {
                path: relative.join("v.toml"),
                explicit: true,
            },
            Vec::new(),
        )
        .unwrap();
        assert!(
            loaded.config.paths.state_dir.is_absolute(),
            "{:?}",
            loaded.config.paths.state_dir
        );
        assert_eq!(loaded.config.paths.state_dir, dir.path().join("state"));
        let source = |m: &str| loaded.config.models[m].source.clone();
        let parent = dir.path().parent().unwrap();
        assert_eq!(
            source("m:latest"),
            parent.join("models/m").display().to_string()
        );
        assert_eq!(
            source("r:latest"),
            "org/name",
            "repositories stay as they are"
        );
    }

    /// `to` relative to `from` (both absolute), with `..` as needed.
    fn pathdiff(to: &Path, from: &Path) -> PathBuf {
        let common = to
            .components()
            .zip(from.components())
            .take_while(|(a, b)| a == b)
            .count();
        let mut rel = PathBuf::new();
        for _ in from.components().skip(common) {
            rel.push("..");
        }
        for c in to.components().skip(common) {
            rel.push(c);
        }
        rel
    }

    #[test]
    fn validation_names_the_key() {
        let source = |dir: &Path| ConfigSource {
            path: dir.join("v.toml"),
            explicit: true,
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("v.toml"), "[log]\nfilter = \"info,[bad\"\n").unwrap();
        let err = load(&source(dir.path()), env(&[])).unwrap_err();
        assert_eq!(err.key(), Some("log.filter"));

        std::fs::write(
            dir.path().join("v.toml"),
            "[admin]\nsocket = \"./x/../run/a.sock\"\n",
        )
        .unwrap();
        let loaded = load(&source(dir.path()), env(&[])).unwrap();
        assert_eq!(loaded.config.admin.socket, dir.path().join("run/a.sock"));

        std::fs::remove_file(dir.path().join("v.toml")).unwrap();
        assert!(matches!(
            load(&source(dir.path()), env(&[])),
            Err(ConfigError::Read { .. })
        ));
        let implicit = ConfigSource {
            explicit: false,
            ..source(dir.path())
        };
        let loaded = load(&implicit, env(&[])).unwrap();
        assert_eq!(loaded.file, None);
    }

    #[test]
    fn a_remote_model_has_a_url_and_no_source() {
        let valid = |text: &str| {
            let mut c = p(text)?;
            let file = Path::new("/etc/vllama/vllama.toml");
            validate(&mut c, Path::new("/etc/vllama"), file).map(|()| c)
        };
        let c = valid(
            "[models.\"big\"]\nremote = \"https://gpu-2.lan:8443/engines/\"\ntoken_file = \"token\"\n",
        )
        .unwrap();
        let m = &c.models["big:latest"];
        assert_eq!(m.remote.as_deref(), Some("https://gpu-2.lan:8443/engines/"));
        assert!(m.token_file.as_ref().unwrap().is_absolute());
        let url = RemoteUrl::parse("https://gpu-2.lan:8443/engines/").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.prefix.as_str()),
            ("gpu-2.lan", 8443, "/engines")
        );
        let url = RemoteUrl::parse("http://[::1]").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.prefix.as_str()),
            ("::1", 80, "")
        );
        for bad in [
            "gpu-2:8000",
            "ftp://x",
            "https://user:pw@x",
            "http://x/?a=1",
            "",
        ] {
            assert!(RemoteUrl::parse(bad).is_err(), "{bad}");
        }
        for (text, key) in [
            (
                "[models.\"b\"]\nremote = \"gpu-2:8000\"\n",
                "models.\"b\".remote",
            ),
            (
                "[models.\"b\"]\nremote = \"http://x\"\nsource = \"/m\"\n",
                "models.\"b\".remote",
            ),
            (
                "[models.\"b\"]\nsource = \"/m\"\ntoken_file = \"/t\"\n",
                "models.\"b\".token_file",
            ),
            ("[models.\"b\"]\nsource = \"\"\n", "models.\"b\".source"),
        ] {
            let err = valid(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn the_engines_old_key_is_read_and_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vllama.toml");
        std::fs::write(&path, "[engine]\nvllm = \"/opt/vllm/bin/vllm\"\n").unwrap();
        let source = ConfigSource {
            path: path.clone(),
            explicit: true,
        };
        let loaded = load(&source, env(&[])).unwrap();
        assert_eq!(
            loaded.config.engine.program,
            Path::new("/opt/vllm/bin/vllm")
        );
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.contains("[engine] vllm is now called program")),
            "{:?}",
            loaded.warnings
        );
        std::fs::write(&path, "[engine]\nprogram = \"/opt/vllm/bin/vllm\"\n").unwrap();
        let loaded = load(&source, env(&[])).unwrap();
        assert_eq!(
            loaded.config.engine.program,
            Path::new("/opt/vllm/bin/vllm")
        );
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }
}
