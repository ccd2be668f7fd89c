//! Configuration reload (SIGHUP, `systemctl reload`, `vllamactl reload`): tell systemd
//! (`RELOADING=1`), read and validate the file off the runtime's workers, then swap the new
//! configuration in whole or keep the old one, and say `READY=1` again either way.

use std::time::SystemTime;

use vllama_proto::ReloadOutcome;

use crate::auth::AccessPolicy;
use crate::config::{self, ConfigError};
use crate::state::{ActiveConfig, Daemon};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the configuration loader stopped unexpectedly: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Log(#[from] crate::logging::LogError),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    #[error("the API listens on a non-loopback address and this configuration has no API keys: add one (vllamactl key add NAME) or set api.allow_unauthenticated = true")]
    Exposed,
}

/// Loads the configuration and resolves its groups; blocking. Also returns the warnings
/// to log (the caller logs them: at start, logging is not up yet).
pub fn load_active(
    source: &config::ConfigSource,
    generation: u64,
) -> Result<(ActiveConfig, Vec<String>), ConfigError> {
    let loaded = config::load(source, std::env::vars())?;
    let access = AccessPolicy::resolve(&loaded.config.admin);
    let active = ActiveConfig {
        config: loaded.config,
        file: loaded.file,
        generation,
        loaded_at: SystemTime::now(),
        access,
    };
    Ok((active, loaded.warnings))
}

pub async fn reload(daemon: &Daemon) -> ReloadOutcome {
    let _one_at_a_time = daemon.reload_lock.lock().await;
    daemon.notifier.reloading();
    let old = daemon.config();
    let result = try_reload(daemon, old.generation + 1).await;
    let outcome = match result {
        Ok(needs_restart) => {
            daemon.metrics.reload(true);
            let generation = daemon.config().generation;
            tracing::info!(generation, ?needs_restart, "configuration reloaded");
            for key in &needs_restart {
                tracing::warn!(
                    key,
                    "changed in the file, but takes effect only after a restart"
                );
            }
            ReloadOutcome {
                generation,
                applied: true,
                error: None,
                needs_restart,
            }
        }
        Err(e) => {
            daemon.metrics.reload(false);
            let message = e.to_string();
            tracing::error!(
                error = %message,
                generation = old.generation,
                "configuration reload refused; the previous configuration stays in force"
            );
            daemon.set_reload_error(Some(message.clone()));
            ReloadOutcome {
                generation: old.generation,
                applied: false,
                error: Some(message),
                needs_restart: Vec::new(),
            }
        }
    };
    daemon.notifier.ready(&daemon.status_line());
    outcome
}

async fn try_reload(daemon: &Daemon, generation: u64) -> Result<Vec<String>, ReloadError> {
    let source = daemon.source.clone();
    let (new, warnings) =
        tokio::task::spawn_blocking(move || load_active(&source, generation)).await??;
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    // The keys file may have been edited by hand (or moved): read it with the rest, so a
    // bad one keeps the old configuration and keys in force.
    let keys_file = new.config.api.keys_file.clone();
    let keys =
        tokio::task::spawn_blocking(move || crate::keys::KeyRing::read(&keys_file)).await??;
    let old = daemon.config();
    if daemon.exposed() && keys.is_empty() && !new.config.api.allow_unauthenticated {
        return Err(ReloadError::Exposed);
    }
    let needs_restart = config::restart_only_changes(&old.config, &new.config);
    if let Some(log) = &daemon.log {
        log.set_filter(&new.config.log.filter)?;
    }
    let state_dir = new.config.paths.state_dir.clone();
    daemon.publish(new);
    daemon.set_keys(keys);
    // Engines started otherwise than the new configuration says: once each, the rest untouched.
    let restarted = daemon.scheduler.restart_changed(&old.config);
    if !restarted.is_empty() {
        let names: Vec<String> = restarted.iter().map(ToString::to_string).collect();
        tracing::info!(models = %names.join(", "), "restarting the engines whose configuration changed");
    }
    // Aliases may have been edited by hand.
    let aliases = daemon.scheduler.aliases().clone();
    let _ = tokio::task::spawn_blocking(move || aliases.load(&state_dir)).await;
    Ok(needs_restart)
}
