//! The model store: Hugging Face repositories pulled into `<state_dir>/hub` in the HF cache
//! layout ([`layout`]), pulled by [`pull`] from the hub ([`hub`]); listing, removal, and
//! aliases (Ollama's `copy`). Everything here that touches the disk is blocking and runs off
//! the request path (`spawn_blocking`).

pub mod hub;
pub mod layout;
pub mod pull;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use vllama_proto::StoredModel;

use crate::config::Config;
use crate::models::{self, ModelName};
use layout::RepoDir;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Model(#[from] models::ModelError),
    #[error("\"{name}\" is served from the local folder {path}: there is nothing to pull")]
    LocalFolder { name: String, path: String },
    #[error("\"{0}\" is not in the store")]
    NotStored(String),
    #[error("\"{0}\" is loaded: unload it first (vllamactl unload), or remove with --force")]
    InUse(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("store.endpoint: {0}")]
    Endpoint(String),
}

impl StoreError {
    /// The HTTP status that tells a client what went wrong.
    pub fn status(&self) -> hyper::StatusCode {
        use hyper::StatusCode as S;
        match self {
            StoreError::Model(models::ModelError::InvalidName { .. })
            | StoreError::LocalFolder { .. } => S::BAD_REQUEST,
            StoreError::Model(_) | StoreError::NotStored(_) => S::NOT_FOUND,
            StoreError::InUse(_) => S::CONFLICT,
            StoreError::Io { .. } | StoreError::Endpoint(_) => S::INTERNAL_SERVER_ERROR,
        }
    }
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The repository and revision a model name is pulled from.
impl From<crate::names::InvalidName> for StoreError {
    fn from(e: crate::names::InvalidName) -> StoreError {
        StoreError::Model(e.into())
    }
}

pub fn source_of(
    config: &Config,
    aliases: &crate::aliases::Aliases,
    name: &ModelName,
) -> Result<(String, String), StoreError> {
    let (_, model) = models::lookup(config, aliases, name)?;
    if Path::new(&model.source).is_absolute() {
        return Err(StoreError::LocalFolder {
            name: name.to_string(),
            path: model.source.clone(),
        });
    }
    let (repo, rev) = model
        .source
        .split_once('@')
        .unwrap_or((model.source.as_str(), "main"));
    // Sources in the configuration are checked by the same rules as names.
    let checked = ModelName::parse(repo)?;
    Ok((checked.to_string(), rev.to_string()))
}

/// The hub client for the configuration: `store.endpoint`, else `$HF_ENDPOINT`, else the
/// public hub; the token from `store.token_file`, else the `hf-token` systemd credential,
/// else `$HF_TOKEN`.
pub fn hub_for(config: &Config) -> Result<hub::Hub, StoreError> {
    let endpoint = config
        .store
        .endpoint
        .clone()
        .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()))
        .unwrap_or_else(|| crate::config::DEFAULT_HUB_ENDPOINT.to_string());
    hub::Hub::new(&endpoint, token(config)).map_err(StoreError::Endpoint)
}

fn token(config: &Config) -> Option<String> {
    let credential =
        std::env::var_os("CREDENTIALS_DIRECTORY").map(|d| PathBuf::from(d).join("hf-token"));
    config
        .store
        .token_file
        .iter()
        .chain(credential.iter())
        .find_map(|p| std::fs::read_to_string(p).ok())
        .or_else(|| std::env::var("HF_TOKEN").ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// The Ollama-style name a stored repository is listed under.
fn display_name(repo: &str, revision: &str) -> String {
    if revision == "main" {
        if let Some((name, _)) = models::CATALOG.iter().find(|(_, r)| *r == repo) {
            return name.to_string();
        }
        return repo.to_string();
    }
    format!("{repo}@{revision}")
}

/// Every `repo@revision` in the store, with what its folder says.
pub fn list(hub: &Path, aliases: &crate::aliases::Aliases) -> Vec<StoredModel> {
    let Ok(entries) = std::fs::read_dir(hub) else {
        return Vec::new();
    };
    let aliases = aliases.all();
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(repo) = entry.file_name().to_str().and_then(RepoDir::repo_of) else {
            continue;
        };
        let dir = RepoDir::new(hub, &repo);
        let Ok(refs) = std::fs::read_dir(dir.refs()) else {
            continue;
        };
        for r in refs.flatten() {
            let Some(revision) = r.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if revision.starts_with('.') {
                continue;
            }
            let Ok(commit) = std::fs::read_to_string(r.path()) else {
                continue;
            };
            let commit = commit.trim().to_string();
            let snapshot = dir.snapshot(&commit);
            let Ok(info) = crate::model_info::ModelInfo::read(&snapshot) else {
                continue;
            };
            let modified = r.metadata().and_then(|m| m.modified()).ok();
            let capabilities: Vec<String> =
                info.capabilities().iter().map(|c| c.to_string()).collect();
            let profile = info.profile.describe();
            let name = display_name(&repo, &revision);
            let canonical = ModelName::parse(&name)
                .map(|n| n.to_string())
                .unwrap_or_default();
            out.push(StoredModel {
                aliases: aliases
                    .iter()
                    .filter(|(_, target)| **target == canonical)
                    .map(|(alias, _)| alias.clone())
                    .collect(),
                name,
                repo: repo.clone(),
                revision,
                commit,
                size_bytes: snapshot_bytes(&snapshot),
                modified_at: modified.map(crate::units::rfc3339).unwrap_or_default(),
                family: info.family,
                architecture: info.architecture,
                parameter_count: info.parameter_count,
                quantization: info.quantization,
                context_length: info.context_length,
                embedding: info.embedding,
                vision: info.vision,
                capabilities,
                profile,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Bytes of the distinct blobs a snapshot links to.
fn snapshot_bytes(snapshot: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    for path in files_under(snapshot) {
        if let Ok(target) = std::fs::canonicalize(&path) {
            if seen.insert(target.clone()) {
                total += std::fs::metadata(&target).map_or(0, |m| m.len());
            }
        }
    }
    total
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) => out.push(p),
                Err(_) => {}
            }
        }
    }
    out
}

/// Removes `repo@revision`: its ref, its snapshot unless another ref uses it, and the blobs
/// no remaining snapshot links to; the repository's folder when nothing is left.
pub fn remove(hub: &Path, repo: &str, revision: &str) -> Result<(), StoreError> {
    let dir = RepoDir::new(hub, repo);
    let ref_path = dir.refs().join(revision);
    let commit = if revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        revision.to_string()
    } else {
        std::fs::read_to_string(&ref_path)
            .map_err(|_| StoreError::NotStored(format!("{repo}@{revision}")))?
            .trim()
            .to_string()
    };
    if ref_path.exists() {
        std::fs::remove_file(&ref_path).map_err(|e| io(&ref_path, e))?;
    }
    let still_used: HashSet<String> = std::fs::read_dir(dir.refs())
        .map(|rs| {
            rs.flatten()
                .filter_map(|r| std::fs::read_to_string(r.path()).ok())
                .map(|c| c.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    if !still_used.contains(&commit) {
        let snapshot = dir.snapshot(&commit);
        if snapshot.exists() {
            std::fs::remove_dir_all(&snapshot).map_err(|e| io(&snapshot, e))?;
        }
    }
    // Blobs that no remaining snapshot links to.
    let mut linked = HashSet::new();
    for path in files_under(&dir.snapshots()) {
        if let Ok(target) = std::fs::canonicalize(&path) {
            linked.insert(target);
        }
    }
    if let Ok(blobs) = std::fs::read_dir(dir.blobs()) {
        for b in blobs.flatten() {
            let p = b.path();
            let keep = std::fs::canonicalize(&p).is_ok_and(|c| linked.contains(&c));
            if !keep {
                std::fs::remove_file(&p).map_err(|e| io(&p, e))?;
            }
        }
    }
    let empty = std::fs::read_dir(dir.snapshots()).map_or(true, |mut d| d.next().is_none());
    if empty {
        std::fs::remove_dir_all(dir.root()).map_err(|e| io(dir.root(), e))?;
    }
    Ok(())
}
