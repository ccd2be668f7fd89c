//! `vllamactl engine install`: the daemon installs vLLM for its own engines, as its own user
//! (so the files belong to it and the unit's sandbox applies), into the venv `engine.program`
//! names. One install at a time; a second request for the same build watches the first.
//! The build is made in a fresh folder and `<venv>` becomes a link to it only once it is
//! verified: an interrupted install is redone, never half used, and the next engine start
//! uses the new build with no restart.

mod plan;
mod run;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vllama_proto::{
    EngineBuild, EngineInstallRequest, EngineRecord, EngineStatus, InstallPhase, InstallProgress,
};

use crate::config::{EngineConfig, PathsConfig};

pub use plan::{cpu_versions, Layout, Plan, DEFAULT_VERSION, RECORD_FILE};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "engine.program = {program} is not <venv>/bin/vllm with an absolute <venv>, so there is no \
         venv to install into: set engine.program = \"/var/lib/vllama/venv/bin/vllm\" (the default) \
         in /etc/vllama/vllama.toml and reload"
    )]
    NotAVenv { program: String },
    #[error("`{0}` is not a version (write it as on PyPI: 0.32.0)")]
    BadVersion(String),
    #[error(
        "vLLM {version} has no tested CPU build (tested: {tested}); CPU builds need a pinned \
         requirements list: use one of those, or --cuda on a machine with an NVIDIA GPU"
    )]
    UntestedCpuVersion { version: String, tested: String },
    #[error(
        "an engine install ({running}) is running; wait for it (vllamactl engine status), \
         or ask for the same build to watch it"
    )]
    Busy { running: String },
    #[error(
        "{path} exists and was not made by `vllamactl engine install`: move it away (or set \
         engine.program to another path), or run `vllamactl engine install --force` to set it aside \
         in {aside}"
    )]
    Occupied { path: String, aside: String },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}: {source}{}", spawn_hint(program, source))]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step} failed ({status}): {hint}")]
    Step {
        step: String,
        status: String,
        hint: String,
        tail: Vec<String>,
    },
    #[error("the installed engine does not run: {0}; run `vllamactl engine install --force` to start over")]
    Verify(String),
    #[error("the install was stopped (vllamad is shutting down); run it again to start over")]
    Cancelled,
}

impl InstallError {
    fn io(what: &'static str, path: &Path, source: std::io::Error) -> InstallError {
        InstallError::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }

    /// The failed command's last output lines.
    pub fn tail(&self) -> Vec<String> {
        match self {
            InstallError::Step { tail, .. } => tail.clone(),
            _ => Vec::new(),
        }
    }

    /// Whether the request was wrong (400/409) rather than the install failing.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            InstallError::NotAVenv { .. }
                | InstallError::BadVersion(_)
                | InstallError::UntestedCpuVersion { .. }
                | InstallError::Busy { .. }
                | InstallError::Occupied { .. }
        )
    }
}

fn spawn_hint(program: &str, source: &std::io::Error) -> String {
    if source.kind() != std::io::ErrorKind::NotFound {
        return String::new();
    }
    if program.ends_with("python3") || program.contains("python") {
        format!(
            " ({program} is not installed: `sudo apt install python3 python3-venv` on Debian and \
             Ubuntu, `sudo dnf install python3` on Fedora and RHEL; or set engine.python)"
        )
    } else {
        String::new()
    }
}

/// What to try, read from a failed command's last lines.
pub fn hint(tail: &[String]) -> String {
    let text = tail.join("\n").to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if has(&[
        "ensurepip is not",
        "no module named venv",
        "no module named ensurepip",
    ]) {
        "Python cannot make a venv: `sudo apt install python3-venv` (Debian, Ubuntu), then run \
         `vllamactl engine install` again"
            .into()
    } else if has(&["no space left on device"]) {
        "the disk is full: an engine needs 6-10 GiB; free space under the venv's folder \
         (df -h /var/lib/vllama), then run `vllamactl engine install` again"
            .into()
    } else if has(&[
        "network is unreachable",
        "failed to establish a new connection",
        "temporary failure in name resolution",
        "name or service not known",
        "connection timed out",
        "read timed out",
        "connection refused",
        "proxyerror",
    ]) {
        "vllamad cannot reach the package index: check the network; behind a proxy or with a \
         mirror, give vllamad HTTPS_PROXY or PIP_INDEX_URL (`sudo systemctl edit vllamad`: \
         [Service] Environment=PIP_INDEX_URL=...), then run `vllamactl engine install` again"
            .into()
    } else if has(&[
        "no matching distribution found",
        "could not find a version that satisfies",
    ]) {
        "pip found no such package for this machine's Python and platform: check the version \
         (`pip index versions vllm`), the Python version (vLLM needs 3.10-3.13), and \
         PIP_INDEX_URL if a mirror is used"
            .into()
    } else if has(&["permission denied", "read-only file system"]) {
        "vllamad's user cannot write there: keep engine.program under a folder the daemon owns \
         (the default, /var/lib/vllama/venv/bin/vllm)"
            .into()
    } else {
        "its last output lines are shown above; `vllamactl engine install` starts over".into()
    }
}

/// The build `engine install` picks when none is asked for.
pub fn suggest(gpus: usize) -> (EngineBuild, String) {
    if gpus > 0 {
        (
            EngineBuild::Cuda,
            format!(
                "the NVIDIA driver reports {gpus} GPU{}",
                if gpus == 1 { "" } else { "s" }
            ),
        )
    } else {
        (
            EngineBuild::Cpu,
            "no NVIDIA GPU: NVML (libnvidia-ml.so) is missing or reports none".into(),
        )
    }
}

/// What is at `<venv>` now.
#[derive(Debug, Clone, PartialEq)]
enum Found {
    Absent,
    /// A link (ours) to a build folder, with its record if the build is complete.
    Link {
        target: PathBuf,
        record: Option<Box<EngineRecord>>,
    },
    /// A folder or file that `engine install` did not make.
    Foreign,
}

fn read_record(dir: &Path) -> Option<EngineRecord> {
    let text = std::fs::read(dir.join(RECORD_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn inspect(layout: &Layout) -> Found {
    match std::fs::symlink_metadata(&layout.venv) {
        Err(_) => Found::Absent,
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = std::fs::read_link(&layout.venv)
                .map(|t| match layout.venv.parent() {
                    Some(parent) if t.is_relative() => parent.join(t),
                    _ => t,
                })
                .unwrap_or_default();
            let record = read_record(&target).map(Box::new);
            Found::Link { target, record }
        }
        Ok(_) => Found::Foreign,
    }
}

/// The environment pip runs with: explicit, plus what a user sets to reach an index (proxies,
/// mirrors, certificates). Nothing else of the daemon's leaks (no VIRTUAL_ENV, PYTHONPATH).
pub fn environment(
    paths: &PathsConfig,
    from: impl Iterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string();
    for (k, v) in from {
        let upper = k.to_ascii_uppercase();
        if k == "PATH" {
            path = v;
        } else if (k.starts_with("PIP_") && k != "PIP_REQUIRE_VIRTUALENV")
            || matches!(
                upper.as_str(),
                "HTTP_PROXY" | "HTTPS_PROXY" | "NO_PROXY" | "ALL_PROXY"
            )
            || matches!(
                k.as_str(),
                "SSL_CERT_FILE" | "SSL_CERT_DIR" | "REQUESTS_CA_BUNDLE"
            )
        {
            env.push((k, v));
        }
    }
    let set = |env: &mut Vec<(String, String)>, k: &str, v: String| {
        if !env.iter().any(|(key, _)| key == k) {
            env.push((k.to_string(), v));
        }
    };
    set(&mut env, "PATH", path);
    set(&mut env, "HOME", paths.state_dir.display().to_string());
    set(&mut env, "LANG", "C.UTF-8".into());
    set(&mut env, "PYTHONUNBUFFERED", "1".into());
    set(&mut env, "PIP_DISABLE_PIP_VERSION_CHECK", "1".into());
    set(&mut env, "PIP_NO_INPUT", "1".into());
    set(
        &mut env,
        "PIP_CACHE_DIR",
        paths.cache_dir.join("pip").display().to_string(),
    );
    // torch's wheels unpack to GiBs: not into a RAM-backed /tmp.
    set(
        &mut env,
        "TMPDIR",
        paths.cache_dir.join("install-tmp").display().to_string(),
    );
    env
}

/// Engine installs: at most one at a time.
#[derive(Debug, Clone)]
pub struct Installer {
    /// The install running now (or the last one): its progress says which build.
    current: Arc<Mutex<Option<watch::Receiver<InstallProgress>>>>,
    /// Held from the check for a running install until the new one is registered: the
    /// layout is inspected in between (awaits), and two requests must not both start.
    starting: Arc<tokio::sync::Mutex<()>>,
    tasks: crate::tasks::Background,
    cancel: CancellationToken,
}

impl Installer {
    pub fn new(tracker: TaskTracker, cancel: CancellationToken) -> Installer {
        Installer {
            current: Arc::default(),
            starting: Arc::default(),
            tasks: crate::tasks::Background::here(tracker),
            cancel,
        }
    }

    /// The running install's progress, if one runs.
    pub fn running(&self) -> Option<InstallProgress> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let progress = current.as_ref()?.borrow().clone();
        (!progress.phase.finished()).then_some(progress)
    }

    /// Starts an install (or joins the same one), or answers the plan for a dry run.
    /// `gpus`: how many GPUs the probe sees, for the automatic choice.
    pub async fn start(
        &self,
        req: &EngineInstallRequest,
        engine: &EngineConfig,
        env: Vec<(String, String)>,
        gpus: usize,
    ) -> Result<watch::Receiver<InstallProgress>, InstallError> {
        let layout = Layout::of(&engine.program)?;
        let build = req.build.unwrap_or_else(|| suggest(gpus).0);
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace(['-', ':'], "")
            .trim_end_matches('Z')
            .to_string();
        let plan = plan::plan(
            layout,
            &engine.python,
            build,
            req.version.as_deref(),
            &stamp,
        )?;
        let _starting = self.starting.lock().await;
        if let Some(rx) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let running = rx.borrow();
            if !running.phase.finished() {
                if running.build == plan.build && running.version == plan.version && !req.dry_run {
                    return Ok(rx.clone());
                }
                return Err(InstallError::Busy {
                    running: format!("{} {}", running.build, running.version),
                });
            }
        }
        let mut progress = InstallProgress::new(plan.build, &plan.version);
        progress.steps = plan.steps.len();
        progress.plan = plan.lines();
        progress.target = plan.target.display().to_string();
        progress.program = plan.layout.program.display().to_string();
        let layout = plan.layout.clone();
        let found = tokio::task::spawn_blocking(move || inspect(&layout))
            .await
            .unwrap_or(Found::Absent);
        if let Found::Link {
            target,
            record: Some(record),
        } = &found
        {
            let same = record.build == plan.build && record.requested_version == plan.version;
            if same && !req.force && plan.layout.program.exists() {
                progress.phase = InstallPhase::Done;
                progress.already_installed = true;
                progress.target = target.display().to_string();
                progress.installed = Some((**record).clone());
                return Ok(watch::channel(progress).1);
            }
        }
        // A complete build of the same kind already made (the link lost, or pointing at
        // another build): linked again, in a rename, instead of installed again.
        if !req.force && !req.dry_run && found != Found::Foreign {
            let (layout, build, version) = (plan.layout.clone(), plan.build, plan.version.clone());
            let reuse = tokio::task::spawn_blocking(move || {
                let (dir, record) = complete_build(&layout, build, &version)?;
                point_link(&layout, &dir).ok()?;
                Some((dir, record))
            })
            .await
            .ok()
            .flatten();
            if let Some((dir, record)) = reuse {
                tracing::info!(target = %dir.display(), "engine build already complete: linked again");
                progress.phase = InstallPhase::Done;
                progress.already_installed = true;
                progress.target = dir.display().to_string();
                progress.installed = Some(record);
                return Ok(watch::channel(progress).1);
            }
        }
        if found == Found::Foreign && !req.force {
            return Err(InstallError::Occupied {
                path: plan.layout.venv.display().to_string(),
                aside: plan.layout.builds.display().to_string(),
            });
        }
        if req.dry_run {
            progress.phase = InstallPhase::Planned;
            return Ok(watch::channel(progress).1);
        }
        let (tx, rx) = watch::channel(progress);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx.clone());
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            let started = Instant::now();
            tracing::info!(build = %plan.build, version = plan.version, target = %plan.target.display(), "engine install started");
            let result = tokio::select! {
                r = install(&plan, &env, &found, &tx, started) => r,
                _ = cancel.cancelled() => Err(InstallError::Cancelled),
            };
            let elapsed = started.elapsed().as_secs_f64();
            match result {
                Ok(record) => {
                    tracing::info!(build = %plan.build, vllm = record.vllm_version, torch = record.torch_version, seconds = elapsed, program = %plan.layout.program.display(), "engine installed; the next engine start uses it");
                    tx.send_modify(|p| {
                        p.phase = InstallPhase::Done;
                        p.installed = Some(record);
                        p.elapsed_seconds = elapsed;
                    });
                }
                Err(e) => {
                    tracing::error!(build = %plan.build, error = %e, tail = e.tail().join("\n"), "engine install failed");
                    tx.send_modify(|p| {
                        p.phase = InstallPhase::Failed;
                        p.error = Some(e.to_string());
                        p.tail = e.tail();
                        p.elapsed_seconds = elapsed;
                    });
                }
            }
        });
        Ok(rx)
    }
}

/// Clears what earlier installs left, runs the plan, then points `<venv>` at the new build
/// and removes the builds no link or engine can still need.
async fn install(
    plan: &Plan,
    env: &[(String, String)],
    found: &Found,
    tx: &watch::Sender<InstallProgress>,
    started: Instant,
) -> Result<EngineRecord, InstallError> {
    let layout = plan.layout.clone();
    let current = match found {
        Found::Link { target, .. } => Some(target.clone()),
        _ => None,
    };
    let tmpdir = env
        .iter()
        .find(|(k, _)| k == "TMPDIR")
        .map(|(_, v)| PathBuf::from(v));
    let keep = current.clone();
    blocking(move || {
        std::fs::create_dir_all(&layout.builds)
            .map_err(|e| InstallError::io("create", &layout.builds, e))?;
        if let Some(tmp) = tmpdir {
            std::fs::create_dir_all(&tmp).map_err(|e| InstallError::io("create", &tmp, e))?;
        }
        // Builds without a record were interrupted: never used, so removed.
        remove_builds(&layout.builds, |path| {
            Some(path) != keep.as_deref() && read_record(path).is_none()
        });
        Ok(())
    })
    .await?;
    let record = run::execute(plan, env, tx, started).await?;
    let (layout, target, foreign) = (
        plan.layout.clone(),
        plan.target.clone(),
        *found == Found::Foreign,
    );
    blocking(move || {
        if foreign {
            let aside = layout.builds.join(format!(
                "set-aside-{}",
                target.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
            ));
            std::fs::rename(&layout.venv, &aside).map_err(|e| InstallError::io("move aside", &layout.venv, e))?;
            tracing::warn!(from = %layout.venv.display(), to = %aside.display(), "set the old venv aside");
        }
        point_link(&layout, &target)?;
        // Keep the new build and the one it replaces (engines running now still use it).
        remove_builds(&layout.builds, |path| {
            let set_aside = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("set-aside-"));
            path != target && Some(path) != current.as_deref() && !set_aside
        });
        Ok(())
    })
    .await?;
    Ok(record)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, InstallError> + Send + 'static,
) -> Result<T, InstallError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| InstallError::Io {
            what: "finish",
            path: String::new(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// The newest complete build of `build` at `version` under `<venv>.d`.
fn complete_build(
    layout: &Layout,
    build: EngineBuild,
    version: &str,
) -> Option<(PathBuf, EngineRecord)> {
    let mut found: Vec<(PathBuf, EngineRecord)> = std::fs::read_dir(&layout.builds)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let record = read_record(&dir)?;
            let fits = record.build == build && record.requested_version == version;
            (fits && is_executable(&dir.join("bin/vllm"))).then_some((dir, record))
        })
        .collect();
    found.sort_by(|a, b| a.1.installed_at.cmp(&b.1.installed_at));
    found.pop()
}

/// `<venv>` → `target`, replaced in one rename (a relative link, so the folder can move).
fn point_link(layout: &Layout, target: &Path) -> Result<(), InstallError> {
    let parent = layout.venv.parent().unwrap_or(Path::new("/"));
    let relative = target.strip_prefix(parent).unwrap_or(target);
    let tmp = layout.venv.with_extension("link-new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(relative, &tmp).map_err(|e| InstallError::io("link", &tmp, e))?;
    std::fs::rename(&tmp, &layout.venv).map_err(|e| InstallError::io("replace", &layout.venv, e))
}

fn remove_builds(builds: &Path, remove: impl Fn(&Path) -> bool) {
    let Ok(entries) = std::fs::read_dir(builds) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if remove(&path) {
            tracing::info!(path = %path.display(), "removing an old or unfinished engine build");
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old engine build");
            }
        }
    }
}

/// `GET /v1/engine`: what engines are started with and what installed it.
pub async fn status(engine: &EngineConfig, installer: &Installer, gpus: usize) -> EngineStatus {
    let program = engine.program.clone();
    let (present, found) = tokio::task::spawn_blocking(move || {
        let present = is_executable(&program);
        let found = Layout::of(&program)
            .map(|l| inspect(&l))
            .unwrap_or(Found::Absent);
        (present, found)
    })
    .await
    .unwrap_or((false, Found::Absent));
    let (target, record) = match found {
        Found::Link { target, record } => (Some(target.display().to_string()), record.map(|r| *r)),
        _ => (None, None),
    };
    let (suggested_build, suggested_reason) = suggest(gpus);
    EngineStatus {
        program: engine.program.display().to_string(),
        present,
        target,
        record,
        installing: installer.running(),
        suggested_build,
        suggested_reason,
        default_version: DEFAULT_VERSION.into(),
    }
}

/// The program exists (found in PATH for a bare name) and may be executed.
fn is_executable(program: &Path) -> bool {
    crate::engine::process::find_program(program).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_fix() {
        let t = |s: &str| hint(&[s.to_string()]);
        assert!(t("The virtual environment was not created successfully because ensurepip is not available.").contains("apt install python3-venv"));
        assert!(t("OSError: [Errno 28] No space left on device").contains("disk is full"));
        assert!(
            t("Failed to establish a new connection: [Errno 101] Network is unreachable")
                .contains("PIP_INDEX_URL")
        );
        assert!(
            t("ERROR: No matching distribution found for vllm==9.9").contains("pip index versions")
        );
        assert!(t("something else").contains("starts over"));
    }

    #[test]
    fn pip_environment_is_explicit_but_keeps_index_settings() {
        let paths = PathsConfig::default();
        let from = [
            ("PATH", "/usr/bin"),
            ("PIP_INDEX_URL", "http://mirror.invalid/simple"),
            ("https_proxy", "http://proxy.invalid:3128"),
            ("VIRTUAL_ENV", "/somewhere"),
            ("PYTHONPATH", "/x"),
            ("HF_TOKEN", "secret"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let env = environment(&paths, from.into_iter());
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("PATH"), Some("/usr/bin"));
        assert_eq!(get("PIP_INDEX_URL"), Some("http://mirror.invalid/simple"));
        assert_eq!(get("https_proxy"), Some("http://proxy.invalid:3128"));
        assert_eq!(get("PIP_CACHE_DIR"), Some("/var/cache/vllama/pip"));
        assert_eq!(get("HOME"), Some("/var/lib/vllama"));
        for leaked in ["VIRTUAL_ENV", "PYTHONPATH", "HF_TOKEN"] {
            assert_eq!(get(leaked), None, "{leaked}");
        }
    }

    #[test]
    fn suggestion_follows_the_gpus() {
        assert_eq!(suggest(0).0, EngineBuild::Cpu);
        assert_eq!(suggest(2).0, EngineBuild::Cuda);
        assert!(suggest(2).1.contains("2 GPUs"));
    }

    #[test]
    fn the_link_swaps_and_old_builds_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::of(&dir.path().join("venv/bin/vllm")).expect("layout");
        std::fs::create_dir_all(&layout.builds).expect("builds");
        let (a, b, c) = (
            layout.builds.join("a"),
            layout.builds.join("b"),
            layout.builds.join("c"),
        );
        for d in [&a, &b, &c] {
            std::fs::create_dir_all(d.join("bin")).expect("mkdir");
        }
        point_link(&layout, &a).expect("link a");
        assert_eq!(
            std::fs::read_link(&layout.venv).expect("link"),
            Path::new("venv.d/a")
        );
        assert!(matches!(inspect(&layout), Found::Link { record: None, .. }));
        point_link(&layout, &b).expect("link b");
        assert_eq!(
            std::fs::canonicalize(&layout.venv).expect("canon"),
            std::fs::canonicalize(&b).expect("b")
        );
        remove_builds(&layout.builds, |p| p != b && p != a);
        assert!(a.exists() && b.exists() && !c.exists());
        std::fs::remove_file(&layout.venv).expect("unlink");
        std::fs::create_dir(&layout.venv).expect("real dir");
        assert_eq!(inspect(&layout), Found::Foreign);
    }
}
