//! API keys for the public API.
//!
//! A key is a random secret (`vk-` and 48 hex digits, 192 bits) that clients present as
//! `Authorization: Bearer <key>` (Ollama and OpenAI clients) or `x-api-key: <key>`
//! (Anthropic clients). vllamad keeps only its SHA-256 — a fast hash is enough for a secret
//! this long: there is nothing to guess from a dictionary — with an id (`key_…`, what logs
//! and `vllamactl key list` show), a name, and the models the key may use (none listed: all).
//!
//! The keys live in one TOML file (`api.keys_file`, by default `api-keys.toml` in the state
//! directory), which `vllamactl key add|rm` rewrite atomically (written beside and renamed)
//! and which vllamad reads at start, on reload, and after each change. A missing file is no
//! keys at all.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::models::ModelName;

/// What every secret starts with (so a leaked one is easy to find in a scan).
pub const PREFIX: &str = "vk-";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no randomness for a new key: {0}")]
    Random(#[source] std::io::Error),
    #[error("a key named {0:?} exists already")]
    NameTaken(String),
    #[error("no key has the id {0:?}")]
    NoSuchKey(String),
    #[error("{0:?} is not a model name: {1}")]
    BadModel(String, String),
    #[error("a key's name is 1 to 64 letters, digits, '-', '_' or '.'")]
    BadName,
}

/// One key as the file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// SHA-256 of the secret, in hex.
    pub sha256: String,
    /// The models this key may use; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// When it was made, seconds since the Unix epoch.
    pub created: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default, rename = "key")]
    keys: Vec<KeyRecord>,
}

/// A key in force.
#[derive(Debug)]
pub struct Key {
    pub record: KeyRecord,
    models: Vec<ModelName>,
    /// Seconds since the epoch of its last use (0: not used since vllamad started).
    last_used: AtomicU64,
}

impl Key {
    /// Whether this key may use `model` (a canonical name).
    pub fn allows(&self, model: &ModelName) -> bool {
        self.models.is_empty() || self.models.contains(model)
    }

    pub fn restricted(&self) -> bool {
        !self.models.is_empty()
    }

    pub fn touch(&self) {
        self.last_used.store(now(), Ordering::Relaxed);
    }

    pub fn last_used(&self) -> Option<u64> {
        Some(self.last_used.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }
}

/// The keys in force, found by the hash of what a client presents.
#[derive(Debug, Default)]
pub struct KeyRing {
    by_hash: HashMap<[u8; 32], Arc<Key>>,
    /// In the file's order.
    keys: Vec<Arc<Key>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *slot = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

fn random_hex(bytes: usize) -> Result<String, KeyError> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .map_err(KeyError::Random)?;
    Ok(hex(&buf))
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl KeyRing {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn keys(&self) -> &[Arc<Key>] {
        &self.keys
    }

    /// The key whose secret this is.
    pub fn verify(&self, secret: &str) -> Option<Arc<Key>> {
        self.by_hash.get(&digest(secret)).cloned()
    }

    fn from_records(records: Vec<KeyRecord>, path: &str) -> Result<KeyRing, KeyError> {
        let mut ring = KeyRing::default();
        for record in records {
            let parse = |message: String| KeyError::Parse {
                path: path.to_string(),
                message,
            };
            let hash = unhex(&record.sha256)
                .ok_or_else(|| parse(format!("key {}: sha256 is not 64 hex digits", record.id)))?;
            let models = record
                .models
                .iter()
                .map(|m| {
                    ModelName::parse(m).map_err(|e| KeyError::BadModel(m.clone(), e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if ring.keys.iter().any(|k| k.record.id == record.id) {
                return Err(parse(format!("two keys have the id {}", record.id)));
            }
            let key = Arc::new(Key {
                record,
                models,
                last_used: AtomicU64::new(0),
            });
            ring.by_hash.insert(hash, key.clone());
            ring.keys.push(key);
        }
        Ok(ring)
    }

    pub fn parse(text: &str, path: &Path) -> Result<KeyRing, KeyError> {
        let shown = path.display().to_string();
        let file: KeysFile = toml::from_str(text).map_err(|e| KeyError::Parse {
            path: shown.clone(),
            message: e.message().to_string(),
        })?;
        KeyRing::from_records(file.keys, &shown)
    }

    /// Reads the keys file; blocking. A missing file holds no keys.
    pub fn load(path: &Path) -> Result<KeyRing, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => KeyRing::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyRing::default()),
            Err(source) => Err(KeyError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    fn records(&self) -> Vec<KeyRecord> {
        self.keys.iter().map(|k| k.record.clone()).collect()
    }

    /// The ring with a new key, and that key's secret (shown once, never kept).
    pub fn with_new(
        &self,
        name: &str,
        models: &[String],
    ) -> Result<(KeyRing, String, KeyRecord), KeyError> {
        if !valid_name(name) {
            return Err(KeyError::BadName);
        }
        if self.keys.iter().any(|k| k.record.name == name) {
            return Err(KeyError::NameTaken(name.to_string()));
        }
        let canonical = models
            .iter()
            .map(|m| {
                ModelName::parse(m)
                    .map(|n| n.to_string())
                    .map_err(|e| KeyError::BadModel(m.clone(), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let secret = format!("{PREFIX}{}", random_hex(24)?);
        let record = KeyRecord {
            id: format!("key_{}", random_hex(6)?),
            name: name.to_string(),
            sha256: hex(&digest(&secret)),
            models: canonical,
            created: now(),
        };
        let mut records = self.records();
        records.push(record.clone());
        let ring = KeyRing::from_records(records, "new key")?;
        ring.keep_last_use(self);
        Ok((ring, secret, record))
    }

    /// The ring without the key `id` (or its name).
    pub fn without(&self, id: &str) -> Result<(KeyRing, KeyRecord), KeyError> {
        let gone = self
            .keys
            .iter()
            .find(|k| k.record.id == id || k.record.name == id)
            .map(|k| k.record.clone())
            .ok_or_else(|| KeyError::NoSuchKey(id.to_string()))?;
        let records = self
            .records()
            .into_iter()
            .filter(|r| r.id != gone.id)
            .collect();
        let ring = KeyRing::from_records(records, "keys")?;
        ring.keep_last_use(self);
        Ok((ring, gone))
    }

    /// Carries the last-use times over from the ring this one replaces.
    pub fn keep_last_use(&self, old: &KeyRing) {
        for key in &self.keys {
            if let Some(before) = old.keys.iter().find(|k| k.record.id == key.record.id) {
                key.last_used
                    .store(before.last_used.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let file = KeysFile {
            keys: self.records(),
        };
        let body = toml::to_string(&file).unwrap_or_default();
        format!(
            "# vllamad's API keys: written by `vllamactl key add` and `vllamactl key rm`.\n\
             # Only SHA-256 hashes of the keys are kept here.\n\n{body}"
        )
    }

    /// Writes the file (mode 0600) beside its place, then renames it there; blocking.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let failed = |source| KeyError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let tmp = path.with_extension("toml.new");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(failed)?;
        f.write_all(self.render().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(failed)?;
        std::fs::rename(&tmp, path).map_err(failed)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No key presented.
    Missing,
    /// A key nobody has.
    Invalid,
    /// A key that may not use this model.
    Model(String),
}

impl Denied {
    /// The `reason` label of `vllama_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Invalid => "invalid",
            Denied::Model(_) => "model",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Denied::Missing => "this server wants an API key: send it as `Authorization: Bearer <key>` (or `x-api-key: <key>`)".into(),
            Denied::Invalid => "invalid API key".into(),
            Denied::Model(m) => format!("this API key may not use the model {m:?}"),
        }
    }
}

impl KeyRing {
    /// The key the request presents.
    pub fn check(&self, headers: &http::HeaderMap) -> Result<Arc<Key>, Denied> {
        let secret = presented(headers).ok_or(Denied::Missing)?;
        let key = self.verify(secret).ok_or(Denied::Invalid)?;
        key.touch();
        Ok(key)
    }
}

/// The model a request body names (`model`, or `name` in Ollama's older routes), read
/// without building the whole document.
pub fn model_in(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Named {
        model: Option<String>,
        name: Option<String>,
    }
    let named: Named = serde_json::from_slice(body).ok()?;
    named.model.or(named.name).filter(|m| !m.is_empty())
}

/// What the client presented: `Authorization: Bearer …` or `x-api-key: …`.
pub fn presented(headers: &http::HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    bearer.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_verifies_and_is_kept_only_as_its_hash() {
        let (ring, secret, record) = KeyRing::default()
            .with_new("ci", &["tiny".to_string()])
            .unwrap();
        assert!(secret.starts_with(PREFIX) && secret.len() == PREFIX.len() + 48);
        let key = ring.verify(&secret).unwrap();
        assert_eq!(key.record, record);
        assert!(ring.verify("vk-wrong").is_none());
        assert!(key.allows(&ModelName::parse("tiny:latest").unwrap()));
        assert!(!key.allows(&ModelName::parse("other").unwrap()));
        let text = ring.render();
        assert!(
            !text.contains(&secret) && text.contains(&record.sha256),
            "{text}"
        );
        // The file reads back to the same keys.
        let again = KeyRing::parse(&text, Path::new("k.toml")).unwrap();
        assert_eq!(again.verify(&secret).unwrap().record, record);
        assert!(matches!(
            ring.with_new("ci", &[]),
            Err(KeyError::NameTaken(_))
        ));
        assert!(matches!(ring.with_new("a b", &[]), Err(KeyError::BadName)));
        let (empty, gone) = ring.without("ci").unwrap();
        assert_eq!(gone.id, record.id);
        assert!(empty.is_empty() && empty.verify(&secret).is_none());
    }

    #[test]
    fn a_bad_file_is_refused_with_its_reason() {
        let e = KeyRing::parse(
            "[[key]]\nid = \"k\"\nname = \"n\"\nsha256 = \"xy\"\ncreated = 1\n",
            Path::new("k.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("sha256"), "{e}");
        assert!(KeyRing::parse("[[key]]\nid = 1\n", Path::new("k.toml")).is_err());
        assert!(KeyRing::load(Path::new("/nonexistent/keys.toml"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn keys_are_read_from_bearer_or_x_api_key() {
        let mut h = http::HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("x-api-key", "vk-a".parse().unwrap());
        assert_eq!(presented(&h), Some("vk-a"));
        h.insert(http::header::AUTHORIZATION, "Bearer vk-b".parse().unwrap());
        assert_eq!(presented(&h), Some("vk-b"));
    }
}
