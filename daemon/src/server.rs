//! The daemon's life: listeners up, `READY=1`, signals (SIGHUP reloads, SIGTERM/SIGINT
//! drain and stop), and an orderly shutdown within the configured grace.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, ConfigSource, LogFormat};
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
    #[error("cannot install a signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// What `main` hands the server.
#[derive(Debug)]
pub struct Options {
    pub config: ConfigSource,
    /// `--log-format`, which wins over the configuration.
    pub log_format: Option<LogFormat>,
    pub activated: ActivatedFds,
}

/// Runs the daemon until SIGTERM or SIGINT, then drains and returns.
pub async fn run(options: Options) -> Result<(), ServerError> {
    let notifier = Notifier::from_env();
    let active = match reload::load_active(&options.config, 1) {
        Ok(active) => active,
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
    if options.activated.is_empty() {
        tracing::debug!("not socket-activated: binding listeners from the configuration");
    }

    let bound = listeners::obtain(options.activated, &active.config)?;
    let admin_bound_path = bound.admin_bound_path.clone();
    let daemon = Arc::new(Daemon::new(
        options.config,
        active,
        bound.info,
        notifier.clone(),
        Some(log),
    ));

    let mut sigterm = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(ServerError::Signal)?;

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    crate::api::spawn(bound.api, daemon.clone(), &tracker, shutdown.clone());
    crate::admin::spawn(bound.admin, daemon.clone(), &tracker, shutdown.clone());
    notifier.spawn_watchdog(&tracker, shutdown.clone());
    notifier.ready(&daemon.status_line());
    tracing::info!(status = %daemon.status_line(), "ready");

    let signal_name = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => {
                let daemon = daemon.clone();
                tracker.spawn(async move { reload::reload(&daemon).await });
            }
        }
    };

    // Drain with the grace in force now (a reload may have changed it).
    let grace = daemon.config().config.daemon.shutdown_grace.0;
    tracing::info!(signal = signal_name, grace = ?grace, "stopping: no new connections; draining requests in flight");
    notifier.stopping();
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(grace = ?grace, "requests still in flight after the shutdown grace; closing them");
    }
    if let Some(path) = admin_bound_path {
        listeners::remove_bound_socket(&path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Accept errors (out of fds, a connection reset before accept) must not end the loop;
/// back off briefly so a full fd table does not spin the CPU.
pub(crate) async fn accept_failed(e: &std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
