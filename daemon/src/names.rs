//! Model names: Ollama's `name:tag` (tag `latest` by default) and repositories
//! `org/name[@revision]`, validated once into [`ModelName`]. The lowest layer: the
//! configuration, the store, keys and the scheduler all name models with it.

use std::sync::Arc;

/// The longest model name, in bytes.
const MAX_NAME: usize = 200;

/// A name that is not a model name, and why.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid model name `{name}`: {why}")]
pub struct InvalidName {
    pub name: String,
    pub why: &'static str,
}

/// A validated model name: `name:tag` (tag defaulting to `latest`) or a repository
/// `org/name[@revision]`. Shared, not copied, when cloned: a request's name goes to the
/// scheduler's lease, the access line and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName(Arc<str>);

impl ModelName {
    pub fn parse(raw: &str) -> Result<ModelName, InvalidName> {
        let bad = |why| InvalidName {
            name: raw.to_string(),
            why,
        };
        let name = raw.trim();
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.len() > MAX_NAME {
            return Err(bad("longer than 200 characters"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@'))
        {
            return Err(bad("use letters, digits and . _ - : / @"));
        }
        if name
            .split(['/', ':', '@'])
            .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(bad("empty, `.` or `..` parts are not allowed"));
        }
        if name.matches('/').count() > 1 {
            return Err(bad("at most one `/` (organisation/name)"));
        }
        if name.contains('/') {
            if name.contains(':') {
                return Err(bad("a repository name takes `@revision`, not `:tag`"));
            }
            return Ok(ModelName(Arc::from(name)));
        }
        if name.contains('@') {
            return Err(bad(
                "`@revision` is for repositories (organisation/name@revision)",
            ));
        }
        match name.split_once(':') {
            Some((_, tag)) if tag.contains(':') => Err(bad("more than one `:`")),
            Some(_) => Ok(ModelName(lowered(name, ""))),
            None => Ok(ModelName(lowered(name, ":latest"))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `org/name` and revision, when the name is a repository.
    pub fn as_repo(&self) -> Option<(&str, &str)> {
        if !self.0.contains('/') {
            return None;
        }
        Some(match self.0.split_once('@') {
            Some((repo, rev)) => (repo, rev),
            None => (&*self.0, "main"),
        })
    }

    /// A short, file-name-safe form for engine ids and socket names (≤ 40 bytes).
    pub fn slug(&self) -> String {
        let mut s: String = self
            .0
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        s.truncate(40);
        s
    }
}

/// `name` in lower case followed by `suffix`, made on the stack and shared in one allocation
/// (a name is at most [`MAX_NAME`] bytes; a longer one takes the heap on its way).
fn lowered(name: &str, suffix: &str) -> Arc<str> {
    let mut buf = [0u8; MAX_NAME + ":latest".len()];
    let len = name.len() + suffix.len();
    if let Some(out) = buf.get_mut(..len) {
        let (head, tail) = out.split_at_mut(name.len());
        head.copy_from_slice(name.as_bytes());
        head.make_ascii_lowercase();
        tail.copy_from_slice(suffix.as_bytes());
        if let Ok(text) = std::str::from_utf8(out) {
            return Arc::from(text);
        }
    }
    Arc::from(name.to_ascii_lowercase() + suffix)
}

impl std::fmt::Display for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
