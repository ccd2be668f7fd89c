//! Starting an engine: what it needs prepared (a local vLLM's folder, parsers, room and
//! launch; a remote's address and token), then the supervised engine and its slot.

use super::*;
use crate::engine::host::{Children, Host, Survivor};
use crate::engine::kind::BoxFuture;
use crate::engine::profile::Profile;

/// How the scheduler makes a local engine's spec: `vllm serve` ([`VllmLauncher`]); the scheduler's
/// own tests give engines that are not processes. Blocking (it may create folders and bind
/// a port): called in `spawn_blocking`.
pub trait Launcher: Send + Sync {
    #[allow(clippy::too_many_arguments)]
    fn spec(
        &self,
        config: &Config,
        name: &str,
        model: &ModelConfig,
        id: &str,
        served_name: &str,
        folder: (&std::path::Path, &Profile),
        placement: Option<&Placement>,
    ) -> Result<EngineSpec, String>;

    /// Where its local engines run (`process`, `systemd`; the tests' `memory`).
    fn host(&self) -> &'static str {
        "memory"
    }

    /// The id of a model's next engine.
    fn engine_id(&self, _model: &str, slug: &str, n: u64) -> String {
        format!("{slug}-{n}")
    }

    /// Engines an earlier vllamad left running. Blocking.
    fn survivors(&self) -> Vec<Survivor> {
        Vec::new()
    }

    /// Notes when an engine's keep_alive ends, for the next vllamad. Blocking.
    fn remember(&self, _id: &str, _until: Option<SystemTime>) {}

    /// Stops and forgets an engine an earlier vllamad left, which is not taken up.
    fn discard<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// At shutdown: whether engines are left running for the next vllamad (systemd is
    /// restarting vllamad and engines are units) rather than stopped. Blocking.
    fn let_go_at_shutdown(&self) -> bool {
        false
    }
}

/// Local engines are `vllm serve` processes, run by a host (children or systemd units).
pub struct VllmLauncher {
    host: Arc<dyn Host>,
}

impl VllmLauncher {
    pub fn new(host: Arc<dyn Host>) -> VllmLauncher {
        VllmLauncher { host }
    }
}

impl Default for VllmLauncher {
    fn default() -> Self {
        VllmLauncher::new(Arc::new(Children))
    }
}

impl Launcher for VllmLauncher {
    fn spec(
        &self,
        config: &Config,
        name: &str,
        model: &ModelConfig,
        id: &str,
        served_name: &str,
        folder: (&std::path::Path, &Profile),
        placement: Option<&Placement>,
    ) -> Result<EngineSpec, String> {
        vllm::spec(
            config,
            name,
            model,
            id,
            served_name,
            folder,
            placement,
            self.host.clone(),
        )
    }

    fn host(&self) -> &'static str {
        self.host.name()
    }

    fn engine_id(&self, model: &str, slug: &str, n: u64) -> String {
        self.host.engine_id(model, slug, n)
    }

    fn survivors(&self) -> Vec<Survivor> {
        self.host.survivors()
    }

    fn remember(&self, id: &str, until: Option<SystemTime>) {
        self.host.remember(id, until)
    }

    fn discard<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        self.host.discard(id)
    }

    fn let_go_at_shutdown(&self) -> bool {
        self.host.let_go_at_shutdown()
    }
}

impl Scheduler {
    pub(super) async fn start(
        &self,
        name: &ModelName,
        model: ModelConfig,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Lease, SchedError> {
        self.start_with(name, model, keep_alive, None).await
    }

    /// [`Scheduler::start`]; `found`: an engine an earlier vllamad left, taken up where it was
    /// placed (its host adopts it when the launch is the same, else replaces it).
    pub(super) async fn start_with(
        &self,
        name: &ModelName,
        model: ModelConfig,
        keep_alive: Option<KeepAlive>,
        found: Option<&Survivor>,
    ) -> Result<Lease, SchedError> {
        let _placing = self.inner.placing.lock().await;
        // Someone else may have started it while this request waited for the lock.
        if let Some(lease) = self.lease_existing(name, keep_alive)? {
            return Ok(lease);
        }
        let active = self.config();
        let config = &active.config;
        let n = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
        let id = if model.remote.is_some() {
            format!("{}-{n}", name.slug())
        } else {
            self.inner
                .launcher
                .engine_id(name.as_str(), &name.slug(), n)
        };
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
            self.local_engine(config, name, model, id, found).await?
        };
        let served_name: Arc<str> = model
            .served_name
            .as_deref()
            .map_or_else(|| Arc::from(name.as_str()), Arc::from);
        let (metrics, on_change) = (self.inner.metrics.clone(), self.inner.on_change.clone());
        let observer: crate::engine::EngineObserver = Arc::new(move |model, event, status| {
            metrics.engine_event(model, event, status);
            on_change();
        });
        let engine = Engine::start(spec, &self.inner.background, observer);
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
        found: Option<&Survivor>,
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
            .known(&config.engine.program, &config.paths.cache_dir)
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
        let (placement, host_need) = match found {
            // Already there: its memory is taken (and counted as taken from now on).
            Some(found) => (
                found.placement.clone(),
                Scheduler::found_host_need(config, &model, info.size, found.placement.as_ref()),
            ),
            None => self.make_room(name, &model, info.size).await?,
        };
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
            let launcher = self.inner.launcher.clone();
            tokio::task::spawn_blocking(move || {
                launcher.spec(
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
}

/// How long a remote engine's start (one `/v1/models` answered) may take: requests wait no
/// longer than this for a remote that is down.
const REMOTE_START_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests sent to a remote at once when `engine.max_in_flight` does not say: the remote
/// queues the rest itself.
const REMOTE_IN_FLIGHT: u32 = 256;

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
