//! Prometheus metrics: one scrape target for the daemon, its engines and its GPUs.
//!
//! Counters and histograms are updated where things happen (a request ends, an engine
//! changes state, a reload is tried); gauges are computed when scraped from the scheduler's
//! view and from the last [`sampler`] reading (NVML and `/proc` are never read on the request
//! path); each Ready engine's own `/metrics` is fetched with a short timeout and re-exposed
//! with a `model` label ([`engines`]).

pub mod engines;
pub mod process;
pub mod sampler;

use std::sync::Mutex;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::engine::{EngineEvent, EngineStatus, Phase};
use crate::view::EngineView;

/// Request latencies of LLM calls: milliseconds (a cached `/api/tags`) to minutes (a long
/// generation on a cold engine).
const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Time to first token: tens of milliseconds warm, up to a model load cold.
const TTFT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Engine loads: seconds on a warm page cache to many minutes for a large model.
const LOAD_BUCKETS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
];

const PHASES: [Phase; 6] = [
    Phase::Starting,
    Phase::Ready,
    Phase::Sleeping,
    Phase::Stopping,
    Phase::Stopped,
    Phase::Failed,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metric definition: {0}")]
    Prometheus(#[from] prometheus::Error),
}

/// The daemon's metrics. One per daemon, shared by `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    ttft: HistogramVec,
    prompt_tokens: IntCounterVec,
    generated_tokens: IntCounterVec,
    rejected: IntCounterVec,
    engine_starts: IntCounterVec,
    engine_load_failures: IntCounterVec,
    engine_crashes: IntCounterVec,
    engine_sleeps: IntCounterVec,
    engine_wakes: IntCounterVec,
    engine_load_duration: HistogramVec,
    reloads: IntCounterVec,
    auth_failures: IntCounterVec,
    samples: Mutex<sampler::Samples>,
    /// The runtimes whose tasks `vllama_runtime_tasks` counts.
    runtimes: Mutex<Vec<tokio::runtime::Handle>>,
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<HistogramVec, MetricsError> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let r = Registry::new();
        Ok(Metrics {
            requests: counter(&r, "vllama_requests_total", "Public API requests by route, model and HTTP status.", &["route", "model", "status"])?,
            request_duration: histogram(&r, "vllama_request_duration_seconds", "Time from a request's arrival to the end of its response (streams: the last byte).", &["route", "model"], REQUEST_BUCKETS)?,
            ttft: histogram(&r, "vllama_time_to_first_token_seconds", "Time from a generation request's arrival to its first token.", &["route", "model"], TTFT_BUCKETS)?,
            prompt_tokens: counter(&r, "vllama_prompt_tokens_total", "Prompt tokens of Ollama API requests (OpenAI pass-through: see vllm_prompt_tokens_total).", &["model"])?,
            generated_tokens: counter(&r, "vllama_generated_tokens_total", "Generated tokens of Ollama API requests (OpenAI pass-through: see vllm_generation_tokens_total).", &["model"])?,
            rejected: counter(&r, "vllama_requests_rejected_total", "Requests refused before reaching an engine, by reason (busy: the model's queue was full; key_rpm, key_tpm, key_concurrency: over an API key's limit, model empty).", &["model", "reason"])?,
            engine_starts: counter(&r, "vllama_engine_starts_total", "Engine processes spawned.", &["model"])?,
            engine_load_failures: counter(&r, "vllama_engine_load_failures_total", "Engine starts that failed or timed out before becoming ready.", &["model"])?,
            engine_crashes: counter(&r, "vllama_engine_crashes_total", "Engines that exited while serving, unasked.", &["model"])?,
            engine_sleeps: counter(&r, "vllama_engine_sleeps_total", "Engines put to sleep to make room.", &["model"])?,
            engine_wakes: counter(&r, "vllama_engine_wakes_total", "Sleeping engines woken.", &["model"])?,
            engine_load_duration: histogram(&r, "vllama_engine_load_duration_seconds", "Time from an engine's spawn to its first healthy answer.", &["model"], LOAD_BUCKETS)?,
            reloads: counter(&r, "vllama_config_reloads_total", "Configuration reloads by result (ok, failed).", &["result"])?,
            auth_failures: counter(&r, "vllama_auth_failures_total", "Public API requests refused for their API key, by reason (missing, invalid, model: not allowed for the key).", &["reason"])?,
            registry: r,
            samples: Mutex::new(sampler::Samples::default()),
            runtimes: Mutex::new(Vec::new()),
        })
    }

    /// The runtimes whose alive tasks `vllama_runtime_tasks` adds up.
    pub fn count_tasks_of(&self, runtimes: Vec<tokio::runtime::Handle>) {
        *self.runtimes.lock().unwrap_or_else(|p| p.into_inner()) = runtimes;
    }

    /// One public API request ended.
    pub fn request_done(&self, route: &str, model: &str, status: u16, elapsed: Duration) {
        let mut digits = itoa::Buffer::new();
        self.requests
            .with_label_values(&[route, model, digits.format(status)])
            .inc();
        self.request_duration
            .with_label_values(&[route, model])
            .observe(elapsed.as_secs_f64());
    }

    pub fn first_token(&self, route: &str, model: &str, after: Duration) {
        self.ttft
            .with_label_values(&[route, model])
            .observe(after.as_secs_f64());
    }

    pub fn tokens(&self, model: &str, prompt: u64, generated: u64) {
        self.prompt_tokens
            .with_label_values(&[model])
            .inc_by(prompt);
        self.generated_tokens
            .with_label_values(&[model])
            .inc_by(generated);
    }

    pub fn rejected(&self, model: &str, reason: &str) {
        self.rejected.with_label_values(&[model, reason]).inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    /// A request refused for its API key (`reason`: missing, invalid, model).
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// What the supervisor reports as an engine's life goes on.
    pub fn engine_event(&self, model: &str, event: EngineEvent, status: &EngineStatus) {
        let m = &[model];
        match event {
            EngineEvent::Spawned => self.engine_starts.with_label_values(m).inc(),
            EngineEvent::Changed { from, to } => match (from, to) {
                (Phase::Starting, Phase::Ready) => {
                    if let Some(d) = status.load_duration {
                        self.engine_load_duration
                            .with_label_values(m)
                            .observe(d.as_secs_f64());
                    }
                }
                (Phase::Starting, Phase::Failed) => {
                    self.engine_load_failures.with_label_values(m).inc()
                }
                (Phase::Ready | Phase::Sleeping, Phase::Failed) => {
                    self.engine_crashes.with_label_values(m).inc()
                }
                (Phase::Ready, Phase::Sleeping) => self.engine_sleeps.with_label_values(m).inc(),
                (Phase::Sleeping, Phase::Ready) => self.engine_wakes.with_label_values(m).inc(),
                _ => {}
            },
        }
    }

    /// Stores the sampler's latest reading.
    pub fn store_samples(&self, samples: sampler::Samples) {
        *self.samples.lock().unwrap_or_else(|p| p.into_inner()) = samples;
    }

    /// The latest GPU reading (for STATUS= and `vllamactl status`).
    pub fn gpus(&self) -> Vec<crate::gpu::GpuInfo> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .gpus
            .clone()
    }

    /// The exposition of everything but the engines' own metrics.
    pub fn render(
        &self,
        engines: &[EngineView],
        connections: crate::connections::Counts,
        uptime: Duration,
    ) -> String {
        let mut families = self.registry.gather();
        match self.gauges(engines, connections, uptime) {
            Ok(g) => families.extend(g),
            Err(e) => tracing::warn!(error = %e, "metrics: gauges left out"),
        }
        match shed_counter(connections) {
            Ok(c) => families.extend(c),
            Err(e) => tracing::warn!(error = %e, "metrics: connection counters left out"),
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "metrics: encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    fn gauges(
        &self,
        engines: &[EngineView],
        connections: crate::connections::Counts,
        uptime: Duration,
    ) -> Result<Vec<MetricFamily>, MetricsError> {
        let mut out = Vec::new();
        let mut gauge = |name: &str,
                         help: &str,
                         labels: &[&str],
                         values: &mut dyn FnMut(&GaugeVec)|
         -> Result<(), MetricsError> {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            values(&g);
            out.extend(g.collect());
            Ok(())
        };
        gauge(
            "vllama_build_info",
            "vllamad's version; always 1.",
            &["version"],
            &mut |g| g.with_label_values(&[crate::VERSION]).set(1.0),
        )?;
        gauge(
            "vllama_uptime_seconds",
            "Time since vllamad started.",
            &[],
            &mut |g| {
                g.with_label_values(&[] as &[&str])
                    .set(uptime.as_secs_f64())
            },
        )?;
        let own = process::read_self();
        gauge(
            "process_resident_memory_bytes",
            "vllamad's resident memory.",
            &[],
            &mut |g| {
                g.with_label_values(&[] as &[&str])
                    .set(own.resident_bytes as f64)
            },
        )?;
        gauge(
            "process_start_time_seconds",
            "When vllamad started, in seconds since the Unix epoch.",
            &[],
            &mut |g| {
                g.with_label_values(&[] as &[&str])
                    .set(own.start_time_seconds)
            },
        )?;
        gauge(
            "process_open_fds",
            "vllamad's open file descriptors.",
            &[],
            &mut |g| g.with_label_values(&[] as &[&str]).set(own.open_fds as f64),
        )?;
        gauge(
            "vllama_runtime_tasks",
            "Tasks alive in vllamad's async runtimes (connections, streams, timers, engine supervisors).",
            &[],
            &mut |g| {
                let n: usize = self
                    .runtimes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|h| h.metrics().num_alive_tasks())
                    .sum();
                g.with_label_values(&[] as &[&str]).set(n as f64);
            },
        )?;
        gauge(
            "vllama_connections",
            "Open connections on the public listener; header-less: no request read yet.",
            &["state"],
            &mut |g| {
                let c = connections;
                g.with_label_values(&["open"]).set(c.open as f64);
                g.with_label_values(&["headerless"])
                    .set(c.headerless as f64);
            },
        )?;
        gauge(
            "vllama_engine_state",
            "1 for the state each model's engine is in, 0 for the others.",
            &["model", "state"],
            &mut |g| {
                for e in engines {
                    for phase in PHASES {
                        let v = if e.phase == phase { 1.0 } else { 0.0 };
                        g.with_label_values(&[&e.model, &phase.to_string()]).set(v);
                    }
                }
            },
        )?;
        gauge(
            "vllama_requests_in_flight",
            "Requests on a ready engine.",
            &["model"],
            &mut |g| {
                for e in engines {
                    let n = if e.phase == Phase::Ready {
                        e.pending.saturating_sub(e.queued)
                    } else {
                        0
                    };
                    g.with_label_values(&[&e.model]).set(f64::from(n));
                }
            },
        )?;
        gauge(
            "vllama_requests_queued",
            "Requests waiting: for their model's engine to load or wake, or for a turn at it (it runs engine.max_in_flight at once).",
            &["model"],
            &mut |g| {
                for e in engines {
                    let n = if e.phase == Phase::Ready {
                        e.queued
                    } else {
                        e.pending
                    };
                    g.with_label_values(&[&e.model]).set(f64::from(n));
                }
            },
        )?;
        gauge(
            "vllama_engine_gpu_memory_reserved_bytes",
            "GPU memory promised to each engine at placement.",
            &["model"],
            &mut |g| {
                for e in engines {
                    g.with_label_values(&[&e.model])
                        .set(e.gpu_memory_bytes as f64);
                }
            },
        )?;
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        gauge(
            "vllama_engine_resident_memory_bytes",
            "Resident memory of each engine's processes (sampled).",
            &["model"],
            &mut |g| {
                for s in &samples.engines {
                    g.with_label_values(&[&s.model])
                        .set(s.resident_bytes as f64);
                }
            },
        )?;
        gauge(
            "vllama_engine_gpu_memory_bytes",
            "GPU memory used by each engine's processes, per NVML (sampled).",
            &["model"],
            &mut |g| {
                for s in &samples.engines {
                    g.with_label_values(&[&s.model]).set(s.gpu_bytes as f64);
                }
            },
        )?;
        let gpu_labels = &["gpu", "name"];
        type Read = fn(&crate::gpu::GpuInfo) -> Option<f64>;
        let readings: [(&str, &str, Read); 5] = [
            (
                "vllama_gpu_memory_total_bytes",
                "GPU memory, total (NVML).",
                |g| Some(g.total_bytes as f64),
            ),
            (
                "vllama_gpu_memory_used_bytes",
                "GPU memory in use by any process (NVML).",
                |g| Some(g.used_bytes as f64),
            ),
            (
                "vllama_gpu_utilization_ratio",
                "Share of the last sample period the GPU was busy, 0 to 1 (NVML).",
                |g| g.utilization_percent.map(|p| f64::from(p) / 100.0),
            ),
            (
                "vllama_gpu_temperature_celsius",
                "GPU temperature (NVML).",
                |g| g.temperature_celsius.map(f64::from),
            ),
            ("vllama_gpu_power_watts", "GPU power draw (NVML).", |g| {
                g.power_milliwatts.map(|mw| f64::from(mw) / 1000.0)
            }),
        ];
        for (name, help, read) in readings {
            if samples.gpus.is_empty() {
                break;
            }
            gauge(name, help, gpu_labels, &mut |g| {
                for gpu in &samples.gpus {
                    if let Some(v) = read(gpu) {
                        g.with_label_values(&[&gpu.index.to_string(), &gpu.name])
                            .set(v);
                    }
                }
            })?;
        }
        // A family without samples is not valid exposition.
        out.retain(|f| !f.get_metric().is_empty());
        Ok(out)
    }
}

/// `vllama_connections_shed_total`: kept by the connection registry, rendered here.
fn shed_counter(c: crate::connections::Counts) -> Result<Vec<MetricFamily>, MetricsError> {
    let counter = IntCounterVec::new(
        Opts::new(
            "vllama_connections_shed_total",
            "Connections vllamad closed to keep serving other clients: fd_limit (the oldest idle or header-less one, when out of descriptors), per_client (over api.max_headerless_per_client), refused (answered 503: out of descriptors with every connection busy).",
        ),
        &["reason"],
    )?;
    for (reason, n) in [
        ("fd_limit", c.shed_fd_limit),
        ("per_client", c.shed_per_client),
        ("refused", c.refused_fd_limit),
    ] {
        counter.with_label_values(&[reason]).inc_by(n);
    }
    Ok(counter.collect())
}

/// The bounded `route` label of a request path: its route, or `other`.
pub fn route_label(path: &str) -> &'static str {
    const ROUTES: &[&str] = &[
        "/",
        "/api/version",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/tags",
        "/api/show",
        "/api/ps",
        "/api/pull",
        "/api/delete",
        "/api/copy",
        "/api/create",
        "/api/push",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/tokenize",
        "/detokenize",
        "/metrics",
    ];
    if let Some(r) = ROUTES.iter().find(|r| **r == path) {
        return r;
    }
    if path.starts_with("/v1/models/") {
        return "/v1/models/{model}";
    }
    if let Some(rest) = path.strip_prefix("/v1/responses/") {
        return if rest.ends_with("/cancel") {
            "/v1/responses/{id}/cancel"
        } else {
            "/v1/responses/{id}"
        };
    }
    if path.starts_with("/api/blobs/") {
        return "/api/blobs/{digest}";
    }
    "other"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_bounded() {
        assert_eq!(route_label("/api/chat"), "/api/chat");
        assert_eq!(route_label("/v1/models/qwen"), "/v1/models/{model}");
        assert_eq!(route_label("/v1/messages"), "/v1/messages");
        assert_eq!(route_label("/v1/responses/resp_1"), "/v1/responses/{id}");
        assert_eq!(
            route_label("/v1/responses/resp_1/cancel"),
            "/v1/responses/{id}/cancel"
        );
        assert_eq!(route_label("/etc/passwd"), "other");
    }

    #[test]
    fn counters_and_histograms_render() {
        let m = Metrics::new().unwrap();
        m.request_done("/api/chat", "qwen:0.5b", 200, Duration::from_millis(30));
        m.reload(false);
        let text = m.render(
            &[],
            crate::connections::Counts::default(),
            Duration::from_secs(3),
        );
        assert!(
            text.contains(
                "vllama_requests_total{model=\"qwen:0.5b\",route=\"/api/chat\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("vllama_request_duration_seconds_bucket{model=\"qwen:0.5b\",route=\"/api/chat\",le=\"0.05\"} 1"), "{text}");
        assert!(text.contains("vllama_config_reloads_total{result=\"failed\"} 1"));
        assert!(text.contains("vllama_uptime_seconds 3"));
        assert!(!text.contains("vllama_gpu_"), "no GPU, no GPU families");
        assert!(
            !text.contains("vllama_engine_state"),
            "no engines, no empty family"
        );
    }
}
