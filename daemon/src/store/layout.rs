//! Hugging Face's cache layout, which vLLM and every HF tool read (`$HF_HOME/hub`):
//! `models--{org}--{name}/{blobs,snapshots/<commit>,refs/<revision>}`.

use std::path::{Path, PathBuf};

/// One repository's folder in the store.
#[derive(Debug, Clone)]
pub struct RepoDir {
    root: PathBuf,
}

impl RepoDir {
    /// `repo` is `org/name` (validated by [`crate::models::ModelName`]).
    pub fn new(hub: &Path, repo: &str) -> RepoDir {
        RepoDir {
            root: hub.join(format!("models--{}", repo.replace('/', "--"))),
        }
    }

    /// The repository of a `models--org--name` folder name.
    pub fn repo_of(folder: &str) -> Option<String> {
        let (org, name) = folder.strip_prefix("models--")?.split_once("--")?;
        Some(format!("{org}/{name}"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    pub fn refs(&self) -> PathBuf {
        self.root.join("refs")
    }
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.snapshots().join(commit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let d = RepoDir::new(Path::new("/s/hub"), "Qwen/Qwen2.5-0.5B-Instruct");
        assert_eq!(
            d.root(),
            Path::new("/s/hub/models--Qwen--Qwen2.5-0.5B-Instruct")
        );
        assert_eq!(
            RepoDir::repo_of("models--Qwen--Qwen2.5-0.5B-Instruct").as_deref(),
            Some("Qwen/Qwen2.5-0.5B-Instruct")
        );
        assert_eq!(RepoDir::repo_of("datasets--a--b"), None);
    }
}
