//! `GET /health`: what a load balancer's check needs of one vllamad node, from memory only
//! (the scheduler's view and the sampler's last GPU reading; never NVML or disk on the
//! request path). 200 while it takes requests, 503 once it drains for shutdown, so that a
//! balancer stops sending before the listener closes.

use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::http::{self, Body};
use crate::state::Daemon;

#[derive(Debug, Serialize)]
struct Health {
    /// `ok`, or `draining` (shutting down).
    status: &'static str,
    ready: bool,
    version: &'static str,
    /// Models with an engine that serves now (ready, or asleep and woken on demand).
    loaded: Vec<String>,
    /// Every engine, whatever its state.
    models: Vec<Model>,
    /// Requests waiting for a turn at an engine, all models together.
    queue_depth: u32,
    /// The sampler's last reading; absent without GPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_memory_free_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_memory_total_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Model {
    name: String,
    kind: &'static str,
    state: String,
    /// Requests holding the engine: waiting for it or running on it.
    pending: u32,
    queued: u32,
}

pub fn respond(daemon: &Daemon) -> Response<Body> {
    let engines = daemon.scheduler.engines();
    let ready = daemon.scheduler.accepting();
    let gpus = daemon.metrics.gpus();
    let sum = |f: fn(&crate::gpu::GpuInfo) -> u64| {
        (!gpus.is_empty()).then(|| gpus.iter().map(f).sum::<u64>())
    };
    let health = Health {
        status: if ready { "ok" } else { "draining" },
        ready,
        version: crate::VERSION,
        loaded: engines
            .iter()
            .filter(|e| {
                matches!(
                    e.phase,
                    crate::engine::Phase::Ready | crate::engine::Phase::Sleeping
                )
            })
            .map(|e| e.model.clone())
            .collect(),
        queue_depth: engines.iter().map(|e| e.queued).sum(),
        models: engines
            .iter()
            .map(|e| Model {
                name: e.model.clone(),
                kind: e.kind,
                state: e.phase.to_string(),
                pending: e.pending,
                queued: e.queued,
            })
            .collect(),
        gpu_memory_free_bytes: sum(|g| g.free_bytes),
        gpu_memory_total_bytes: sum(|g| g.total_bytes),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    http::json(status, &health)
}
