//! Store operations as the APIs ask for them (admin and Ollama): pull, remove, copy, list.
//! They take the daemon (configuration, scheduler, pulls in progress) and keep the disk work
//! off the async threads.

use tokio::sync::watch;
use vllama_proto::{PullProgress, StoredModel};

use crate::aliases::Aliases;
use crate::models::{self, ModelName};
use crate::state::Daemon;
use crate::store::StoreError;

fn blocking_failed(e: tokio::task::JoinError) -> StoreError {
    StoreError::Io {
        path: "(store)".into(),
        message: e.to_string(),
    }
}

/// Writes an alias change (see [`Aliases::update`]) off the async threads.
async fn update_aliases(
    aliases: &std::sync::Arc<Aliases>,
    state_dir: std::path::PathBuf,
    alias: Option<ModelName>,
    target: ModelName,
) -> Result<(), StoreError> {
    let aliases = aliases.clone();
    tokio::task::spawn_blocking(move || aliases.update(&state_dir, alias.as_ref(), &target))
        .await
        .map_err(blocking_failed)?
        .map_err(|e| StoreError::Io {
            path: "aliases.json".into(),
            message: e.to_string(),
        })
}

/// Starts (or joins) the pull of a model; the receiver follows its progress.
pub async fn pull(daemon: &Daemon, raw: &str) -> Result<watch::Receiver<PullProgress>, StoreError> {
    let name = ModelName::parse(raw)?;
    let config = daemon.config().config.clone();
    let (repo, revision) = crate::store::source_of(&config, daemon.scheduler.aliases(), &name)?;
    let hub_dir = config.paths.state_dir.join("hub");
    // Reads the token file.
    let hub = tokio::task::spawn_blocking(move || crate::store::hub_for(&config))
        .await
        .map_err(blocking_failed)??;
    Ok(daemon.pulls.start(hub, hub_dir, &repo, &revision))
}

/// Waits for a pull to end; its last progress.
pub async fn finished(mut rx: watch::Receiver<PullProgress>) -> PullProgress {
    let _ = rx.wait_for(|p| p.phase.finished()).await;
    let last = rx.borrow().clone();
    last
}

pub async fn list(daemon: &Daemon) -> Vec<StoredModel> {
    let config = daemon.config().config.clone();
    let hub = config.paths.state_dir.join("hub");
    let aliases = daemon.scheduler.aliases().clone();
    tokio::task::spawn_blocking(move || {
        let mut list = crate::store::list(&hub, &aliases);
        // A configured model's own parser choices win over the family table's.
        for m in &mut list {
            let Ok(name) = ModelName::parse(&m.name) else {
                continue;
            };
            let Ok((canonical, model)) = models::lookup(&config, &aliases, &name) else {
                continue;
            };
            if model.tool_parser.is_none() && model.reasoning_parser.is_none() {
                continue;
            }
            if let Ok(info) = models::info_of(&config.paths.state_dir, &canonical, &model) {
                m.capabilities = info.capabilities().iter().map(|c| c.to_string()).collect();
                m.profile = info.profile.describe();
            }
        }
        list
    })
    .await
    .unwrap_or_default()
}

/// Removes a model (or an alias) from the store. A model an engine serves is refused unless
/// `force`, which stops the engine first.
pub async fn remove(daemon: &Daemon, raw: &str, force: bool) -> Result<String, StoreError> {
    let name = ModelName::parse(raw)?;
    let state_dir = daemon.config().config.paths.state_dir.clone();
    // An alias goes alone; the model stays.
    let aliases = daemon.scheduler.aliases();
    if aliases.target(&name).is_some_and(|t| t != name) {
        update_aliases(aliases, state_dir, None, name.clone()).await?;
        return Ok(format!("alias {name}"));
    }
    let config = daemon.config().config.clone();
    let (canonical, _) = models::lookup(&config, aliases, &name)?;
    let (repo, revision) = crate::store::source_of(&config, aliases, &canonical)?;
    if daemon.scheduler.engine_of(&canonical).is_some() {
        if !force {
            return Err(StoreError::InUse(canonical.to_string()));
        }
        tracing::info!(model = %canonical, "removing a loaded model: stopping its engine first");
        let _ = daemon
            .scheduler
            .unload(&canonical, crate::scheduler::Unload::Force)
            .await;
    }
    let hub = state_dir.join("hub");
    let (r, v) = (repo.clone(), revision.clone());
    tokio::task::spawn_blocking(move || crate::store::remove(&hub, &r, &v))
        .await
        .map_err(blocking_failed)??;
    update_aliases(aliases, state_dir, None, canonical.clone()).await?;
    tracing::info!(model = %canonical, repo, revision, "removed from the store");
    Ok(format!("{repo}@{revision}"))
}

/// Ollama's copy: `destination` becomes another name for `source`.
pub async fn copy(daemon: &Daemon, source: &str, destination: &str) -> Result<(), StoreError> {
    let source = ModelName::parse(source)?;
    let destination = ModelName::parse(destination)?;
    let config = daemon.config().config.clone();
    let aliases = daemon.scheduler.aliases();
    let (canonical, model) = models::lookup(&config, aliases, &source)?;
    let state_dir = config.paths.state_dir.clone();
    let (c, s) = (canonical.clone(), model.source.clone());
    // The source must exist: in the store, or as a folder.
    tokio::task::spawn_blocking(move || {
        models::resolve_dir(&state_dir, &c, &s)?;
        Ok::<_, StoreError>(())
    })
    .await
    .map_err(blocking_failed)??;
    update_aliases(
        aliases,
        config.paths.state_dir.clone(),
        Some(destination.clone()),
        canonical.clone(),
    )
    .await?;
    tracing::info!(alias = %destination, model = %canonical, "alias created");
    Ok(())
}
