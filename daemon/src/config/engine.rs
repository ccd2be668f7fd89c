//! `[paths]`, `[engine]` and `[models."name"]`: where state lives, how engines are started,
//! and the models vllamad may serve.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, HumanDuration, KeepAlive};

/// `[paths]`: the daemon's directories (systemd creates them: StateDirectory= etc.).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathsConfig {
    /// Model store (`<state_dir>/hub`, Hugging Face cache layout; engines get HF_HOME here).
    pub state_dir: PathBuf,
    /// Engine sockets (`engines/<id>.sock`) and each engine's TMPDIR (`tmp/<id>`).
    pub runtime_dir: PathBuf,
    /// vLLM's compile cache (`VLLM_CACHE_ROOT=<cache_dir>/vllm`), kept across restarts.
    pub cache_dir: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            state_dir: "/var/lib/vllama".into(),
            runtime_dir: "/run/vllama".into(),
            cache_dir: "/var/cache/vllama".into(),
        }
    }
}

/// How the daemon reaches an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `--uds <runtime_dir>/engines/<id>.sock` (private: the directory is 0700).
    Uds,
    /// `--host 127.0.0.1 --port <free port>`, for vLLM builds without `--uds`.
    Tcp,
}

/// `[engine]`: defaults for every engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// The engine's executable (`vllm`). `vllamactl engine install` installs it when it is
    /// `<venv>/bin/vllm` (`<venv>` becomes a link to the build it made). Also read from the
    /// key's old name, `vllm` (with a warning).
    #[serde(alias = "vllm")]
    pub program: PathBuf,
    /// The Python `vllamactl engine install` makes the engine's venv with.
    pub python: PathBuf,
    /// Extra arguments for every `vllm serve`.
    pub args: Vec<String>,
    /// Extra environment for every engine.
    pub env: BTreeMap<String, String>,
    /// How long an engine may take to answer `/health` 200.
    pub load_timeout: HumanDuration,
    /// After SIGTERM, how long before the engine's process group is killed.
    pub stop_grace: HumanDuration,
    /// How often `/health` is polled while an engine starts.
    pub health_interval: HumanDuration,
    pub transport: Transport,
    /// How long an idle model stays loaded (Ollama's keep_alive: "5m", 0 = unload when
    /// idle, negative = forever). A request's keep_alive replaces it for that model.
    pub keep_alive: KeepAlive,
    /// Requests per model, waiting or running; more are answered 503 (server busy).
    pub max_queue: u32,
    /// Requests one engine runs at once (vLLM's `--max-num-seqs`, passed unless a model's
    /// args set it); more wait in vllamad, which gives turns round-robin between API keys
    /// (or client addresses), so one heavy client cannot starve the others. 0: vLLM's own
    /// default where the engine runs (1024 on an H100/H200, 256 on smaller GPUs, 128 on a
    /// CPU), mirrored and passed.
    pub max_in_flight: u32,
    /// Engines loaded at once; 0 = 3 per GPU, or without a GPU as many as host memory holds.
    pub max_loaded: u32,
    /// Crash restarts back off from 1 s, doubling up to this.
    pub restart_backoff_max: HumanDuration,
    /// An engine Ready this long resets the backoff.
    pub stable_after: HumanDuration,
    /// GPU memory left free on each GPU, never given to engines.
    pub gpu_memory_reserve: ByteSize,
    /// The context length (`--max-model-len`) of a model that sets no `max_model_len`,
    /// capped at the model's own (Ollama's `OLLAMA_CONTEXT_LENGTH`); 0: the model's own.
    pub context_length: u32,
    /// A stream whose engine sends nothing for this long fails with an error, and the engine
    /// is restarted if it does not answer `/health` (a hung EngineCore). Generous: a long
    /// prompt's prefill or a preempted request can pause a stream for a while.
    pub stall_timeout: HumanDuration,
    /// Engines keep Responses answers in memory for `GET /v1/responses/{id}`,
    /// `previous_response_id` and background mode (`VLLM_ENABLE_RESPONSES_API_STORE=1`:
    /// vLLM never evicts them, so memory grows with every response until the engine stops).
    pub responses_store: bool,
    /// How engines run: `auto` (units of their own under systemd when vllamad.service says
    /// so, else children), `systemd` (`vllama-engine@<model>.service`: they outlive a restart
    /// of vllamad), `process` (children of vllamad, gone with it).
    pub launch: LaunchMode,
}

/// `[engine] launch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LaunchMode {
    #[default]
    Auto,
    Systemd,
    Process,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            program: "/var/lib/vllama/venv/bin/vllm".into(),
            python: "python3".into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            load_timeout: HumanDuration::from_secs(600),
            stop_grace: HumanDuration::from_secs(30),
            health_interval: HumanDuration(std::time::Duration::from_millis(25)),
            transport: Transport::Uds,
            keep_alive: KeepAlive::For(std::time::Duration::from_secs(300)),
            max_queue: 512,
            max_in_flight: 0,
            max_loaded: 0,
            restart_backoff_max: HumanDuration::from_secs(60),
            stable_after: HumanDuration::from_secs(60),
            gpu_memory_reserve: ByteSize(512 * ByteSize::MIB),
            context_length: 0,
            stall_timeout: HumanDuration::from_secs(300),
            responses_store: false,
            launch: LaunchMode::Auto,
        }
    }
}

/// vLLM's distributed executor backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    Mp,
    Ray,
}

/// How much GPU memory a model's engine may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GpuMemory {
    /// Weights on disk × 1.2 plus 1 GiB of KV cache, at most 90% of a GPU.
    Auto,
    /// A fraction of each GPU's total memory (vLLM's `--gpu-memory-utilization`).
    Fraction(f64),
    /// An absolute amount per GPU.
    Bytes(ByteSize),
}

impl Serialize for GpuMemory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GpuMemory::Auto => s.serialize_str("auto"),
            GpuMemory::Fraction(f) => s.serialize_f64(*f),
            GpuMemory::Bytes(b) => s.collect_str(b),
        }
    }
}

impl<'de> Deserialize<'de> for GpuMemory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Float(f64),
            Text(String),
        }
        let bad = |what: String| {
            serde::de::Error::custom(format!(
                "`{what}` is not a GPU memory amount: write \"auto\", a fraction such as 0.45, or a size such as \"8GiB\""
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Float(f) if f > 0.0 && f <= 1.0 => Ok(GpuMemory::Fraction(f)),
            Raw::Float(f) => Err(bad(f.to_string())),
            Raw::Text(t) if t == "auto" => Ok(GpuMemory::Auto),
            Raw::Text(t) => ByteSize::parse(&t)
                .map(GpuMemory::Bytes)
                .map_err(|_| bad(t)),
        }
    }
}

/// `[models."name"]`: one servable model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A local model directory, or a Hugging Face repository (`org/name`, `org/name@rev`)
    /// found in the model store; empty for a remote engine.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// An engine that runs elsewhere, served under this name: `http(s)://host:port[/prefix]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The remote's token (its first line, sent as `Authorization: Bearer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Certificates trusted for the remote's TLS besides the system's (a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The name the engine serves it under (default: the model's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    #[serde(default = "one")]
    pub tensor_parallel: u32,
    /// Pipeline stages (vLLM's `--pipeline-parallel-size`): across machines with `executor =
    /// "ray"`.
    #[serde(default = "one")]
    pub pipeline_parallel: u32,
    /// How vLLM runs its workers: `mp` (processes on this machine, vLLM's default) or `ray`
    /// (a Ray cluster the operator runs: docs/SCALING.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<Executor>,
    /// The Ray cluster's address (`RAY_ADDRESS`, e.g. `10.0.0.1:6379`) for `executor = "ray"`;
    /// default: Ray's own (a cluster started on this machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ray_address: Option<String>,
    #[serde(default = "auto")]
    pub gpu_memory: GpuMemory,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Never unloaded, restarted after a crash without waiting for a request.
    #[serde(default)]
    pub pinned: bool,
    /// Started when the daemon starts.
    #[serde(default)]
    pub preload: bool,
    /// Put to sleep (weights to CPU RAM) instead of stopping when GPU memory is needed.
    #[serde(default)]
    pub sleep: bool,
    /// This model's own default keep_alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<KeepAlive>,
    /// vLLM's `--tool-call-parser` (with `--enable-auto-tool-choice`): unset = chosen from
    /// the model's family (docs/MODELS.md), "none" = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_parser: Option<String>,
    /// vLLM's `--reasoning-parser`: unset = from the family, "none" = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_parser: Option<String>,
    /// The engine unit's memory limit (systemd's `MemoryMax=`), when engines are units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<ByteSize>,
    /// The engine unit's CPU share (systemd's `CPUWeight=`, 1–10000; 100 is the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
}

fn one() -> u32 {
    1
}

fn auto() -> GpuMemory {
    GpuMemory::Auto
}

impl ModelConfig {
    /// A model with every default, served from `source`.
    pub fn from_source(source: impl Into<String>) -> Self {
        ModelConfig {
            source: source.into(),
            remote: None,
            token_file: None,
            ca_file: None,
            served_name: None,
            max_model_len: None,
            dtype: None,
            tensor_parallel: 1,
            pipeline_parallel: 1,
            executor: None,
            ray_address: None,
            gpu_memory: GpuMemory::Auto,
            args: Vec::new(),
            env: BTreeMap::new(),
            pinned: false,
            preload: false,
            sleep: false,
            keep_alive: None,
            tool_parser: None,
            reasoning_parser: None,
            memory_max: None,
            cpu_weight: None,
        }
    }
}

/// A remote engine's URL, taken apart: `http(s)://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    pub host: String,
    pub port: u16,
    /// The path without its trailing `/` (`""` for none).
    pub prefix: String,
}

impl RemoteUrl {
    pub fn parse(url: &str) -> Result<RemoteUrl, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or("it has no http:// or https://")?;
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err("only http:// and https:// are served".into()),
        };
        let authority = uri.authority().cloned().ok_or("it has no host")?;
        if authority.as_str().contains('@') {
            return Err("put credentials in token_file, not in the URL".into());
        }
        if uri.query().is_some() {
            return Err("it has a query".into());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(default_port);
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(RemoteUrl {
            scheme,
            authority,
            host,
            port,
            prefix,
        })
    }
}
