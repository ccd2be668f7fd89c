//! Aliases (Ollama's `/api/copy`): other names for a model, kept in
//! `<state_dir>/aliases.json` and in memory. Name lookups on the request path read the
//! in-memory map ([`Aliases::target`]); only a copy or a removal writes the file. One value,
//! owned by the daemon (its scheduler), not a process-wide map: two daemons in one process
//! (the tests) keep their own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::names::ModelName;

/// alias → canonical target.
#[derive(Debug, Default)]
pub struct Aliases {
    map: RwLock<BTreeMap<String, String>>,
}

fn file(state_dir: &Path) -> PathBuf {
    state_dir.join("aliases.json")
}

impl Aliases {
    /// Reads the aliases file (at start and on reload). Blocking.
    pub fn load(&self, state_dir: &Path) {
        let map: BTreeMap<String, String> = std::fs::read(file(state_dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// What an alias names.
    pub fn target(&self, name: &ModelName) -> Option<ModelName> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(name.as_str())
            .and_then(|t| ModelName::parse(t).ok())
    }

    pub fn all(&self) -> BTreeMap<String, String> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds `alias` → `target` (replacing an alias of that name), or removes every alias of
    /// `target` when `alias` is None. Blocking: writes the file (atomically).
    pub fn update(
        &self,
        state_dir: &Path,
        alias: Option<&ModelName>,
        target: &ModelName,
    ) -> std::io::Result<()> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let mut next = map.clone();
        match alias {
            Some(a) => {
                next.insert(a.to_string(), target.to_string());
            }
            None => next.retain(|a, t| t != target.as_str() && a != target.as_str()),
        }
        std::fs::create_dir_all(state_dir)?;
        let tmp = state_dir.join(".aliases.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&next).unwrap_or_default())?;
        std::fs::rename(&tmp, file(state_dir))?;
        *map = next;
        Ok(())
    }
}
