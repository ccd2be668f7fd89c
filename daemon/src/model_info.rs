//! What a model folder says about the model, for Ollama's /api/tags, /api/show and /api/ps and
//! the scheduler: config.json (architecture, context length, dtype, vision), the safetensors
//! headers (parameter count), the tokenizer's chat template (tools, thinking). Blocking.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Facts about one model folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub dir: PathBuf,
    /// `model_type` from config.json, e.g. `llama`, `qwen2`.
    pub family: String,
    pub architecture: String,
    pub context_length: Option<u64>,
    pub parameter_count: u64,
    pub quantization: String,
    pub size: u64,
    pub digest: String,
    pub modified_at: SystemTime,
    pub template: Option<String>,
    pub vision: bool,
    pub embedding: bool,
    /// The engine flags it gets and so what it can do (tools, thinking); the configuration's
    /// choices are applied by `models::info_of`.
    pub profile: crate::engine::profile::Profile,
}

/// `details` of Ollama's model listings.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Details {
    pub parent_model: String,
    pub format: String,
    pub family: String,
    pub families: Vec<String>,
    pub parameter_size: String,
    pub quantization_level: String,
}

impl ModelInfo {
    pub fn read(dir: &Path) -> std::io::Result<ModelInfo> {
        let config_path = dir.join("config.json");
        let config_text = std::fs::read(&config_path)?;
        let config: Value = serde_json::from_slice(&config_text).unwrap_or(Value::Null);
        let text = config.get("text_config").unwrap_or(&config);
        let family = config
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        let architecture = config
            .pointer("/architectures/0")
            .and_then(Value::as_str)
            .unwrap_or(&family)
            .to_string();
        let context_length = text
            .get("max_position_embeddings")
            .and_then(Value::as_u64)
            .or_else(|| {
                config
                    .get("max_position_embeddings")
                    .and_then(Value::as_u64)
            })
            .or_else(|| config.get("max_seq_len").and_then(Value::as_u64));
        let quantization = match config
            .pointer("/quantization_config/quant_method")
            .and_then(Value::as_str)
        {
            Some(q) => q.to_ascii_uppercase(),
            None => match config
                .get("torch_dtype")
                .and_then(Value::as_str)
                .or(config.get("dtype").and_then(Value::as_str))
            {
                Some("bfloat16") => "BF16".into(),
                Some("float16") => "F16".into(),
                Some("float32") => "F32".into(),
                Some(other) => other.to_ascii_uppercase(),
                None => "unknown".into(),
            },
        };
        let arch_lower = architecture.to_ascii_lowercase();
        let vision = config.get("vision_config").is_some()
            || arch_lower.contains("vl")
            || arch_lower.contains("vision")
            || arch_lower.contains("llava");
        let embedding = !arch_lower.contains("causallm")
            && !arch_lower.contains("conditionalgeneration")
            && (arch_lower.contains("bert")
                || arch_lower.ends_with("model")
                || arch_lower.contains("embedding"));
        let template = chat_template(dir);
        let profile = crate::engine::profile::Profile::of(crate::engine::profile::detect(
            &family,
            template.as_deref(),
        ));
        let (parameter_count, size) = safetensors_params(dir);
        let modified_at = std::fs::metadata(&config_path)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let digest = format!("{:x}", Sha256::digest(&config_text));
        Ok(ModelInfo {
            dir: dir.to_path_buf(),
            family,
            architecture,
            context_length,
            parameter_count,
            quantization,
            size: if size > 0 { size } else { weights_size(dir) },
            digest,
            modified_at,
            template,
            vision,
            embedding,
            profile,
        })
    }

    /// A remote engine's model: nothing is read here. It is taken to call tools (the remote
    /// answers if it cannot) and to reason only when `reasoning_parser` says it does; its
    /// context is `max_model_len` when set.
    pub fn remote(model: &crate::config::ModelConfig) -> ModelInfo {
        use crate::engine::profile::{Choice, Origin, Profile, Think};
        let url = model.remote.as_deref().unwrap_or_default();
        let choice = |name: Option<&str>| Choice {
            name: name.filter(|n| *n != "none").map(str::to_string),
            origin: Origin::Config,
        };
        ModelInfo {
            dir: PathBuf::new(),
            family: "remote".into(),
            architecture: "remote".into(),
            context_length: model.max_model_len.map(u64::from),
            parameter_count: 0,
            quantization: "unknown".into(),
            size: 0,
            digest: format!("{:x}", Sha256::digest(url.as_bytes())),
            modified_at: SystemTime::UNIX_EPOCH,
            template: None,
            vision: false,
            embedding: false,
            profile: Profile {
                family: "remote",
                tool_parser: choice(Some(model.tool_parser.as_deref().unwrap_or("remote"))),
                reasoning_parser: choice(model.reasoning_parser.as_deref()),
                think: Think::None,
            },
        }
    }

    pub fn details(&self) -> Details {
        Details {
            parent_model: String::new(),
            format: "safetensors".into(),
            family: self.family.clone(),
            families: vec![self.family.clone()],
            parameter_size: parameter_size(self.parameter_count),
            quantization_level: self.quantization.clone(),
        }
    }

    /// Ollama's capabilities list (see [`capabilities`]).
    pub fn capabilities(&self) -> Vec<&'static str> {
        capabilities(self.embedding, self.vision, &self.profile)
    }
}

/// Ollama's capabilities: tools only with a tool parser, thinking only with a reasoning
/// parser (what the engine is or will be started with); an embedding model embeds only.
pub fn capabilities(
    embedding: bool,
    vision: bool,
    profile: &crate::engine::profile::Profile,
) -> Vec<&'static str> {
    if embedding {
        return vec!["embedding"];
    }
    let mut caps = vec!["completion"];
    if profile.tools() {
        caps.push("tools");
    }
    if vision {
        caps.push("vision");
    }
    if profile.thinking() {
        caps.push("thinking");
    }
    caps
}

/// `494.03M`, `7.6B`, as Ollama writes parameter sizes.
pub fn parameter_size(n: u64) -> String {
    match n {
        0 => "unknown".into(),
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n => format!("{:.2}K", n as f64 / 1e3),
    }
}

fn chat_template(dir: &Path) -> Option<String> {
    if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Some(t);
    }
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer_config.json")).ok()?).ok()?;
    match cfg.get("chat_template")? {
        Value::String(t) => Some(t.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").is_some_and(|n| n == "default"))
            .or(list.first())
            .and_then(|t| t.get("template").and_then(Value::as_str))
            .map(str::to_string),
        _ => None,
    }
}

/// Parameters (from the safetensors headers) and bytes of the weights.
fn safetensors_params(dir: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let (mut params, mut bytes) = (0u64, 0u64);
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            continue;
        }
        bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        params += header_params(&path).unwrap_or(0);
    }
    (params, bytes)
}

fn header_params(path: &Path) -> Option<u64> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > 100 * 1024 * 1024 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).ok()?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&header).ok()?;
    Some(
        header
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .filter_map(|(_, t)| t["shape"].as_array())
            .map(|shape| shape.iter().filter_map(Value::as_u64).product::<u64>())
            .sum(),
    )
}

/// Sum of the weight files' sizes in a model directory (safetensors, or .bin without them).
pub fn weights_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let files: Vec<(String, u64)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // metadata() follows the store's symlinks to the blobs.
            let size = std::fs::metadata(e.path()).ok()?.len();
            Some((name, size))
        })
        .collect();
    let sum = |ext: &str| -> u64 {
        files
            .iter()
            .filter(|(n, _)| n.ends_with(ext))
            .map(|(_, s)| s)
            .sum()
    };
    match sum(".safetensors") {
        0 => sum(".bin"),
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safetensors(path: &Path, tensors: &[(&str, &[u64])]) {
        let mut header = serde_json::Map::new();
        let mut offset = 0u64;
        for (name, shape) in tensors {
            let n: u64 = shape.iter().product();
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + 4 * n]}),
            );
            offset += 4 * n;
        }
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let header = serde_json::to_vec(&header).unwrap();
        let mut data = (header.len() as u64).to_le_bytes().to_vec();
        data.extend_from_slice(&header);
        data.extend(std::iter::repeat_n(0u8, offset as usize));
        std::fs::write(path, data).unwrap();
    }

    #[test]
    fn reads_a_model_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type":"qwen2","architectures":["Qwen2ForCausalLM"],"max_position_embeddings":32768,"torch_dtype":"bfloat16"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"chat_template":"{% if tools %}<tools></tools>{% endif %}{{ messages }}<tool_call>"}"#,
        )
        .unwrap();
        safetensors(
            &dir.path().join("model.safetensors"),
            &[("a", &[10, 20]), ("b", &[5])],
        );
        let info = ModelInfo::read(dir.path()).unwrap();
        assert_eq!(info.family, "qwen2");
        assert_eq!(info.context_length, Some(32768));
        assert_eq!(info.parameter_count, 205);
        assert_eq!(info.quantization, "BF16");
        assert!(
            info.profile.tools() && !info.vision && !info.embedding && !info.profile.thinking()
        );
        assert_eq!(info.profile.family, "qwen2.5");
        assert_eq!(info.capabilities(), ["completion", "tools"]);
        // A template that only mentions tools, with no call syntax vLLM can parse: no claim.
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"chat_template":"{% if tools %}tools{% endif %}{{ messages }}"}"#,
        )
        .unwrap();
        let info = ModelInfo::read(dir.path()).unwrap();
        assert_eq!(info.capabilities(), ["completion"]);
        assert_eq!(info.digest.len(), 64);
        assert_eq!(info.details().parameter_size, "0.20K");
        assert_eq!(parameter_size(494_032_768), "494.03M");
        assert_eq!(parameter_size(7_615_616_512), "7.6B");
    }

    #[test]
    fn vision_and_embedding_models() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type":"qwen2_5_vl","architectures":["Qwen2_5_VLForConditionalGeneration"],"vision_config":{}}"#,
        )
        .unwrap();
        let info = ModelInfo::read(dir.path()).unwrap();
        assert!(info.vision && !info.embedding);
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type":"bert","architectures":["BertModel"]}"#,
        )
        .unwrap();
        let info = ModelInfo::read(dir.path()).unwrap();
        assert!(info.embedding);
        assert_eq!(info.capabilities(), ["embedding"]);
    }
}
