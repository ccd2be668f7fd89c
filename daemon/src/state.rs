//! The daemon's shared state: the configuration in force (swapped atomically on reload),
//! the listeners, and the facts `vllamactl status` reports.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;
use vllama_proto::{ConfigInfo, ListenerInfo, Status};

use crate::config::ConfigSource;
use crate::logging::LogHandle;
use crate::notify::Notifier;
use crate::scheduler::{EngineView, Scheduler};

pub use crate::active_config::ActiveConfig;

/// The daemon's working parts, made before it.
#[derive(Debug)]
pub struct Services {
    pub scheduler: Scheduler,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub pulls: crate::store::pull::Pulls,
    pub installer: crate::install::Installer,
    /// Background work started by requests (progress streams); shutdown waits for it.
    pub tasks: tokio_util::task::TaskTracker,
}

/// State shared by every task of the daemon.
#[derive(Debug)]
pub struct Daemon {
    pub started: Instant,
    pub started_at: SystemTime,
    pub source: ConfigSource,
    pub listeners: Vec<ListenerInfo>,
    pub notifier: Notifier,
    pub log: Option<LogHandle>,
    pub scheduler: Scheduler,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub pulls: crate::store::pull::Pulls,
    pub installer: crate::install::Installer,
    pub tasks: tokio_util::task::TaskTracker,
    /// Which model made each recent Responses answer (`GET /v1/responses/{id}`).
    pub responses: Arc<crate::response_ids::ResponseIds>,
    /// The API keys in force (empty: none required on a loopback listener).
    keys: std::sync::RwLock<Arc<crate::keys::KeyRing>>,
    /// Failed authentications, for the log's rate limit.
    pub(crate) auth_log: Mutex<crate::connections::LogEvery>,
    /// What each client address has used, for `api.client_limits`.
    pub clients: crate::clients::Clients,
    /// The public listener's connections (shedding when out of descriptors).
    pub connections: Arc<crate::connections::Connections>,
    /// The public listener is on a loopback address: the DNS-rebinding guard applies.
    pub api_on_loopback: bool,
    config: watch::Sender<Arc<ActiveConfig>>,
    last_reload_error: Mutex<Option<String>>,
    /// One reload at a time (SIGHUP and the admin route may race).
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
}

impl Daemon {
    pub fn new(
        source: ConfigSource,
        config: watch::Sender<Arc<ActiveConfig>>,
        listeners: Vec<ListenerInfo>,
        notifier: Notifier,
        log: Option<LogHandle>,
        services: Services,
    ) -> Self {
        let Services {
            scheduler,
            metrics,
            pulls,
            installer,
            tasks,
        } = services;
        let api_on_loopback = listeners
            .iter()
            .find(|l| l.name == crate::listeners::API)
            .and_then(|l| l.address.parse::<std::net::SocketAddr>().ok())
            .is_some_and(|a| a.ip().is_loopback());
        Daemon {
            api_on_loopback,
            started: Instant::now(),
            started_at: SystemTime::now(),
            source,
            listeners,
            notifier,
            log,
            scheduler,
            metrics,
            pulls,
            installer,
            tasks,
            responses: Arc::default(),
            connections: Arc::default(),
            clients: crate::clients::Clients::default(),
            keys: std::sync::RwLock::default(),
            auth_log: Mutex::new(crate::connections::LogEvery::new(
                std::time::Duration::from_secs(10),
            )),
            config,
            last_reload_error: Mutex::new(None),
            reload_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The API keys in force. Cheap: an `Arc` clone.
    pub fn keys(&self) -> Arc<crate::keys::KeyRing> {
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(crate) fn set_keys(&self, ring: crate::keys::KeyRing) {
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let ring = ring.carry_usage(&keys);
        *keys = Arc::new(ring);
    }

    /// The public API listens on an address other machines can reach.
    pub fn exposed(&self) -> bool {
        self.listeners
            .iter()
            .filter(|l| l.name == crate::listeners::API)
            .any(|l| {
                l.address
                    .parse::<std::net::SocketAddr>()
                    .is_ok_and(|a| !a.ip().is_loopback())
            })
    }

    /// The configuration in force. Cheap: an `Arc` clone.
    pub fn config(&self) -> Arc<ActiveConfig> {
        self.config.borrow().clone()
    }

    pub(crate) fn publish(&self, active: ActiveConfig) {
        self.config.send_replace(Arc::new(active));
        self.set_reload_error(None);
    }

    pub(crate) fn set_reload_error(&self, error: Option<String>) {
        *self
            .last_reload_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = error;
    }

    pub fn last_reload_error(&self) -> Option<String> {
        self.last_reload_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The short human state, also sent to systemd as `STATUS=`.
    pub fn status_line(&self) -> String {
        let api = self
            .listeners
            .iter()
            .find(|l| l.name == crate::listeners::API)
            .map_or("?", |l| l.address.as_str());
        let mut line = format!("serving on {api}; {}", self.scheduler.summary());
        for gpu in self.metrics.gpus() {
            if gpu.total_bytes > 0 {
                let used = gpu.used_bytes as f64 / gpu.total_bytes as f64 * 100.0;
                line.push_str(&format!("; GPU{} {used:.0}% memory", gpu.index));
            }
        }
        if self.last_reload_error().is_some() {
            line.push_str("; last reload failed (see vllamactl status)");
        }
        line
    }

    pub fn status(&self) -> Status {
        let active = self.config();
        Status {
            version: crate::VERSION.to_string(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            started_at: rfc3339(self.started_at),
            state: self.status_line(),
            config: ConfigInfo {
                path: active.file.as_ref().map(|p| p.display().to_string()),
                generation: active.generation,
                loaded_at: rfc3339(active.loaded_at),
                last_reload_error: self.last_reload_error(),
            },
            listeners: self.listeners.clone(),
            engines: self.scheduler.engines().iter().map(engine_info).collect(),
            gpus: self
                .metrics
                .gpus()
                .into_iter()
                .map(|g| vllama_proto::GpuStatus {
                    index: g.index,
                    name: g.name,
                    memory_total_bytes: g.total_bytes,
                    memory_used_bytes: g.used_bytes,
                    utilization_percent: g.utilization_percent,
                    temperature_celsius: g.temperature_celsius,
                    power_watts: g.power_milliwatts.map(|mw| f64::from(mw) / 1000.0),
                })
                .collect(),
        }
    }
}

pub fn engine_info(v: &EngineView) -> vllama_proto::EngineInfo {
    vllama_proto::EngineInfo {
        model: v.model.clone(),
        served_name: v.served_name.clone(),
        id: v.id.clone(),
        state: v.phase.to_string(),
        pid: v.pid,
        kind: v.kind.to_string(),
        endpoint: v.endpoint.clone(),
        gpus: v.gpus.clone(),
        gpu_memory_bytes: v.gpu_memory_bytes,
        pending: v.pending,
        expires_at: v.expires_at.map(rfc3339),
        keep_alive: v.keep_alive.to_string(),
        restarts: v.restarts,
        crashes: v.crashes,
        last_error: v.last_error.clone(),
        load_seconds: v.load_duration.map(|d| d.as_secs_f64()),
        pinned: v.pinned,
    }
}

pub use crate::units::rfc3339;
