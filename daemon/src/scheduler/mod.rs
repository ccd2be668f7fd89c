//! The scheduler: the one place that decides which engine serves a model. It starts engines
//! on demand (once, however many requests ask at the same time), bounds each model's queue,
//! unloads idle models when their keep_alive ends, places engines on GPUs within their
//! memory, and makes room by putting idle engines to sleep or stopping them, least recently
//! used first, never pinned or busy ones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::active_config::ActiveConfig;
use crate::config::{Config, ModelConfig};
use crate::engine::{vllm, Endpoint, Engine, EngineError, EngineSpec, Phase};
use crate::gpu::GpuProbe;
use crate::model_info::ModelInfo;
use crate::models::{self, ModelError, ModelName};
use crate::placement::{self, Placement, Reservation, Shortfall};
use crate::units::{ByteSize, KeepAlive};

mod adopt;
mod changed;
mod keep_alive;
mod launch;
mod room;

pub use launch::{Launcher, VllmLauncher};
pub use room::max_loaded;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SchedError {
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Ollama's wording: clients retry on it.
    #[error("server busy, please try again.  maximum pending requests exceeded")]
    Busy { model: String, limit: u32 },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{shortfall}; models {busy} are busy")]
    NoGpuRoom { shortfall: Shortfall, busy: String },
    #[error("{loaded} models are loaded (engine.max_loaded) and none can be unloaded now: {busy} are busy or pinned")]
    TooManyLoaded { loaded: usize, busy: String },
    #[error("not enough host memory for another engine: it needs {}, {} of {} are promised to loaded engines, and none can be unloaded now ({busy} are busy or pinned); give engines a smaller --kv-cache-memory-bytes", ByteSize(*need), ByteSize(*used), ByteSize(*budget))]
    NoHostRoom {
        need: u64,
        used: u64,
        budget: u64,
        busy: String,
    },
    #[error("vllamad is shutting down")]
    ShuttingDown,
    #[error("model \"{0}\" is not loaded")]
    NotLoaded(String),
    /// An operator's `vllamactl unload` is draining it.
    #[error("model \"{0}\" is being unloaded (vllamactl unload): it takes no new requests until its requests in flight end; retry in a moment to start it again")]
    Unloading(String),
    /// A model's tool or reasoning parser that the installed vLLM does not know.
    #[error("{0}")]
    Profile(String),
    #[error(transparent)]
    Remote(#[from] crate::engine::remote::RemoteError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl SchedError {
    /// The HTTP status of a scheduling error, and its error type (OpenAI's names; the
    /// Ollama and admin APIs use the status alone): the one place they are mapped.
    pub fn status(&self) -> (hyper::StatusCode, &'static str) {
        use hyper::StatusCode;
        match self {
            SchedError::Model(ModelError::InvalidName { .. }) => {
                (StatusCode::BAD_REQUEST, "invalid_request_error")
            }
            SchedError::Model(_) | SchedError::NotLoaded(_) => {
                (StatusCode::NOT_FOUND, "not_found_error")
            }
            SchedError::Busy { .. } | SchedError::ShuttingDown | SchedError::Unloading(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "server_busy")
            }
            SchedError::NoGpuRoom { .. }
            | SchedError::TooManyLoaded { .. }
            | SchedError::NoHostRoom { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "insufficient_resources")
            }
            SchedError::Engine(EngineError::Timeout { .. }) => {
                (StatusCode::GATEWAY_TIMEOUT, "engine_timeout")
            }
            SchedError::Engine(EngineError::Unreachable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "engine_unavailable")
            }
            SchedError::Engine(_)
            | SchedError::Internal(_)
            | SchedError::Profile(_)
            | SchedError::Remote(_) => (StatusCode::INTERNAL_SERVER_ERROR, "engine_error"),
        }
    }
}

/// How [`Scheduler::unload`] treats the requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unload {
    /// Wait for them; refuse new ones meanwhile.
    Drain,
    /// Stop the engine under them.
    Force,
}

/// One model's engine and its bookkeeping.
#[derive(Debug)]
struct Slot {
    engine: Arc<Engine>,
    /// The name the engine serves the model under (shared with every lease).
    served_name: Arc<str>,
    /// Requests holding a lease: waiting for the engine or running on it.
    pending: u32,
    keep_alive: KeepAlive,
    /// When an idle model is unloaded; `None` while busy or kept forever.
    expires_at: Option<(Instant, SystemTime)>,
    last_used: Instant,
    /// Changes on every acquire and release, so stale keep_alive timers do nothing.
    epoch: u64,
    /// The slot's one keep_alive timer.
    expiry: keep_alive::Expiry,
    pinned: bool,
    sleep: bool,
    /// An unload waits for the requests in flight; new ones are refused meanwhile.
    draining: bool,
    /// Host memory promised to a CPU engine (0 with GPUs).
    host_need: u64,
    placement: Option<Placement>,
    /// What the folder says: capabilities, context length, weights' size.
    info: Arc<ModelInfo>,
    /// The `--max-model-len` the engine was started with (None: the model's own).
    max_model_len: Option<u32>,
    /// Fair turns at the engine, bounded by what it runs at once.
    gate: Arc<crate::fair::Gate>,
}

impl Slot {
    /// The context the running engine serves.
    fn context(&self) -> Option<u64> {
        self.max_model_len
            .map(u64::from)
            .or(self.info.context_length)
    }
}

impl Slot {
    fn loaded(&self) -> bool {
        matches!(self.engine.status().phase, Phase::Starting | Phase::Ready)
    }

    /// Loaded on this machine: what GPU and memory accounting, `max_loaded` and making room
    /// count (a remote engine costs nothing here).
    fn loaded_here(&self) -> bool {
        self.engine.spec.kind.local() && self.loaded()
    }

    fn evictable(&self) -> bool {
        self.pending == 0 && !self.pinned
    }
}

struct Inner {
    config: watch::Receiver<Arc<ActiveConfig>>,
    probe: Arc<dyn GpuProbe>,
    /// Engine supervisors, keep-alive timers, preloads and restarts: on the runtime that
    /// made the scheduler, whichever thread's request starts them.
    background: crate::tasks::Background,
    /// Ends keep_alive timers and preloads at shutdown.
    cancel: CancellationToken,
    on_change: Arc<dyn Fn() + Send + Sync>,
    metrics: Arc<crate::metrics::Metrics>,
    slots: Mutex<HashMap<ModelName, Slot>>,
    /// Engine starts, stops for room, and unloads are decided one at a time, so two of them
    /// never promise the same GPU memory.
    placing: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    shutting_down: std::sync::atomic::AtomicBool,
    /// Woken whenever a model's last lease is released (draining unloads wait on it).
    idle: tokio::sync::Notify,
    /// The parser names each engine program accepts, read once per build.
    parsers: crate::engine::parsers::Parsers,
    /// Makes local engines' specs.
    launcher: Arc<dyn Launcher>,
    /// Other names of models (Ollama's copy), read at start and reload.
    aliases: Arc<crate::aliases::Aliases>,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

/// A request's hold on a model's engine: while any lease lives, the model is not unloaded;
/// when the last one drops, its keep_alive timer starts.
#[derive(Debug)]
pub struct Lease {
    scheduler: Weak<Inner>,
    model: ModelName,
    engine: Arc<Engine>,
    served_name: Arc<str>,
    info: Arc<ModelInfo>,
    gate: Arc<crate::fair::Gate>,
    /// The request's turn at the engine, once it came (dropped with the lease).
    turn: Option<crate::fair::Turn>,
    /// Time spent waiting for the engine to start (Ollama's load_duration).
    pub load_duration: Duration,
}

impl Lease {
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
    pub fn served_name(&self) -> &str {
        &self.served_name
    }
    pub fn model(&self) -> &ModelName {
        &self.model
    }
    /// What the model's folder says about it (capabilities, context length…).
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(inner) = self.scheduler.upgrade() {
            Scheduler { inner }.release(&self.model);
        }
    }
}

pub use crate::view::EngineView;

impl Scheduler {
    pub fn new(
        config: watch::Receiver<Arc<ActiveConfig>>,
        probe: Arc<dyn GpuProbe>,
        tracker: TaskTracker,
        metrics: Arc<crate::metrics::Metrics>,
        on_change: Arc<dyn Fn() + Send + Sync>,
    ) -> Scheduler {
        Scheduler::with_launcher(
            config,
            probe,
            tracker,
            (metrics, on_change),
            Arc::new(VllmLauncher::default()),
        )
    }

    /// [`Scheduler::new`] with local engines made by `launcher`.
    pub fn with_launcher(
        config: watch::Receiver<Arc<ActiveConfig>>,
        probe: Arc<dyn GpuProbe>,
        tracker: TaskTracker,
        (metrics, on_change): (Arc<crate::metrics::Metrics>, Arc<dyn Fn() + Send + Sync>),
        launcher: Arc<dyn Launcher>,
    ) -> Scheduler {
        Scheduler {
            inner: Arc::new(Inner {
                config,
                probe,
                background: crate::tasks::Background::here(tracker),
                cancel: CancellationToken::new(),
                on_change,
                metrics,
                slots: Mutex::new(HashMap::new()),
                placing: tokio::sync::Mutex::new(()),
                next_id: AtomicU64::new(1),
                shutting_down: std::sync::atomic::AtomicBool::new(false),
                idle: tokio::sync::Notify::new(),
                parsers: crate::engine::parsers::Parsers::default(),
                launcher,
                aliases: Arc::default(),
            }),
        }
    }

    fn config(&self) -> Arc<ActiveConfig> {
        self.inner.config.borrow().clone()
    }

    /// The aliases its lookups follow (the daemon's one map).
    pub fn aliases(&self) -> &Arc<crate::aliases::Aliases> {
        &self.inner.aliases
    }

    /// Where local engines run: `process` (children of vllamad) or `systemd` (units).
    pub fn engine_host(&self) -> &'static str {
        self.inner.launcher.host()
    }

    /// Whether it takes new requests (false once shutdown began).
    pub fn accepting(&self) -> bool {
        !self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// The GPU probe (for the sampler; its calls block).
    pub fn probe(&self) -> Arc<dyn GpuProbe> {
        self.inner.probe.clone()
    }

    /// Every model's engine, for scraping their metrics.
    pub fn engine_handles(&self) -> Vec<(String, Arc<Engine>)> {
        self.slots()
            .iter()
            .map(|(name, s)| (name.to_string(), s.engine.clone()))
            .collect()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<ModelName, Slot>> {
        self.inner.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leases the model's engine, starting it if needed, and waits until it is ready.
    pub async fn acquire(
        &self,
        name: &ModelName,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Lease, SchedError> {
        self.acquire_with_context(name, keep_alive, None).await
    }

    /// A lease on a ready engine that takes no turn at it: for loading a model, not for a
    /// request to it.
    pub async fn load(
        &self,
        name: &ModelName,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Lease, SchedError> {
        self.ready_lease(name, keep_alive, None).await
    }

    /// [`Scheduler::acquire`], asking for a context of `num_ctx` tokens (Ollama's option):
    /// an idle engine with a smaller context is restarted with the larger one when the model
    /// allows it, as Ollama reloads; a busy one, or a model that cannot, serves as it is.
    ///
    /// The lease comes with the request's turn at the engine: while the engine runs all it
    /// can at once, requests wait here, served round-robin between tenants ([`crate::fair`]).
    pub async fn acquire_with_context(
        &self,
        name: &ModelName,
        keep_alive: Option<KeepAlive>,
        num_ctx: Option<u32>,
    ) -> Result<Lease, SchedError> {
        let mut lease = self.ready_lease(name, keep_alive, num_ctx).await?;
        let tenant = crate::observe::tenant().unwrap_or_else(|| std::sync::Arc::from(""));
        let gate = lease.gate.clone();
        lease.turn = Some(gate.enter(&tenant).await);
        Ok(lease)
    }

    async fn ready_lease(
        &self,
        name: &ModelName,
        keep_alive: Option<KeepAlive>,
        num_ctx: Option<u32>,
    ) -> Result<Lease, SchedError> {
        let started = Instant::now();
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(SchedError::ShuttingDown);
        }
        let active = self.config();
        let (canonical, mut model) = models::lookup(&active.config, &self.inner.aliases, name)?;
        if let Some(want) = num_ctx {
            let running = self
                .slots()
                .get(&canonical)
                .map(|s| (s.context(), s.info.context_length, s.pending));
            if let Some((Some(current), limit, pending)) = running {
                if u64::from(want) > current {
                    if limit.is_some_and(|l| u64::from(want) > l) {
                        tracing::info!(model = %canonical, num_ctx = want, limit = ?limit, "num_ctx is beyond the model's context length; serving with {current}");
                    } else if pending == 0 && self.stop_if_idle(&canonical).await {
                        tracing::info!(model = %canonical, num_ctx = want, current, "num_ctx is larger than the running engine's: restarted it with the larger context");
                        model.to_mut().max_model_len = Some(want);
                    } else {
                        tracing::info!(model = %canonical, num_ctx = want, current, "num_ctx is larger than the running engine's, which is busy; serving with it");
                    }
                }
            }
        }
        let mut lease = match self.lease_existing(&canonical, keep_alive)? {
            Some(lease) => lease,
            // Boxed: starting an engine is the rare, cold path and its future is kilobytes
            // (~4 700 bytes); inline, it made every request's future that large, and each
            // request's future is moved whole into its box (`api::handle`).
            None => Box::pin(self.start(&canonical, model.into_owned(), keep_alive)).await?,
        };
        let engine = lease.engine.clone();
        let timeout = self.config().config.engine.load_timeout.0;
        let remote = !engine.spec.kind.local();
        let status = engine.status();
        match status.phase {
            // A remote that is down is retried in the background: fail at once, not after
            // waiting out its back-off or a retry in progress.
            Phase::Failed if remote => {
                return Err(EngineError::Unreachable(status.last_error.unwrap_or_default()).into());
            }
            Phase::Starting if remote && status.restarts > 0 && status.last_error.is_some() => {
                return Err(EngineError::Unreachable(status.last_error.unwrap_or_default()).into());
            }
            Phase::Failed => {
                let backoff_max = self.config().config.engine.restart_backoff_max.0;
                tokio::time::timeout(backoff_max + timeout, engine.restart())
                    .await
                    .map_err(|_| EngineError::Timeout {
                        model: canonical.to_string(),
                        timeout,
                    })?;
            }
            Phase::Sleeping => self.wake(&canonical, &engine).await?,
            _ => {}
        }
        match engine.ready(timeout).await {
            Ok(()) => {}
            Err(EngineError::Failed(why)) if remote => {
                return Err(EngineError::Unreachable(why).into())
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(served) = engine.spec.kind.served_name() {
            lease.served_name = served;
        }
        lease.load_duration = started.elapsed();
        crate::observe::model(&canonical);
        Ok(lease)
    }

    /// A lease on a model that already has an engine, or `None`.
    fn lease_existing(
        &self,
        name: &ModelName,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Option<Lease>, SchedError> {
        let max_queue = self.config().config.engine.max_queue;
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(name) else {
            return Ok(None);
        };
        if matches!(slot.engine.status().phase, Phase::Stopping | Phase::Stopped) {
            return Ok(None);
        }
        if slot.draining {
            return Err(SchedError::Unloading(name.to_string()));
        }
        if slot.pending >= max_queue {
            self.inner.metrics.rejected(name.as_str(), "busy");
            return Err(SchedError::Busy {
                model: name.to_string(),
                limit: max_queue,
            });
        }
        slot.pending += 1;
        slot.epoch += 1;
        slot.expires_at = None;
        slot.last_used = Instant::now();
        if let Some(k) = keep_alive {
            slot.keep_alive = k;
        }
        Ok(Some(Lease {
            scheduler: Arc::downgrade(&self.inner),
            model: name.clone(),
            engine: slot.engine.clone(),
            served_name: slot.served_name.clone(),
            info: slot.info.clone(),
            gate: slot.gate.clone(),
            turn: None,
            load_duration: Duration::ZERO,
        }))
    }

    fn release(&self, name: &ModelName) {
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(name) else {
            return;
        };
        slot.pending = slot.pending.saturating_sub(1);
        slot.epoch += 1;
        slot.last_used = Instant::now();
        if slot.pending == 0 {
            self.inner.idle.notify_waiters();
        }
        if slot.pending > 0 || slot.pinned || slot.draining {
            return;
        }
        let epoch = slot.epoch;
        match slot.keep_alive {
            KeepAlive::Forever => slot.expires_at = None,
            KeepAlive::For(after) => {
                slot.expires_at = Some((Instant::now() + after, SystemTime::now() + after));
                // Re-arms the slot's timer: no task per request.
                slot.expiry.arm(tokio::time::Instant::now() + after, epoch);
            }
        }
    }

    /// Starts the model's engine and waits until it is ready (admin preload).
    pub async fn preload(
        &self,
        name: &ModelName,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Arc<Engine>, SchedError> {
        let lease = self.load(name, keep_alive).await?;
        Ok(lease.engine.clone())
    }

    /// A lease on the model's engine if one is up (ready or asleep), never starting one:
    /// for what only that engine has (a response it keeps in memory).
    pub fn lease_running(&self, name: &ModelName) -> Option<Lease> {
        let lease = self.lease_existing(name, None).ok()??;
        matches!(lease.engine.status().phase, Phase::Ready | Phase::Sleeping).then_some(lease)
    }

    /// The engine of a model, if it has one (for progress displays).
    pub fn engine_of(&self, name: &ModelName) -> Option<Arc<Engine>> {
        self.slots().get(name).map(|s| s.engine.clone())
    }

    /// What a model can do (capabilities, profile), without starting it: the loaded engine's
    /// facts, else the model folder's (read off the async threads).
    pub async fn model_info(&self, name: &ModelName) -> Result<Arc<ModelInfo>, SchedError> {
        let active = self.config();
        let (canonical, model) = models::lookup(&active.config, &self.inner.aliases, name)?;
        if let Some(slot) = self.slots().get(&canonical) {
            return Ok(slot.info.clone());
        }
        let state_dir = active.config.paths.state_dir.clone();
        let model = model.into_owned();
        let info =
            tokio::task::spawn_blocking(move || models::info_of(&state_dir, &canonical, &model))
                .await
                .map_err(|e| SchedError::Internal(e.to_string()))??;
        Ok(Arc::new(info))
    }

    /// Reads the engine program's parser names now (a background task at start), so the
    /// first engine start does not wait for it.
    pub async fn read_parsers(&self) {
        let active = self.config();
        let (engine, paths) = (&active.config.engine, &active.config.paths);
        self.inner
            .parsers
            .known(&engine.program, &paths.cache_dir)
            .await;
    }

    /// Unloads a model. `Unload::Drain` (vllamactl unload) refuses new requests, waits for
    /// those in flight to end, then stops the engine; if the caller goes away first, the
    /// model stays loaded and takes requests again. `Unload::Force` (`--force`, `rm --force`)
    /// stops it now: its streams end with an error event or line.
    pub async fn unload(&self, name: &ModelName, how: Unload) -> Result<(), SchedError> {
        let canonical = models::lookup(&self.config().config, &self.inner.aliases, name)
            .map(|(n, _)| n)
            .unwrap_or_else(|_| name.clone());
        if how == Unload::Drain {
            self.drain(&canonical).await?;
        }
        let _placing = self.inner.placing.lock().await;
        let engine = self.slots().remove(&canonical).map(|s| s.engine);
        match engine {
            Some(engine) => {
                engine.stop().await;
                (self.inner.on_change)();
                Ok(())
            }
            None => Err(SchedError::NotLoaded(canonical.to_string())),
        }
    }

    /// Marks the model draining and waits until no lease on it is left.
    async fn drain(&self, name: &ModelName) -> Result<(), SchedError> {
        /// Clears the mark if the wait is abandoned.
        struct Mark<'a>(&'a Scheduler, &'a ModelName, bool);
        impl Drop for Mark<'_> {
            fn drop(&mut self) {
                if !self.2 {
                    if let Some(slot) = self.0.slots().get_mut(self.1) {
                        slot.draining = false;
                    }
                }
            }
        }
        let mut mark = Mark(self, name, false);
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            {
                let mut slots = self.slots();
                let Some(slot) = slots.get_mut(name) else {
                    return Err(SchedError::NotLoaded(name.to_string()));
                };
                if !slot.draining {
                    tracing::info!(model = %name, in_flight = slot.pending, "unloading: refusing new requests, waiting for those in flight");
                }
                slot.draining = true;
                if slot.pending == 0 {
                    mark.2 = true;
                    return Ok(());
                }
            }
            idle.await;
        }
    }

    /// Stops the model's engine if no request holds it, in one step with the check (a
    /// request leased in between keeps its engine). True when it was stopped.
    async fn stop_if_idle(&self, name: &ModelName) -> bool {
        let _placing = self.inner.placing.lock().await;
        let engine = {
            let mut slots = self.slots();
            match slots.get(name) {
                Some(slot) if slot.pending == 0 => slots.remove(name).map(|s| s.engine),
                _ => None,
            }
        };
        match engine {
            Some(engine) => {
                engine.stop().await;
                (self.inner.on_change)();
                true
            }
            None => false,
        }
    }

    /// Ollama's `keep_alive: 0` on an empty request: unload now if idle, else as soon as the
    /// requests in flight end (they are not cut off). False when the model was not loaded.
    pub async fn unload_when_idle(&self, name: &ModelName) -> Result<bool, SchedError> {
        let canonical = models::lookup(&self.config().config, &self.inner.aliases, name)
            .map(|(n, _)| n)
            .unwrap_or_else(|_| name.clone());
        let busy = {
            let mut slots = self.slots();
            match slots.get_mut(&canonical) {
                None => return Ok(false),
                Some(slot) if slot.pending > 0 => {
                    slot.keep_alive = KeepAlive::For(Duration::ZERO);
                    slot.pinned = false;
                    true
                }
                Some(_) => false,
            }
        };
        if busy {
            tracing::info!(model = %canonical, "will unload once its requests in flight end");
            return Ok(true);
        }
        match self.unload(&canonical, Unload::Force).await {
            Ok(()) => Ok(true),
            Err(SchedError::NotLoaded(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Starts the models marked `preload`, in the background.
    pub fn preload_configured(&self) {
        let config = self.config();
        for (name, model) in &config.config.models {
            if !(model.preload || model.pinned) {
                continue;
            }
            let Ok(name) = ModelName::parse(name) else {
                continue;
            };
            let me = self.clone();
            let cancel = self.inner.cancel.clone();
            self.inner.background.spawn(async move {
                tokio::select! {
                    result = me.preload(&name, None) => match result {
                        Ok(_) => tracing::info!(model = %name, "preloaded"),
                        Err(e) => tracing::error!(model = %name, error = %e, "preload failed"),
                    },
                    _ = cancel.cancelled() => {}
                }
            });
        }
    }

    pub fn engines(&self) -> Vec<EngineView> {
        let slots = self.slots();
        let mut views: Vec<EngineView> = slots
            .iter()
            .map(|(name, s)| {
                let status = s.engine.status();
                EngineView {
                    model: name.to_string(),
                    served_name: s
                        .engine
                        .spec
                        .kind
                        .served_name()
                        .unwrap_or_else(|| s.served_name.clone())
                        .to_string(),
                    id: s.engine.spec.id.clone(),
                    phase: status.phase,
                    pid: status.pid,
                    kind: s.engine.spec.kind.name(),
                    endpoint: s.engine.spec.endpoint.to_string(),
                    gpus: s
                        .placement
                        .as_ref()
                        .map(|p| p.gpus.clone())
                        .unwrap_or_default(),
                    gpu_memory_bytes: s
                        .placement
                        .as_ref()
                        .map_or(0, |p| p.reservations.iter().map(|r| r.bytes).sum()),
                    pending: s.pending,
                    queued: u32::try_from(s.gate.waiting()).unwrap_or(u32::MAX),
                    expires_at: s.expires_at.map(|(_, wall)| wall),
                    keep_alive: s.keep_alive,
                    restarts: status.restarts,
                    crashes: status.crashes,
                    last_error: status.last_error,
                    load_duration: status.load_duration,
                    pinned: s.pinned,
                    info: Some(s.info.clone()),
                }
            })
            .collect();
        views.sort_by(|a, b| a.model.cmp(&b.model));
        views
    }

    /// GPU memory held by an engine's whole process group (NVML; 0 without a GPU).
    pub async fn gpu_memory_of(&self, pid: u32) -> u64 {
        let probe = self.inner.probe.clone();
        tokio::task::spawn_blocking(move || {
            let pids = crate::engine::process::group_pids(pid as i32);
            probe.process_memory(&pids)
        })
        .await
        .unwrap_or(0)
    }

    /// For systemd's STATUS=: "2 engines ready (a, b), 1 loading; 5 requests in flight".
    pub fn summary(&self) -> String {
        let views = self.engines();
        if views.is_empty() {
            return "no engines loaded".into();
        }
        let names = |phase: Phase| -> Vec<String> {
            views
                .iter()
                .filter(|v| v.phase == phase)
                .map(|v| v.model.clone())
                .collect()
        };
        let mut parts = Vec::new();
        for (phase, word) in [
            (Phase::Ready, "ready"),
            (Phase::Starting, "loading"),
            (Phase::Sleeping, "sleeping"),
            (Phase::Failed, "failed"),
        ] {
            let n = names(phase);
            if !n.is_empty() {
                parts.push(format!("{} {word} ({})", n.len(), n.join(", ")));
            }
        }
        let pending: u32 = views.iter().map(|v| v.pending).sum();
        let engines = if views.len() == 1 {
            "engine"
        } else {
            "engines"
        };
        format!(
            "{} {engines}: {}; {pending} requests in flight",
            views.len(),
            parts.join(", ")
        )
    }

    /// Daemon shutdown: every engine stopped, all at once — or, when systemd is restarting
    /// vllamad and engines are units, left running (with their keep_alive recorded) for the
    /// next vllamad.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.cancel.cancel();
        let launcher = self.inner.launcher.clone();
        let let_go = tokio::task::spawn_blocking(move || launcher.let_go_at_shutdown())
            .await
            .unwrap_or(false);
        if let_go {
            self.remember_keep_alives().await;
            tracing::info!("vllamad is restarting: its engines stay up for the next one");
        }
        let engines: Vec<Arc<Engine>> = self.slots().drain().map(|(_, s)| s.engine).collect();
        let mut stops = tokio::task::JoinSet::new();
        for engine in engines {
            stops.spawn(async move {
                if let_go {
                    engine.let_go().await
                } else {
                    engine.stop().await
                }
            });
        }
        while stops.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests;
