//! Model names: Ollama's `name:tag` (tag `latest` by default) and repositories
//! `org/name[@revision]`, validated once into [`ModelName`]. The lowest layer: the
//! configuration, the store, keys and the scheduler all name models with it.

/// A name that is not a model name, and why.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid model name `{name}`: {why}")]
pub struct InvalidName {
    pub name: String,
    pub why: &'static str,
}

/// A validated model name: `name:tag` (tag defaulting to `latest`) or a repository
/// `org/name[@revision]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName(String);

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
        if name.len() > 200 {
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
            return Ok(ModelName(name.to_string()));
        }
        if name.contains('@') {
            return Err(bad(
                "`@revision` is for repositories (organisation/name@revision)",
            ));
        }
        match name.split_once(':') {
            Some((_, tag)) if tag.contains(':') => Err(bad("more than one `:`")),
            Some(_) => Ok(ModelName(name.to_ascii_lowercase())),
            None => {
                let mut full = String::with_capacity(name.len() + ":latest".len());
                full.push_str(name);
                full.make_ascii_lowercase();
                full.push_str(":latest");
                Ok(ModelName(full))
            }
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
            None => (self.0.as_str(), "main"),
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

impl std::fmt::Display for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
