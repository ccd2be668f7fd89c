//! The daemon's life: listeners up, `READY=1`, signals (SIGHUP reloads, SIGTERM/SIGINT
//! drain and stop), and an orderly shutdown within the configured grace.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, ConfigSource, LogFormat};
use crate::conn_threads::ConnThreads;
use crate::listeners::{self, ActivatedFds, ListenerError};
use crate::logging::{self, LogError};
use crate::notify::Notifier;
use crate::reload;
use crate::state::Daemon;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("cannot install a signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    #[error("the API listens on {0}, which other machines can reach, and no API key is configured: add one (vllamactl key add NAME; the daemon must run for that, so first listen on 127.0.0.1), or set api.allow_unauthenticated = true to serve anyone on purpose")]
    Exposed(String),
    #[error("cannot start the connection threads: {0}")]
    Threads(#[source] std::io::Error),
    #[error("the key loader stopped unexpectedly: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What `main` hands the server.
#[derive(Debug)]
pub struct Options {
    pub config: ConfigSource,
    /// `--log-format`, which wins over the configuration.
    pub log_format: Option<LogFormat>,
    pub activated: ActivatedFds,
}

/// Raises the soft limit on open files to the hard one, as most servers do: the usual soft
/// default (1 024) is spent by a thousand idle connections, and then `accept` fails for
/// every new client. Under systemd the unit's `LimitNOFILE=` sets both.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// The main runtime's async workers on a machine with `cores` CPUs: a quarter of them, at
/// least one (four on 16 cores, sixteen on 64). They run engine supervision, the admin API
/// and downloads; the public API's connections have threads of their own
/// ([`crate::conn_threads`]). vllamad shares the machine with its engines (each vLLM's API
/// server, tokenizer and EngineCore want cores of their own).
pub fn worker_threads(cores: usize) -> usize {
    cores.div_ceil(4).max(1)
}

/// Runs the daemon until SIGTERM or SIGINT, then drains and returns.
pub async fn run(options: Options) -> Result<(), ServerError> {
    let notifier = Notifier::from_env();
    let (active, warnings) = match reload::load_active(&options.config, 1) {
        Ok(loaded) => loaded,
        Err(e) => {
            notifier.status(&format!("configuration error: {e}"));
            return Err(e.into());
        }
    };
    let log_format = options.log_format.unwrap_or(active.config.log.format);
    let log = logging::init(log_format, &active.config.log.filter)?;
    match &active.file {
        Some(path) => {
            tracing::info!(version = crate::VERSION, config = %path.display(), "vllamad starting")
        }
        None => tracing::info!(
            version = crate::VERSION,
            config = %options.config.path.display(),
            "vllamad starting; no configuration file, using the defaults"
        ),
    }
    // Found before logging was up.
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    raise_fd_limit();
    if options.activated.is_empty() {
        tracing::debug!("not socket-activated: binding listeners from the configuration");
    }

    let bound = listeners::obtain(options.activated, &active.config)?;
    let admin_bound_path = bound.admin_bound_path.clone();

    // Engines that a killed predecessor left behind hold memory we are about to hand out.
    let runtime_dir = active.config.paths.runtime_dir.clone();
    if let Ok(n) =
        tokio::task::spawn_blocking(move || crate::engine::process::sweep_orphans(&runtime_dir))
            .await
    {
        if n > 0 {
            tracing::warn!(count = n, "killed engines left by an earlier vllamad");
        }
    }
    let keys_file = active.config.api.keys_file.clone();
    let allow_unauthenticated = active.config.api.allow_unauthenticated;
    let keys = tokio::task::spawn_blocking(move || crate::keys::KeyRing::read(&keys_file))
        .await?
        .inspect_err(|e| notifier.status(&format!("API keys: {e}")))?;
    let probe: Arc<dyn crate::gpu::GpuProbe> =
        match tokio::task::spawn_blocking(crate::gpu::detect).await {
            Ok(probe) => Arc::from(probe),
            Err(_) => Arc::new(crate::gpu::NoGpu::default()),
        };

    // HTTP connections drain first; engines (and their timers) stop after them.
    let shutdown = CancellationToken::new();
    let http_tasks = TaskTracker::new();
    let engine_tasks = TaskTracker::new();
    let status_changed = Arc::new(tokio::sync::Notify::new());
    let changed = status_changed.clone();
    let (config_tx, config_rx) = tokio::sync::watch::channel(Arc::new(active));
    let metrics = Arc::new(crate::metrics::Metrics::new()?);
    // Engines as children of vllamad, or as systemd units that outlive it.
    let (mode, runtime_dir) = {
        let c = &config_rx.borrow().config;
        (c.engine.launch, c.paths.runtime_dir.clone())
    };
    let host: Arc<dyn crate::engine::host::Host> = Arc::from(
        tokio::task::spawn_blocking(move || crate::engine::host::choose(mode, &runtime_dir))
            .await?,
    );
    if host.name() == "process" {
        let runtime_dir = config_rx.borrow().config.paths.runtime_dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            crate::engine::units::Units::new(&runtime_dir).stop_recorded()
        })
        .await;
    }
    tracing::info!(
        host = host.name(),
        "engines run as {}",
        match host.name() {
            "systemd" =>
                "systemd units (vllama-engine@<model>.service): a restart of vllamad keeps them",
            _ => "children of vllamad",
        }
    );
    let scheduler = crate::scheduler::Scheduler::with_launcher(
        config_rx,
        probe,
        engine_tasks.clone(),
        (metrics.clone(), Arc::new(move || changed.notify_one())),
        Arc::new(crate::scheduler::VllmLauncher::new(host)),
    );
    let (aliases, state_dir) = (
        scheduler.aliases().clone(),
        config_tx.borrow().config.paths.state_dir.clone(),
    );
    let _ = tokio::task::spawn_blocking(move || aliases.load(&state_dir)).await;
    let daemon = Arc::new(Daemon::new(
        options.config,
        config_tx,
        bound.info,
        notifier.clone(),
        Some(log),
        crate::state::Services {
            scheduler,
            metrics,
            pulls: crate::store::pull::Pulls::new(engine_tasks.clone(), shutdown.clone()),
            installer: crate::install::Installer::new(engine_tasks.clone(), shutdown.clone()),
            tasks: http_tasks.clone(),
        },
    ));

    if !keys.is_empty() {
        tracing::info!(keys = keys.len(), "API keys required on the public API");
    }
    daemon.set_keys(keys);
    if daemon.exposed() && daemon.keys().is_empty() && !allow_unauthenticated {
        let address = daemon
            .listeners
            .iter()
            .find(|l| l.name == crate::listeners::API)
            .map(|l| l.address.clone())
            .unwrap_or_default();
        let e = ServerError::Exposed(address);
        notifier.status(&e.to_string());
        return Err(e);
    }

    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let conn_threads = Arc::new(
        ConnThreads::start(crate::conn_threads::count(
            daemon.config().config.api.threads,
            cores,
        ))
        .map_err(ServerError::Threads)?,
    );
    daemon.metrics.count_tasks_of(
        std::iter::once(tokio::runtime::Handle::current())
            .chain(conn_threads.runtimes().iter().cloned())
            .collect(),
    );
    tracing::debug!(
        threads = conn_threads.runtimes().len(),
        "connection threads started"
    );

    let mut sigterm = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(ServerError::Signal)?;

    // Before the first request is read: a request for a model whose engine was left running
    // finds it taken up, never starts another.
    daemon.scheduler.adopt_survivors().await;
    crate::api::spawn(
        bound.api,
        daemon.clone(),
        &http_tasks,
        conn_threads.clone(),
        shutdown.clone(),
    );
    crate::admin::spawn(bound.admin, daemon.clone(), &http_tasks, shutdown.clone());
    if let Some(listener) = bound.metrics {
        crate::api::spawn_metrics(listener, daemon.clone(), &http_tasks, shutdown.clone());
    }
    // READY=1 first: the watchdog's first ping goes out at once on another worker thread.
    notifier.ready(&daemon.status_line());
    notifier.spawn_watchdog(&engine_tasks, shutdown.clone());
    tracing::info!(status = %daemon.status_line(), "ready");
    spawn_status_updates(&daemon, status_changed, &engine_tasks, shutdown.clone());
    crate::sampling::spawn(&daemon, &engine_tasks, shutdown.clone());
    daemon.scheduler.preload_configured();
    let scheduler = daemon.scheduler.clone();
    engine_tasks.spawn(async move { scheduler.read_parsers().await });

    let signal_name = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => {
                let daemon = daemon.clone();
                engine_tasks.spawn(async move { reload::reload(&daemon).await });
            }
        }
    };

    // Drain with the grace in force now (a reload may have changed it).
    let config = daemon.config();
    let grace = config.config.daemon.shutdown_grace.0;
    tracing::info!(signal = signal_name, grace = ?grace, "stopping: no new connections; draining requests in flight");
    notifier.stopping();
    shutdown.cancel();
    http_tasks.close();
    if tokio::time::timeout(grace, http_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?grace, "requests still in flight after the shutdown grace; closing them");
    }
    daemon.scheduler.shutdown().await;
    engine_tasks.close();
    let engine_grace = config.config.engine.stop_grace.0 + Duration::from_secs(5);
    if tokio::time::timeout(engine_grace, engine_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("engine supervisors did not finish in time");
    }
    let threads = conn_threads.clone();
    let _ = tokio::task::spawn_blocking(move || threads.stop()).await;
    if let Some(path) = admin_bound_path {
        listeners::remove_bound_socket(&path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Keeps systemd's STATUS= current as engines change state.
fn spawn_status_updates(
    daemon: &Arc<Daemon>,
    changed: Arc<tokio::sync::Notify>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let daemon = daemon.clone();
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = changed.notified() => daemon.notifier.status(&daemon.status_line()),
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_quarter_of_the_cores_and_at_least_one_worker() {
        let w: Vec<usize> = [1, 2, 4, 5, 16, 64].map(super::worker_threads).to_vec();
        assert_eq!(w, [1, 1, 1, 2, 4, 16]);
    }
}
