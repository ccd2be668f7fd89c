//! API keys for the public API.
//!
//! A key is a random secret (`vk-` and 48 hex digits, 192 bits) that clients present as
//! `Authorization: Bearer <key>` (Ollama and OpenAI clients) or `x-api-key: <key>`
//! (Anthropic clients). vllamad keeps only its SHA-256 — a fast hash is enough for a secret
//! this long: there is nothing to guess from a dictionary — with an id (`key_…`, what logs
//! and `vllamactl key list` show), a name, and the models the key may use (none listed: all).
//!
//! A key may carry limits ([`crate::limits`]): requests per minute, tokens per minute
//! (counted from the real usage of its answers) and requests at once. Over one, a request is
//! refused with 429 and `Retry-After` before it reaches an engine. The counts live with the
//! key across changes of the keys file (a `key add` does not reset another key's minute).
//!
//! The keys live in one TOML file (`api.keys_file`, by default `api-keys.toml` in the state
//! directory), which `vllamactl key add|rm` rewrite atomically (written beside and renamed)
//! and which vllamad reads at start, on reload, and after each change. A missing file is no
//! keys at all. More keys, in the same form, may come as the systemd credential `api-keys`
//! (`$CREDENTIALS_DIRECTORY/api-keys`, from `/etc/credstore/api-keys`): provisioned from
//! outside, read-only here.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::models::ModelName;

/// The systemd credential that carries provisioned keys.
pub const CREDENTIAL: &str = "api-keys";

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
    #[error("the key {0:?} comes from the api-keys credential (/etc/credstore/api-keys): remove it there, then `systemctl restart vllamad`")]
    FromCredential(String),
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
    /// When it was made, seconds since the Unix epoch (0: not said).
    #[serde(default)]
    pub created: u64,
    #[serde(flatten)]
    pub limits: Limits,
}

pub use crate::limits::{Admitted, Limited, Limits};
use crate::limits::{Holder, Usage};

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
    usage: Arc<Usage>,
    /// From the `api-keys` credential, not the keys file.
    credential: bool,
}

impl Key {
    /// Whether this key may use `model` (a canonical name).
    pub fn allows(&self, model: &ModelName) -> bool {
        self.models.is_empty() || self.models.contains(model)
    }

    pub fn from_credential(&self) -> bool {
        self.credential
    }

    pub fn restricted(&self) -> bool {
        !self.models.is_empty()
    }

    /// Whether this key may use `name`, or the model `name` is an alias of.
    pub fn may_use(&self, name: &ModelName, aliases: &crate::aliases::Aliases) -> bool {
        self.allows(name) || aliases.target(name).is_some_and(|t| self.allows(&t))
    }

    pub fn touch(&self) {
        self.usage.touch();
    }

    /// Seconds since the epoch of its last use (none since vllamad started: `None`).
    pub fn last_used(&self) -> Option<u64> {
        self.usage.last_used()
    }

    /// Lets a request in under the key's limits, or says which it meets and for how long.
    pub fn admit(&self) -> Result<Admitted, Limited> {
        self.usage.admit(self.record.limits, Holder::Key)
    }

    /// Requests of this key running now.
    pub fn in_flight(&self) -> u32 {
        self.usage.in_flight()
    }
}

/// The keys in force, found by the hash of what a client presents.
#[derive(Debug, Default)]
pub struct KeyRing {
    by_hash: HashMap<[u8; 32], Arc<Key>>,
    /// In the file's order.
    keys: Vec<Arc<Key>>,
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
                usage: Arc::default(),
                credential: false,
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

    /// Reads the keys file and the `api-keys` credential, if vllamad was given one; blocking.
    pub fn read(keys_file: &Path) -> Result<KeyRing, KeyError> {
        let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|dir| std::path::PathBuf::from(dir).join(CREDENTIAL));
        KeyRing::read_with(keys_file, credential.as_deref())
    }

    /// The keys file's keys, then the credential file's (marked read-only).
    pub fn read_with(keys_file: &Path, credential: Option<&Path>) -> Result<KeyRing, KeyError> {
        let mut ring = KeyRing::load(keys_file)?;
        let Some(path) = credential else {
            return Ok(ring);
        };
        let provisioned = KeyRing::load(path)?;
        for key in provisioned.keys {
            if ring.keys.iter().any(|k| k.record.id == key.record.id) {
                return Err(KeyError::Parse {
                    path: path.display().to_string(),
                    message: format!(
                        "the key id {} is in {} too",
                        key.record.id,
                        keys_file.display()
                    ),
                });
            }
            let key = Arc::new(Key {
                record: key.record.clone(),
                models: key.models.clone(),
                usage: Arc::default(),
                credential: true,
            });
            if let Some(hash) = unhex(&key.record.sha256) {
                ring.by_hash.insert(hash, key.clone());
            }
            ring.keys.push(key);
        }
        Ok(ring)
    }

    /// The keys file's records (not the credential's).
    fn records(&self) -> Vec<KeyRecord> {
        self.keys
            .iter()
            .filter(|k| !k.credential)
            .map(|k| k.record.clone())
            .collect()
    }

    /// The ring with a new key, and that key's secret (shown once, never kept).
    pub fn with_new(
        &self,
        name: &str,
        models: &[String],
        limits: Limits,
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
            created: crate::limits::now_seconds(),
            limits,
        };
        let mut records = self.records();
        records.push(record.clone());
        let ring = KeyRing::from_records(records, "new key")?.carry_usage(self);
        Ok((ring, secret, record))
    }

    /// The ring without the key `id` (or its name).
    pub fn without(&self, id: &str) -> Result<(KeyRing, KeyRecord), KeyError> {
        let gone = self
            .keys
            .iter()
            .find(|k| k.record.id == id || k.record.name == id)
            .ok_or_else(|| KeyError::NoSuchKey(id.to_string()))?;
        if gone.credential {
            return Err(KeyError::FromCredential(gone.record.id.clone()));
        }
        let gone = gone.record.clone();
        let records = self
            .records()
            .into_iter()
            .filter(|r| r.id != gone.id)
            .collect();
        let ring = KeyRing::from_records(records, "keys")?.carry_usage(self);
        Ok((ring, gone))
    }

    /// This ring with each key's usage (last use, requests running, its minute's counts)
    /// carried over from the ring it replaces.
    pub fn carry_usage(self, old: &KeyRing) -> KeyRing {
        let carried = |key: &Arc<Key>| match old.keys.iter().find(|k| k.record.id == key.record.id)
        {
            Some(before) => Arc::new(Key {
                record: key.record.clone(),
                models: key.models.clone(),
                usage: before.usage.clone(),
                credential: key.credential,
            }),
            None => key.clone(),
        };
        let keys: Vec<Arc<Key>> = self.keys.iter().map(carried).collect();
        let by_hash = self
            .by_hash
            .iter()
            .filter_map(|(hash, key)| {
                let k = keys.iter().find(|k| k.record.id == key.record.id)?;
                Some((*hash, k.clone()))
            })
            .collect();
        KeyRing { by_hash, keys }
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

/// In a request's extensions when its key is restricted to some models: the model lists
/// (`/api/tags`, `/api/ps`, `/v1/models`) show only those.
#[derive(Debug, Clone)]
pub struct Restricted(pub Arc<Key>);

/// Whether a request with these extensions may see the model `name` in a list.
pub fn visible(
    extensions: &http::Extensions,
    name: &str,
    aliases: &crate::aliases::Aliases,
) -> bool {
    match extensions.get::<Restricted>() {
        None => true,
        Some(Restricted(key)) => ModelName::parse(name).is_ok_and(|n| key.may_use(&n, aliases)),
    }
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
            .with_new("ci", &["tiny".to_string()], Limits::default())
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
            ring.with_new("ci", &[], Limits::default()),
            Err(KeyError::NameTaken(_))
        ));
        assert!(matches!(
            ring.with_new("a b", &[], Limits::default()),
            Err(KeyError::BadName)
        ));
        let (empty, gone) = ring.without("ci").unwrap();
        assert_eq!(gone.id, record.id);
        assert!(empty.is_empty() && empty.verify(&secret).is_none());
    }

    fn key_with(limits: Limits) -> (KeyRing, Arc<Key>) {
        let (ring, secret, _) = KeyRing::default().with_new("l", &[], limits).unwrap();
        let key = ring.verify(&secret).unwrap();
        (ring, key)
    }

    #[test]
    fn concurrency_counts_requests_until_they_end() {
        let (ring, key) = key_with(Limits {
            concurrency: Some(1),
            ..Limits::default()
        });
        let first = key.admit().unwrap();
        assert_eq!(key.admit().unwrap_err().limit, "concurrency");
        // A new version of the ring (a key added) shares the count.
        let (ring2, _, _) = ring.with_new("other", &[], Limits::default()).unwrap();
        let same = ring2
            .keys()
            .iter()
            .find(|k| k.record.id == key.record.id)
            .unwrap()
            .clone();
        assert_eq!(same.admit().unwrap_err().limit, "concurrency");
        drop(first);
        assert!(same.admit().is_ok());
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
    fn credential_keys_verify_but_stay_out_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (file_ring, file_secret, _) = KeyRing::default()
            .with_new("local", &[], Limits::default())
            .unwrap();
        let keys_file = dir.path().join("api-keys.toml");
        file_ring.save(&keys_file).unwrap();
        // A provisioned record, written by hand: `created` may be left out.
        let secret = "vk-provisioned-by-ansible";
        let credential = dir.path().join("api-keys");
        std::fs::write(
            &credential,
            format!(
                "[[key]]\nid = \"key_ops\"\nname = \"ops\"\nsha256 = \"{}\"\nrpm = 5\n",
                hex(&digest(secret))
            ),
        )
        .unwrap();
        let ring = KeyRing::read_with(&keys_file, Some(&credential)).unwrap();
        let ops = ring.verify(secret).unwrap();
        assert!(ops.from_credential() && ops.record.limits.rpm == Some(5));
        assert!(!ring.verify(&file_secret).unwrap().from_credential());
        assert!(matches!(
            ring.without("ops"),
            Err(KeyError::FromCredential(_))
        ));
        assert!(matches!(
            ring.with_new("ops", &[], Limits::default()),
            Err(KeyError::NameTaken(_))
        ));
        // A new key is written with the file's keys only.
        let (more, _, _) = ring.with_new("more", &[], Limits::default()).unwrap();
        let text = more.render();
        assert!(text.contains("local") && text.contains("more") && !text.contains("key_ops"));
        // A missing credential is no keys; an id in both is refused.
        let missing = dir.path().join("nothing");
        assert_eq!(
            KeyRing::read_with(&keys_file, Some(&missing))
                .unwrap()
                .len(),
            1
        );
        std::fs::copy(&keys_file, &credential).unwrap();
        let e = KeyRing::read_with(&keys_file, Some(&credential)).unwrap_err();
        assert!(e.to_string().contains("too"), "{e}");
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
