//! Which tool and reasoning parsers the installed vLLM accepts, read once per vLLM build and
//! never per request: from the record `engine install` wrote (it asks vLLM's registries while
//! verifying), else from a cache file, else by asking the engine's own Python once (~10 s on
//! a CPU: vLLM's import), cached by the program's path, size and modification time. When none
//! of that works the names are not checked (vLLM then refuses bad ones itself).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::profile::KnownParsers;

/// Asks vLLM's registries (their module moved between versions).
pub const PROBE_PY: &str = "import json\n\
try:\n    from vllm.tool_parsers import ToolParserManager\n\
except ImportError:\n    from vllm.entrypoints.openai.tool_parsers import ToolParserManager\n\
try:\n    from vllm.reasoning import ReasoningParserManager\n\
except ImportError:\n    ReasoningParserManager = None\n\
import vllm\n\
print(json.dumps({'version': vllm.__version__, 'tool': sorted(ToolParserManager.list_registered()), \
'reasoning': sorted(ReasoningParserManager.list_registered()) if ReasoningParserManager else []}))";

const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
const CACHE_FILE: &str = "engine-parsers.json";

/// The parsers of each engine program seen, by `path|size|mtime`. Concurrent lookups of
/// one program share one read (the start-up task and the first engine start, say).
#[derive(Debug, Default)]
pub struct Parsers {
    memo: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<KnownParsers>>>>>,
}

impl Parsers {
    pub async fn known(&self, program: &Path, cache_dir: &Path) -> Arc<KnownParsers> {
        let (program, cache) = (program.to_path_buf(), cache_dir.join(CACHE_FILE));
        let key = {
            let p = program.clone();
            tokio::task::spawn_blocking(move || key_of(&p))
                .await
                .ok()
                .flatten()
        };
        let Some(key) = key else {
            return Arc::default();
        };
        let cell = self
            .memo
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        cell.get_or_init(|| read(program, cache, key)).await.clone()
    }
}

/// The record, else the cache file, else one probe (then cached).
async fn read(program: PathBuf, cache: PathBuf, key: String) -> Arc<KnownParsers> {
    let (p, c, k) = (program.clone(), cache.clone(), key.clone());
    let stored =
        tokio::task::spawn_blocking(move || from_record(&p).or_else(|| from_cache(&c, &k)))
            .await
            .ok()
            .flatten();
    if let Some(known) = stored {
        return Arc::new(known);
    }
    let probed = probe(&program).await;
    if let Some(k) = &probed {
        let k = k.clone();
        let _ = tokio::task::spawn_blocking(move || store(&cache, &key, &k)).await;
    }
    Arc::new(probed.unwrap_or_default())
}

fn key_of(program: &Path) -> Option<String> {
    let real = resolve(program)?;
    let meta = std::fs::metadata(&real).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{}|{}|{mtime}", real.display(), meta.len()))
}

/// The program's real path (a bare name is looked up in PATH).
fn resolve(program: &Path) -> Option<PathBuf> {
    super::process::find_program(program).and_then(|p| std::fs::canonicalize(p).ok())
}

/// The record `engine install` writes last into a build's folder (here, below the installer,
/// because the engine reads it).
pub const RECORD_FILE: &str = "vllama-engine.json";

/// `<venv>/vllama-engine.json`, for `engine.program = <venv>/bin/vllm`.
fn from_record(program: &Path) -> Option<KnownParsers> {
    let venv = program.parent()?.parent()?;
    let record: vllama_proto::EngineRecord =
        serde_json::from_slice(&std::fs::read(venv.join(RECORD_FILE)).ok()?).ok()?;
    (!record.tool_parsers.is_empty()).then_some(KnownParsers {
        version: record.vllm_version,
        tool: record.tool_parsers,
        reasoning: record.reasoning_parsers,
    })
}

fn from_cache(file: &Path, key: &str) -> Option<KnownParsers> {
    let all: HashMap<String, KnownParsers> =
        serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    all.get(key).cloned()
}

fn store(file: &Path, key: &str, known: &KnownParsers) {
    let mut all: HashMap<String, KnownParsers> = std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    all.insert(key.to_string(), known.clone());
    let tmp = file.with_extension("json.tmp");
    let written = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(&all).unwrap_or_default()))
        .and_then(|()| std::fs::rename(&tmp, file));
    if let Err(e) = written {
        tracing::debug!(file = %file.display(), error = %e, "cannot cache the engine's parser names");
    }
}

/// The interpreter of a Python console script (`#!/…/python3`), if it is one.
fn interpreter(program: &Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(resolve(program)?)
        .ok()?
        .read(&mut head)
        .ok()?;
    let text = std::str::from_utf8(head.get(..n)?).ok()?;
    let first = text.strip_prefix("#!")?.lines().next()?.trim();
    let python = first.split_whitespace().next()?;
    python.contains("python").then(|| PathBuf::from(python))
}

async fn probe(program: &Path) -> Option<KnownParsers> {
    let p = program.to_path_buf();
    let python = tokio::task::spawn_blocking(move || interpreter(&p))
        .await
        .ok()
        .flatten()?;
    let started = std::time::Instant::now();
    let mut cmd = tokio::process::Command::new(&python);
    cmd.args(["-c", PROBE_PY])
        .env("VLLM_NO_USAGE_STATS", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PROBE_TIMEOUT, cmd.output())
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let known: Option<KnownParsers> = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok());
    match &known {
        Some(k) => {
            tracing::info!(program = %program.display(), vllm = k.version, tool = k.tool.len(), reasoning = k.reasoning.len(), seconds = started.elapsed().as_secs_f64(), "read the engine's parser names")
        }
        None => {
            tracing::warn!(program = %program.display(), python = %python.display(), stderr = %String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""), "cannot read the engine's parser names; they are not checked")
        }
    }
    known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interpreter_of_a_console_script() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("vllm");
        std::fs::write(&script, "#!/opt/venv/bin/python3\nimport sys\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(
            interpreter(&script),
            Some(PathBuf::from("/opt/venv/bin/python3"))
        );
        std::fs::write(&script, b"\x7fELF\x02\x01").expect("write");
        assert_eq!(interpreter(&script), None, "a binary is not probed");
    }

    #[test]
    fn the_cache_is_keyed_by_the_program() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c/engine-parsers.json");
        let k = KnownParsers {
            version: "0.32.0".into(),
            tool: vec!["hermes".into()],
            reasoning: vec![],
        };
        store(&file, "a|1|2", &k);
        assert_eq!(from_cache(&file, "a|1|2"), Some(k));
        assert_eq!(from_cache(&file, "a|1|3"), None);
    }
}
