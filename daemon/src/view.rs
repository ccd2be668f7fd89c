//! What the scheduler shows of each engine, below its readers: the admin API, Ollama's
//! /api/ps, /health and the metrics' gauges read it without depending on the scheduler.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::engine::Phase;
use crate::model_info::ModelInfo;
use crate::units::KeepAlive;

/// What `vllamactl ps` shows of an engine.
#[derive(Debug, Clone)]
pub struct EngineView {
    pub model: String,
    pub served_name: String,
    pub id: String,
    pub phase: Phase,
    pub pid: Option<u32>,
    /// The engine seam's kind: `vllm`, `remote`.
    pub kind: &'static str,
    pub endpoint: String,
    pub gpus: Vec<u32>,
    pub gpu_memory_bytes: u64,
    pub pending: u32,
    /// Of those, the ones waiting for a turn (the engine runs all it can at once).
    pub queued: u32,
    pub expires_at: Option<SystemTime>,
    pub keep_alive: KeepAlive,
    pub restarts: u32,
    pub crashes: u32,
    pub last_error: Option<String>,
    pub load_duration: Option<Duration>,
    pub pinned: bool,
    pub info: Option<Arc<ModelInfo>>,
}
