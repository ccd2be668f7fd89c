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

use crate::config::{Config, ModelConfig};
use crate::engine::{vllm, Endpoint, Engine, EngineError, EngineSpec, Phase};
use crate::gpu::GpuProbe;
use crate::model_info::ModelInfo;
use crate::models::{self, ModelError, ModelName};
use crate::placement::{self, Placement, Reservation, Shortfall};
use crate::state::ActiveConfig;
use crate::units::{ByteSize, KeepAlive};

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
    served_name: String,
    /// Requests holding a lease: waiting for the engine or running on it.
    pending: u32,
    keep_alive: KeepAlive,
    /// When an idle model is unloaded; `None` while busy or kept forever.
    expires_at: Option<(Instant, SystemTime)>,
    last_used: Instant,
    /// Changes on every acquire and release, so stale keep_alive timers do nothing.
    epoch: u64,
    /// The slot's one keep_alive timer: the deadline and the epoch it was set at. Dropped
    /// with the slot, which ends the timer's task.
    expiry: watch::Sender<Option<(tokio::time::Instant, u64)>>,
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
    tracker: TaskTracker,
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
    served_name: String,
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

impl Scheduler {
    pub fn new(
        config: watch::Receiver<Arc<ActiveConfig>>,
        probe: Arc<dyn GpuProbe>,
        tracker: TaskTracker,
        metrics: Arc<crate::metrics::Metrics>,
        on_change: Arc<dyn Fn() + Send + Sync>,
    ) -> Scheduler {
        Scheduler {
            inner: Arc::new(Inner {
                config,
                probe,
                tracker,
                cancel: CancellationToken::new(),
                on_change,
                metrics,
                slots: Mutex::new(HashMap::new()),
                placing: tokio::sync::Mutex::new(()),
                next_id: AtomicU64::new(1),
                shutting_down: std::sync::atomic::AtomicBool::new(false),
                idle: tokio::sync::Notify::new(),
                parsers: crate::engine::parsers::Parsers::default(),
            }),
        }
    }

    fn config(&self) -> Arc<ActiveConfig> {
        self.inner.config.borrow().clone()
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
        let (canonical, mut model) = models::lookup(&self.config().config, name)?;
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
                        model.max_model_len = Some(want);
                    } else {
                        tracing::info!(model = %canonical, num_ctx = want, current, "num_ctx is larger than the running engine's, which is busy; serving with it");
                    }
                }
            }
        }
        let mut lease = match self.lease_existing(&canonical, keep_alive)? {
            Some(lease) => lease,
            None => self.start(&canonical, model, keep_alive).await?,
        };
        let engine = lease.engine.clone();
        let timeout = self.config().config.engine.load_timeout.0;
        let remote = !engine.spec.kind.local();
        match engine.status().phase {
            // A remote that is down is retried in the background: fail at once, not after
            // waiting out its back-off.
            Phase::Failed if remote => {
                let why = engine.status().last_error.unwrap_or_default();
                return Err(EngineError::Unreachable(why).into());
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
        crate::observe::model(canonical.as_str());
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
                slot.expiry
                    .send_replace(Some((tokio::time::Instant::now() + after, epoch)));
            }
        }
    }

    /// The task that unloads `name` when its keep_alive deadline passes unused. One per slot,
    /// for the slot's life: a task per release would leave one sleeping for the whole
    /// keep_alive after every request that left the model idle (thousands under load).
    fn spawn_keep_alive_timer(
        &self,
        name: &ModelName,
    ) -> watch::Sender<Option<(tokio::time::Instant, u64)>> {
        let (tx, mut rx) = watch::channel(None);
        let scheduler = Arc::downgrade(&self.inner);
        let cancel = self.inner.cancel.clone();
        let name = name.clone();
        self.inner.tracker.spawn(async move {
            loop {
                let deadline = *rx.borrow_and_update();
                let fired = async {
                    match deadline {
                        Some((at, epoch)) => {
                            tokio::time::sleep_until(at).await;
                            epoch
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    epoch = fired => {
                        let Some(inner) = scheduler.upgrade() else { return };
                        Scheduler { inner }.expire(&name, epoch).await;
                        // Wait for the next deadline (or the slot's end).
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = cancel.cancelled() => return,
                }
            }
        });
        tx
    }

    /// keep_alive ended: unload the model unless it was used since.
    async fn expire(&self, name: &ModelName, epoch: u64) {
        let _placing = self.inner.placing.lock().await;
        let engine = {
            let mut slots = self.slots();
            match slots.get(name) {
                Some(slot) if slot.epoch == epoch && slot.pending == 0 && !slot.pinned => {
                    slots.remove(name).map(|s| s.engine)
                }
                _ => None,
            }
        };
        if let Some(engine) = engine {
            tracing::info!(model = %name, "keep_alive ended: unloading");
            engine.stop().await;
            (self.inner.on_change)();
        }
    }

    async fn start(
        &self,
        name: &ModelName,
        model: ModelConfig,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Lease, SchedError> {
        let _placing = self.inner.placing.lock().await;
        // Someone else may have started it while this request waited for the lock.
        if let Some(lease) = self.lease_existing(name, keep_alive)? {
            return Ok(lease);
        }
        let active = self.config();
        let config = &active.config;
        let id = format!(
            "{}-{}",
            name.slug(),
            self.inner.next_id.fetch_add(1, Ordering::SeqCst)
        );
        let Prepared {
            spec,
            info,
            model,
            placement,
            host_need,
            bound,
        } = if model.remote.is_some() {
            remote_engine(config, name, model, id).await?
        } else {
            self.local_engine(config, name, model, id).await?
        };
        let served_name = model
            .served_name
            .clone()
            .unwrap_or_else(|| name.to_string());
        let (metrics, on_change) = (self.inner.metrics.clone(), self.inner.on_change.clone());
        let observer: crate::engine::EngineObserver = Arc::new(move |model, event, status| {
            metrics.engine_event(model, event, status);
            on_change();
        });
        let engine = Engine::start(spec, &self.inner.tracker, observer);
        let keep_alive = keep_alive
            .or(model.keep_alive)
            .unwrap_or(config.engine.keep_alive);
        let expiry = self.spawn_keep_alive_timer(name);
        let gate = crate::fair::Gate::new(bound as usize);
        self.slots().insert(
            name.clone(),
            Slot {
                engine: engine.clone(),
                served_name: served_name.clone(),
                pending: 1,
                keep_alive,
                expires_at: None,
                last_used: Instant::now(),
                epoch: 0,
                expiry,
                pinned: model.pinned,
                sleep: model.sleep,
                draining: false,
                host_need,
                placement,
                info: info.clone(),
                max_model_len: model.max_model_len,
                gate: gate.clone(),
            },
        );
        (self.inner.on_change)();
        Ok(Lease {
            scheduler: Arc::downgrade(&self.inner),
            model: name.clone(),
            engine,
            served_name,
            info,
            gate,
            turn: None,
            load_duration: Duration::ZERO,
        })
    }

    /// A local vLLM engine: its folder's facts, the parsers checked, room made on the GPUs
    /// (or in host memory), and its launch. Called with `placing` held.
    async fn local_engine(
        &self,
        config: &Config,
        name: &ModelName,
        model: ModelConfig,
        id: String,
    ) -> Result<Prepared, SchedError> {
        let state_dir = config.paths.state_dir.clone();
        let (n, m) = (name.clone(), model.clone());
        let info = tokio::task::spawn_blocking(move || models::info_of(&state_dir, &n, &m))
            .await
            .map_err(|e| SchedError::Internal(e.to_string()))??;
        let (info, dir) = (Arc::new(info.clone()), info.dir);
        // A parser this vLLM does not know is refused before anything starts: a clear error
        // naming the choices, not an engine that fails at each start.
        let known = self
            .inner
            .parsers
            .known(&config.engine.vllm, &config.paths.cache_dir)
            .await;
        info.profile
            .check(name.as_str(), &known)
            .map_err(SchedError::Profile)?;

        let mut model = model;
        if model.max_model_len.is_none() && config.engine.context_length > 0 {
            let own = info.context_length.and_then(|c| u32::try_from(c).ok());
            let want = own.map_or(config.engine.context_length, |own| {
                own.min(config.engine.context_length)
            });
            model.max_model_len = Some(want);
        }
        let (placement, host_need) = self.make_room(name, &model, info.size).await?;
        let served_name = model
            .served_name
            .clone()
            .unwrap_or_else(|| name.to_string());
        // The launch creates the engines' folder and may bind a loopback port: off the workers.
        let spec = {
            let (config, name, model, placement) = (
                config.clone(),
                name.to_string(),
                model.clone(),
                placement.clone(),
            );
            let (id, dir, profile) = (id.clone(), dir.clone(), info.profile.clone());
            tokio::task::spawn_blocking(move || {
                vllm::spec(
                    &config,
                    &name,
                    &model,
                    &id,
                    &served_name,
                    (&dir, &profile),
                    placement.as_ref(),
                )
            })
            .await
            .map_err(|e| SchedError::Internal(e.to_string()))?
            .map_err(SchedError::Internal)?
        };
        tracing::info!(
            model = %name,
            engine = %id,
            profile = %info.profile.describe(),
            dir = %dir.display(),
            gpus = ?placement.as_ref().map(|p| &p.gpus),
            fraction = placement.as_ref().map(|p| p.fraction),
            "starting engine"
        );
        let bound = vllm::engine_concurrency(config, &model, placement.as_ref());
        Ok(Prepared {
            spec,
            info,
            model,
            placement,
            host_need,
            bound,
        })
    }

    /// Frees what a new engine needs: a loaded-model slot, and GPU memory where there are
    /// GPUs, host memory where there are none. Returns the GPU placement, or the host memory
    /// promised to a CPU engine. Called with `placing` held.
    async fn make_room(
        &self,
        name: &ModelName,
        model: &ModelConfig,
        weights: u64,
    ) -> Result<(Option<Placement>, u64), SchedError> {
        loop {
            let config = self.config();
            let probe = self.inner.probe.clone();
            let (gpus, host_budget) =
                tokio::task::spawn_blocking(move || (probe.gpus(), crate::host_memory::budget()))
                    .await
                    .map_err(|e| SchedError::Internal(e.to_string()))?;
            let max_loaded = max_loaded(config.config.engine.max_loaded, gpus.len());
            let (loaded, reserved, host_used) = {
                let slots = self.slots();
                let loaded = slots.values().filter(|s| s.loaded_here());
                let reserved: Vec<Reservation> = loaded
                    .clone()
                    .filter_map(|s| s.placement.as_ref())
                    .flat_map(|p| p.reservations.iter().copied())
                    .collect();
                let host_used = loaded.clone().map(|s| s.host_need).sum::<u64>();
                (loaded.count(), reserved, host_used)
            };
            // Host memory decides only when the operator set no count (`max_loaded = 0`).
            let host_decides = config.config.engine.max_loaded == 0;
            let placed = if gpus.is_empty() && !host_decides {
                Ok((None, 0))
            } else if gpus.is_empty() {
                let budget = host_budget.unwrap_or(u64::MAX);
                let mut env = config.config.engine.env.clone();
                env.extend(model.env.clone());
                let need = crate::host_memory::need(
                    weights,
                    crate::host_memory::kv_bytes(
                        &vllm::configured_args(&config.config, model),
                        &env,
                    ),
                    budget,
                );
                if crate::host_memory::fits(host_used, need, budget, loaded) {
                    Ok((None, need))
                } else {
                    Err(Blocked::Host {
                        need,
                        used: host_used,
                        budget,
                    })
                }
            } else {
                let total = gpus.iter().map(|g| g.total_bytes).min().unwrap_or(0);
                let need = placement::need_per_gpu(
                    model.gpu_memory,
                    total,
                    weights,
                    model.tensor_parallel,
                );
                placement::place(
                    &gpus,
                    &reserved,
                    config.config.engine.gpu_memory_reserve.0,
                    need,
                    model.tensor_parallel,
                )
                .map(|p| (Some(p), 0))
                .map_err(Blocked::Memory)
            };
            let blocked = match (placed, loaded >= max_loaded) {
                (Ok(p), false) => return Ok(p),
                (Err(why), _) => why,
                (Ok(_), true) => Blocked::Count(loaded),
            };
            if !self.evict_one(name).await {
                let busy = self.busy_models(name);
                return Err(match blocked {
                    Blocked::Memory(shortfall) => SchedError::NoGpuRoom { shortfall, busy },
                    Blocked::Count(loaded) => SchedError::TooManyLoaded { loaded, busy },
                    Blocked::Host { need, used, budget } => SchedError::NoHostRoom {
                        need,
                        used,
                        budget,
                        busy,
                    },
                });
            }
        }
    }

    fn busy_models(&self, except: &ModelName) -> String {
        let slots = self.slots();
        let mut busy: Vec<String> = slots
            .iter()
            .filter(|(n, s)| *n != except && s.loaded_here() && !s.evictable())
            .map(|(n, _)| n.to_string())
            .collect();
        busy.sort();
        if busy.is_empty() {
            "none".into()
        } else {
            busy.join(",")
        }
    }

    /// Sleeps or stops the least recently used idle engine. False when there is none.
    async fn evict_one(&self, except: &ModelName) -> bool {
        let victim = {
            let slots = self.slots();
            slots
                .iter()
                .filter(|(n, s)| *n != except && s.loaded_here() && s.evictable())
                .min_by_key(|(_, s)| s.last_used)
                .map(|(n, s)| (n.clone(), s.engine.clone(), s.sleep, s.info.size))
        };
        let Some((victim, engine, sleep, weights)) = victim else {
            return false;
        };
        if sleep && engine.status().phase == Phase::Ready && host_memory_for(weights) {
            match engine.sleep().await {
                Ok(()) => {
                    tracing::info!(model = %victim, "put to sleep to make room");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(model = %victim, error = %e, "sleep failed; stopping instead")
                }
            }
        }
        tracing::info!(model = %victim, "unloading the least recently used idle model to make room");
        self.slots().remove(&victim);
        engine.stop().await;
        (self.inner.on_change)();
        true
    }

    /// A sleeping engine needs its GPU memory back before it wakes.
    async fn wake(&self, name: &ModelName, engine: &Arc<Engine>) -> Result<(), SchedError> {
        let _placing = self.inner.placing.lock().await;
        if engine.status().phase != Phase::Sleeping {
            return Ok(());
        }
        loop {
            let probe = self.inner.probe.clone();
            let gpus = tokio::task::spawn_blocking(move || probe.gpus().len())
                .await
                .map_err(|e| SchedError::Internal(e.to_string()))?;
            let loaded = self.slots().values().filter(|s| s.loaded_here()).count();
            let limit = max_loaded(self.config().config.engine.max_loaded, gpus);
            if loaded < limit || !self.evict_one(name).await {
                break;
            }
        }
        tracing::info!(model = %name, "waking the engine");
        engine.wake().await?;
        Ok(())
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
        let (canonical, model) = models::lookup(&active.config, name)?;
        if let Some(slot) = self.slots().get(&canonical) {
            return Ok(slot.info.clone());
        }
        let state_dir = active.config.paths.state_dir.clone();
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
            .known(&engine.vllm, &paths.cache_dir)
            .await;
    }

    /// Unloads a model. `Unload::Drain` (vllamactl unload) refuses new requests, waits for
    /// those in flight to end, then stops the engine; if the caller goes away first, the
    /// model stays loaded and takes requests again. `Unload::Force` (`--force`, `rm --force`)
    /// stops it now: its streams end with an error event or line.
    pub async fn unload(&self, name: &ModelName, how: Unload) -> Result<(), SchedError> {
        let canonical = models::lookup(&self.config().config, name)
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
        let canonical = models::lookup(&self.config().config, name)
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
            self.inner.tracker.spawn(async move {
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
                        .unwrap_or_else(|| s.served_name.clone()),
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

    /// Stops every engine (daemon shutdown), all at once.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.cancel.cancel();
        let engines: Vec<Arc<Engine>> = self.slots().drain().map(|(_, s)| s.engine).collect();
        let mut stops = tokio::task::JoinSet::new();
        for engine in engines {
            stops.spawn(async move { engine.stop().await });
        }
        while stops.join_next().await.is_some() {}
    }
}

/// An engine ready to start and what the scheduler keeps of it.
struct Prepared {
    spec: EngineSpec,
    info: Arc<ModelInfo>,
    /// The model's configuration as the engine runs it (a context length may have been set).
    model: ModelConfig,
    placement: Option<Placement>,
    host_need: u64,
    /// The requests it runs at once (fair turns beyond that).
    bound: u32,
}

/// How long a remote engine's start (one `/v1/models` answered) may take: requests wait no
/// longer than this for a remote that is down.
const REMOTE_START_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests sent to a remote at once when `engine.max_in_flight` does not say: the remote
/// queues the rest itself.
const REMOTE_IN_FLIGHT: u32 = 256;

/// A remote engine: its address, token and CA read (off the workers); nothing placed here.
async fn remote_engine(
    config: &Config,
    name: &ModelName,
    model: ModelConfig,
    id: String,
) -> Result<Prepared, SchedError> {
    let url = model.remote.clone().unwrap_or_default();
    let (u, token, ca) = (url.clone(), model.token_file.clone(), model.ca_file.clone());
    let target = tokio::task::spawn_blocking(move || {
        crate::engine::remote::target(&u, token.as_deref(), ca.as_deref())
    })
    .await
    .map_err(|e| SchedError::Internal(e.to_string()))??;
    tracing::info!(model = %name, engine = %id, remote = %url, "serving a remote engine");
    let spec = EngineSpec {
        id,
        model: name.to_string(),
        kind: Arc::new(crate::engine::remote::Remote::new(
            &url,
            model.served_name.clone(),
        )),
        endpoint: Endpoint::Remote(Arc::new(target)),
        load_timeout: REMOTE_START_TIMEOUT,
        health_interval: Duration::from_millis(500),
        stop_grace: Duration::ZERO,
        backoff_max: config
            .engine
            .restart_backoff_max
            .0
            .min(Duration::from_secs(10)),
        stable_after: config.engine.stable_after.0,
        // Retried in the background while down, so that requests need not wait for it.
        auto_restart: true,
    };
    let bound = match config.engine.max_in_flight {
        0 => REMOTE_IN_FLIGHT,
        n => n,
    };
    Ok(Prepared {
        spec,
        info: Arc::new(ModelInfo::remote(&model)),
        model,
        placement: None,
        host_need: 0,
        bound,
    })
}

enum Blocked {
    Memory(Shortfall),
    Count(usize),
    Host { need: u64, used: u64, budget: u64 },
}

/// `engine.max_loaded`: 0 means 3 engines per GPU, or without a GPU no count at all (host
/// memory decides: [`crate::host_memory`]).
pub fn max_loaded(configured: u32, gpus: usize) -> usize {
    match configured {
        0 if gpus == 0 => usize::MAX,
        0 => 3 * gpus,
        n => n as usize,
    }
}

/// Sleep level 1 moves the weights to host RAM: only sleep when it has room for them.
fn host_memory_for(weights: u64) -> bool {
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return false;
    };
    let available_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    available_kib * 1024 > weights / 5 * 6 + ByteSize::GIB
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A scheduler whose one model `m` is served by a stand-in that only sleeps (it never
    /// becomes ready: enough for the bookkeeping of leases).
    /// The scheduler, its model, and the configuration's sender (the scheduler reads the
    /// configuration in force through it: keep it alive with the scheduler).
    type Made = (Scheduler, ModelName, watch::Sender<Arc<ActiveConfig>>);

    fn scheduler(dir: &std::path::Path) -> Made {
        scheduler_with(dir, "")
    }

    fn scheduler_with(dir: &std::path::Path, model_lines: &str) -> Made {
        let program = dir.join("engine");
        std::fs::write(&program, "#!/bin/sh\nexec sleep 600\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let model = dir.join("m");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), r#"{"model_type":"llama"}"#).unwrap();
        let text = format!(
            "[paths]\nstate_dir = \"{d}/s\"\nruntime_dir = \"{d}/r\"\ncache_dir = \"{d}/c\"\n\
             [engine]\nvllm = \"{p}\"\nstop_grace = \"1s\"\n[models.\"m:latest\"]\nsource = \"{m}\"\n{model_lines}",
            d = dir.display(),
            p = program.display(),
            m = model.display()
        );
        let config = crate::config::parse(&text, &dir.join("v.toml")).unwrap();
        let active = ActiveConfig {
            access: crate::auth::AccessPolicy::resolve(&config.admin),
            config,
            file: None,
            generation: 1,
            loaded_at: SystemTime::now(),
        };
        let (tx, rx) = watch::channel(Arc::new(active));
        let s = Scheduler::new(
            rx,
            Arc::new(crate::gpu::NoGpu::default()),
            TaskTracker::new(),
            Arc::new(crate::metrics::Metrics::new().unwrap()),
            Arc::new(|| {}),
        );
        (s, ModelName::parse("m").unwrap(), tx)
    }

    #[tokio::test]
    async fn a_context_restart_never_stops_an_engine_a_lease_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (s, name, _config) = scheduler(dir.path());
        let (canonical, model) = models::lookup(&s.config().config, &name).unwrap();
        // The request that got its lease between the larger-context request's look at
        // `pending` and its stop: the stop must see the lease and leave the engine alone.
        let lease = s.start(&canonical, model, None).await.unwrap();
        assert!(!s.stop_if_idle(&canonical).await, "stopped under a lease");
        assert_eq!(s.engines().len(), 1);
        drop(lease);
        assert!(s.stop_if_idle(&canonical).await);
        assert!(s.engines().is_empty());
        s.shutdown().await;
    }

    #[tokio::test]
    async fn one_timer_per_model_unloads_it_when_keep_alive_passes_unused() {
        let dir = tempfile::tempdir().unwrap();
        let (s, name, _config) = scheduler_with(dir.path(), "keep_alive = \"300ms\"\n");
        let (canonical, model) = models::lookup(&s.config().config, &name).unwrap();
        drop(s.start(&canonical, model, None).await.unwrap());
        // Used again before the deadline: the timer is re-armed, not doubled.
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(s.lease_existing(&canonical, None).unwrap().unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(s.engines().len(), 1, "unloaded by the first deadline");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(s.engines().is_empty(), "not unloaded after keep_alive");
        s.shutdown().await;
    }
}
