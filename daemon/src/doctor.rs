//! `vllamactl doctor`, the daemon's half: what only the daemon can see, as its own user and
//! inside its sandbox (engine, driver, CUDA against torch, GPU memory, disk, hub, the
//! configuration file, the public listener). Each check is a function of what was read, so
//! its verdict and its fix are unit-tested; `run` does the reading, off the async threads.

use std::path::Path;
use std::time::Duration;

use vllama_proto::{Check, EngineBuild, EngineRecord, EngineStatus, ListenerInfo};

use crate::gpu::{DriverInfo, GpuInfo};
use crate::state::Daemon;

/// Free space below which a folder fails: the store holds models and the engine's venv
/// (6-10 GiB), the cache holds pip's downloads and vLLM's compile cache.
pub const MIN_FREE_STATE: u64 = 10 << 30;
pub const MIN_FREE_CACHE: u64 = 4 << 30;
/// A GPU with less free than this (beyond the reserve) can start no engine.
const MIN_FREE_GPU: u64 = 1 << 30;
const HUB_TIMEOUT: Duration = Duration::from_secs(10);
const VERSION_TIMEOUT: Duration = Duration::from_secs(60);

const INSTALL: &str = "sudo vllamactl engine install";

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The engine program: present, and what it is.
pub fn engine(
    status: &EngineStatus,
    version: Option<&Result<String, String>>,
    gpus: usize,
) -> Check {
    const NAME: &str = "engine";
    if let Some(p) = &status.installing {
        return Check::skip(
            NAME,
            format!(
                "an install of vLLM {} ({}) is running: {} (vllamactl engine status)",
                p.version, p.build, p.step_name
            ),
        );
    }
    if !status.present {
        return Check::fail(
            NAME,
            format!("no vLLM engine at {} (engine.program)", status.program),
            format!(
                "{INSTALL}   (installs the {} build: {})",
                status.suggested_build, status.suggested_reason
            ),
        );
    }
    if let Some(r) = &status.record {
        if r.build == EngineBuild::Cuda && gpus == 0 {
            return Check::fail(
                NAME,
                format!(
                    "vLLM {} is the CUDA build, but the driver sees no GPU",
                    r.vllm_version
                ),
                format!("{INSTALL} --cpu --force   (or install the NVIDIA driver)"),
            );
        }
        if r.build == EngineBuild::Cpu && gpus > 0 {
            return Check::fail(
                NAME,
                format!(
                    "vLLM {} is the CPU build, but this machine has {gpus} GPU(s) it will not use",
                    r.vllm_version
                ),
                format!("{INSTALL} --cuda"),
            );
        }
        return Check::pass(
            NAME,
            format!(
                "vLLM {} ({} build, torch {}, Python {}) at {}",
                r.vllm_version, r.build, r.torch_version, r.python_version, status.program
            ),
        );
    }
    match version {
        Some(Ok(v)) => Check::pass(
            NAME,
            format!(
                "vLLM {v} at {} (not installed by vllamactl engine install)",
                status.program
            ),
        ),
        Some(Err(e)) => Check::fail(
            NAME,
            format!("{} does not run: {e}", status.program),
            format!("{INSTALL} --force"),
        ),
        None => Check::pass(NAME, format!("{} is present", status.program)),
    }
}

/// The NVIDIA driver, when the engine needs one.
pub fn driver(
    driver: &Result<DriverInfo, String>,
    gpus: usize,
    build: Option<EngineBuild>,
) -> Check {
    const NAME: &str = "gpu driver";
    match driver {
        Ok(d) => Check::pass(
            NAME,
            format!(
                "NVIDIA driver {} (CUDA {}.{}), {gpus} GPU(s)",
                d.version, d.cuda.0, d.cuda.1
            ),
        ),
        Err(why) if build == Some(EngineBuild::Cuda) => Check::fail(
            NAME,
            format!("the engine is the CUDA build but there is no usable NVIDIA driver: {why}"),
            "install the NVIDIA driver (Debian: sudo apt install nvidia-driver; then reboot), \
             or use the CPU build: sudo vllamactl engine install --cpu --force",
        ),
        Err(why) => Check::skip(
            NAME,
            format!("no NVIDIA GPU ({why}): engines run on the CPU"),
        ),
    }
}

/// The driver's CUDA against the CUDA torch was built for (the commonest breakage).
pub fn cuda(driver: &Result<DriverInfo, String>, record: Option<&EngineRecord>) -> Check {
    const NAME: &str = "cuda";
    let Ok(d) = driver else {
        return Check::skip(NAME, "no NVIDIA driver");
    };
    let Some(r) = record else {
        return Check::skip(
            NAME,
            "no engine installed by vllamactl engine install to compare with",
        );
    };
    let Some(torch) = r.torch_cuda.as_deref() else {
        return Check::skip(NAME, format!("torch {} is a CPU build", r.torch_version));
    };
    let parse = |v: &str| {
        let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    };
    let need = parse(torch);
    if d.cuda >= need {
        Check::pass(
            NAME,
            format!(
                "driver supports CUDA {}.{}; torch {} needs {torch}",
                d.cuda.0, d.cuda.1, r.torch_version
            ),
        )
    } else {
        Check::fail(
            NAME,
            format!(
                "driver {} supports CUDA {}.{} but torch {} was built for CUDA {torch}: engines will fail to start",
                d.version, d.cuda.0, d.cuda.1, r.torch_version
            ),
            format!(
                "update the NVIDIA driver to one for CUDA {torch} or newer, or install an older vLLM: {INSTALL} --force --version <version>"
            ),
        )
    }
}

/// Free GPU memory beyond the reserve.
pub fn gpu_memory(gpus: &[GpuInfo], reserve: u64) -> Check {
    const NAME: &str = "gpu memory";
    if gpus.is_empty() {
        return Check::skip(NAME, "no GPU");
    }
    let text: Vec<String> = gpus
        .iter()
        .map(|g| {
            format!(
                "GPU{} {} free of {}",
                g.index,
                gib(g.free_bytes),
                gib(g.total_bytes)
            )
        })
        .collect();
    if gpus
        .iter()
        .any(|g| g.free_bytes.saturating_sub(reserve) >= MIN_FREE_GPU)
    {
        Check::pass(NAME, text.join(", "))
    } else {
        Check::fail(
            NAME,
            format!("{}: other programs hold the GPU memory", text.join(", ")),
            "see who holds it: nvidia-smi; stop them, or unload models: vllamactl ps, vllamactl unload MODEL",
        )
    }
}

/// A folder the daemon writes: writable by its user, and with room.
pub fn disk(name: &str, dir: &Path, min_free: u64) -> Check {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| nix::unistd::getuid().to_string(), |u| u.name);
    let probe = dir.join(format!(".vllama-doctor-{}", std::process::id()));
    let written = std::fs::write(&probe, b"ok");
    let _ = std::fs::remove_file(&probe);
    // The field types differ between platforms (u32 on some 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    let free = nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() as u64 * s.fragment_size() as u64);
    match (written, free) {
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => Check::fail(
            name,
            format!("{} does not exist", dir.display()),
            format!(
                "sudo systemd-tmpfiles --create   (or: sudo install -d -o {user} {})",
                dir.display()
            ),
        ),
        (Err(e), _) if e.raw_os_error() == Some(libc::ENOSPC) => Check::fail(
            name,
            format!("{} is full (writing as {user}: {e})", dir.display()),
            format!(
                "free space there (du -sh {}/*); models: vllamactl list, vllamactl rm MODEL",
                dir.display()
            ),
        ),
        (Err(e), _) => Check::fail(
            name,
            format!("{user} cannot write {}: {e}", dir.display()),
            format!("sudo chown -R {user} {}", dir.display()),
        ),
        (Ok(()), Ok(free)) if free < min_free => Check::fail(
            name,
            format!(
                "{} has {} free; at least {} is needed",
                dir.display(),
                gib(free),
                gib(min_free)
            ),
            format!(
                "free space there (du -sh {}/*); models: vllamactl list, vllamactl rm MODEL",
                dir.display()
            ),
        ),
        (Ok(()), Ok(free)) => Check::pass(
            name,
            format!("{} writable by {user}, {} free", dir.display(), gib(free)),
        ),
        (Ok(()), Err(e)) => Check::fail(
            name,
            format!("cannot read the free space of {}: {e}", dir.display()),
            "check the file system (df -h)",
        ),
    }
}

/// The configuration file as it is on disk now (a reload would read it).
pub fn config(
    path: Option<&Path>,
    loaded: Result<(), String>,
    last_reload_error: Option<&str>,
) -> Check {
    const NAME: &str = "configuration";
    let shown = path.map_or_else(
        || "built-in defaults (no file)".to_string(),
        |p| p.display().to_string(),
    );
    match (loaded, last_reload_error) {
        (Err(e), _) => Check::fail(
            NAME,
            format!("{shown}: {e}"),
            format!("edit {shown}, check it with `vllamad --check-config`, then `sudo vllamactl reload`"),
        ),
        (Ok(()), Some(e)) => Check::fail(
            NAME,
            format!("the file is valid now, but the last reload was refused ({e}); the older configuration is in force"),
            "sudo vllamactl reload",
        ),
        (Ok(()), None) => Check::pass(NAME, format!("{shown} is valid")),
    }
}

/// The hub's answer for a repository the daemon would pull.
pub fn hub(endpoint: &str, repo: &str, answer: Result<(), crate::store::hub::HubError>) -> Check {
    use crate::store::hub::HubError;
    const NAME: &str = "hub";
    match answer {
        Ok(()) => Check::pass(NAME, format!("{endpoint} answers ({repo})")),
        Err(HubError::Gated { .. }) => Check::fail(
            NAME,
            format!("{repo} is gated or private on {endpoint}, and no token (or a token without access) is configured"),
            "accept the model's license on the hub, then put a token in /etc/credstore/hf-token (mode 0600) \
             and `sudo systemctl restart vllamad` (docs/OPERATIONS.md)",
        ),
        Err(HubError::RepoNotFound { .. }) => Check::fail(
            NAME,
            format!("{repo} does not exist on {endpoint}"),
            "fix the model's source in /etc/vllama/vllama.toml, then sudo vllamactl reload",
        ),
        Err(e) => Check::fail(
            NAME,
            format!("cannot reach {endpoint}: {e}"),
            "check the network (and HTTPS_PROXY for vllamad: sudo systemctl edit vllamad), or set \
             store.endpoint to a mirror; models already in the store still work",
        ),
    }
}

/// The public listener: loopback only, or open to the network — with API keys, or to anyone.
pub fn exposure(listeners: &[ListenerInfo], keys: usize) -> Check {
    const NAME: &str = "exposure";
    let Some(api) = listeners.iter().find(|l| l.name == crate::listeners::API) else {
        return Check::skip(NAME, "no public listener");
    };
    match api.address.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.ip().is_loopback() => {
            Check::pass(NAME, format!("the API listens on {} ({}): this machine only", api.address, api.source))
        }
        Ok(_) if keys > 0 => Check::pass(
            NAME,
            format!(
                "the API listens on {} ({}), for clients with one of its {keys} API keys",
                api.address, api.source
            ),
        ),
        Ok(_) => Check::fail(
            NAME,
            format!(
                "the API listens on {} ({}): anyone who can reach this machine can use the models, unauthenticated",
                api.address, api.source
            ),
            "add an API key (sudo vllamactl key add NAME) and give it to the clients, or listen on \
             loopback (api.listen = \"127.0.0.1:11434\", or ListenStream=127.0.0.1:11434 in \
             `sudo systemctl edit vllamad.socket`)",
        ),
        Err(_) => Check::pass(NAME, format!("the API listens on {}", api.address)),
    }
}

/// Where engines run, and whether they can: engine units need polkit (its rule lets
/// vllamad's user start and stop them). `polkit`: whether it is installed, asked for units.
pub fn engines(host: &str, polkit: Option<bool>) -> Check {
    const NAME: &str = "engines";
    match (host, polkit) {
        ("systemd", Some(true)) => Check::pass(
            NAME,
            "systemd units (vllama-engine@<model>.service): a restart or an upgrade of vllamad keeps them",
        ),
        ("systemd", _) => Check::fail(
            NAME,
            "engines are systemd units, but polkit is not installed: vllamad's user may not start them",
            "install and start polkit (Debian: sudo apt install polkitd; Fedora/RHEL: sudo dnf install polkit), or set engine.launch = \"process\"",
        ),
        _ => Check::pass(
            NAME,
            "children of vllamad: they end with it (not under systemd, or engine.launch = \"process\")",
        ),
    }
}

/// Every check of the daemon's half, in the order shown.
pub async fn run(daemon: &Daemon) -> Vec<Check> {
    let active = daemon.config();
    let config = &active.config;
    let probe = daemon.scheduler.probe();
    let (gpus, drv) = tokio::task::spawn_blocking(move || (probe.gpus(), probe.driver()))
        .await
        .unwrap_or_else(|_| (Vec::new(), Err("the GPU probe failed".into())));
    let status = crate::install::status(&config.engine, &daemon.installer, gpus.len()).await;
    let version = if status.present && status.record.is_none() && status.installing.is_none() {
        Some(program_version(&config.engine.program).await)
    } else {
        None
    };
    let build = status.record.as_ref().map(|r| r.build);
    let mut checks = vec![
        engine(&status, version.as_ref(), gpus.len()),
        driver(&drv, gpus.len(), build),
        cuda(&drv, status.record.as_ref()),
        gpu_memory(&gpus, config.engine.gpu_memory_reserve.0),
    ];
    let source = daemon.source.clone();
    let state = config.paths.state_dir.clone();
    let cache = config.paths.cache_dir.clone();
    let disks = tokio::task::spawn_blocking(move || {
        vec![
            disk("disk: state_dir", &state, MIN_FREE_STATE),
            disk("disk: cache_dir", &cache, MIN_FREE_CACHE),
        ]
    })
    .await
    .unwrap_or_else(|e| vec![Check::skip("disk", format!("the check failed: {e}"))]);
    // The file as a reload would read it now.
    let file =
        tokio::task::spawn_blocking(
            move || match crate::config::load(&source, std::env::vars()) {
                Ok(l) => (l.file, Ok(())),
                Err(e) => (Some(source.path), Err(e.to_string())),
            },
        )
        .await
        .unwrap_or_else(|e| (None, Err(format!("the check failed: {e}"))));
    checks.extend(disks);
    checks.push(self::config(
        file.0.as_deref(),
        file.1,
        daemon.last_reload_error().as_deref(),
    ));
    checks.push(hub_check(config).await);
    checks.push(exposure(&daemon.listeners, daemon.keys().len()));
    let host = daemon.scheduler.engine_host();
    let polkit = match host {
        "systemd" => Some(crate::engine::units::polkit_installed().await),
        _ => None,
    };
    checks.push(engines(host, polkit));
    checks
}

/// `vllm --version`, bounded.
async fn program_version(program: &Path) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(VERSION_TIMEOUT, cmd.output()).await {
        Err(_) => Err(format!(
            "`--version` did not answer within {}s",
            VERSION_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(out)) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("?")
                .trim()
                .to_string())
        }
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "{}: {}",
                out.status,
                err.lines().last().unwrap_or("")
            ))
        }
    }
}

/// The hub, asked about the first model the configuration pulls from it (or the catalog's
/// first model when none is configured).
async fn hub_check(config: &crate::config::Config) -> Check {
    let repo = config
        .models
        .values()
        .map(|m| m.source.split('@').next().unwrap_or("").to_string())
        .find(|s| !s.starts_with('/') && s.contains('/'))
        .or_else(|| {
            crate::models::CATALOG
                .first()
                .map(|(_, repo)| repo.to_string())
        })
        .unwrap_or_default();
    let client = match crate::store::hub_for(config) {
        Ok(h) => h,
        Err(e) => {
            return Check::fail(
                "hub",
                e.to_string(),
                "fix store.endpoint in /etc/vllama/vllama.toml",
            );
        }
    };
    let answer = match tokio::time::timeout(HUB_TIMEOUT, client.revision(&repo, "main")).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(crate::store::hub::HubError::Transport {
            url: client.endpoint().to_string(),
            message: format!("no answer within {}s", HUB_TIMEOUT.as_secs()),
        }),
    };
    hub(client.endpoint(), &repo, answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vllama_proto::{CheckOutcome, ListenerSource};

    fn status(present: bool, record: Option<EngineRecord>) -> EngineStatus {
        EngineStatus {
            program: "/var/lib/vllama/venv/bin/vllm".into(),
            present,
            target: None,
            record,
            installing: None,
            suggested_build: EngineBuild::Cpu,
            suggested_reason: "no NVIDIA GPU".into(),
            default_version: "0.32.0".into(),
        }
    }

    fn record(build: EngineBuild, cuda: Option<&str>) -> EngineRecord {
        EngineRecord {
            build,
            vllm_version: "0.32.0".into(),
            requested_version: "0.32.0".into(),
            torch_version: "2.13.0".into(),
            torch_cuda: cuda.map(str::to_string),
            python_version: "3.11.2".into(),
            installed_at: "2026-12-01T00:00:00Z".into(),
            install_seconds: 100.0,
            tool_parsers: Vec::new(),
            reasoning_parsers: Vec::new(),
        }
    }

    fn fails_with(c: &Check, fix: &str) {
        assert_eq!(c.outcome, CheckOutcome::Fail, "{c:?}");
        let got = c.fix.as_deref().unwrap_or("");
        assert!(got.contains(fix), "fix {got:?} lacks {fix:?}");
    }

    #[test]
    fn a_missing_engine_says_how_to_install_it() {
        fails_with(
            &engine(&status(false, None), None, 0),
            "sudo vllamactl engine install",
        );
        let ok = engine(&status(true, Some(record(EngineBuild::Cpu, None))), None, 0);
        assert_eq!(ok.outcome, CheckOutcome::Pass, "{ok:?}");
        assert!(
            ok.detail.contains("vLLM 0.32.0 (cpu build"),
            "{}",
            ok.detail
        );
        let hand = engine(&status(true, None), Some(&Ok("0.32.0+fake".into())), 0);
        assert_eq!(hand.outcome, CheckOutcome::Pass);
        fails_with(
            &engine(&status(true, None), Some(&Err("exit 1".into())), 0),
            "--force",
        );
    }

    #[test]
    fn a_build_that_does_not_fit_the_machine_fails() {
        fails_with(
            &engine(
                &status(true, Some(record(EngineBuild::Cuda, Some("12.8")))),
                None,
                0,
            ),
            "--cpu --force",
        );
        fails_with(
            &engine(&status(true, Some(record(EngineBuild::Cpu, None))), None, 2),
            "--cuda",
        );
    }

    #[test]
    fn no_nvml_is_fine_for_the_cpu_build_and_fatal_for_cuda() {
        let missing: Result<DriverInfo, String> =
            Err("NVML is unavailable (libnvidia-ml.so: cannot open)".into());
        assert_eq!(
            driver(&missing, 0, Some(EngineBuild::Cpu)).outcome,
            CheckOutcome::Skip
        );
        assert_eq!(driver(&missing, 0, None).outcome, CheckOutcome::Skip);
        fails_with(
            &driver(&missing, 0, Some(EngineBuild::Cuda)),
            "apt install nvidia-driver",
        );
        let fake = crate::gpu::FakeGpus::new(1, 80 << 30);
        use crate::gpu::GpuProbe;
        assert_eq!(
            driver(&fake.driver(), 1, Some(EngineBuild::Cuda)).outcome,
            CheckOutcome::Pass
        );
    }

    #[test]
    fn cuda_of_the_driver_must_cover_torchs() {
        let drv = Ok(DriverInfo {
            version: "535.1".into(),
            cuda: (12, 2),
        });
        fails_with(
            &cuda(&drv, Some(&record(EngineBuild::Cuda, Some("12.8")))),
            "update the NVIDIA driver",
        );
        assert_eq!(
            cuda(&drv, Some(&record(EngineBuild::Cuda, Some("12.1")))).outcome,
            CheckOutcome::Pass
        );
        assert_eq!(
            cuda(&drv, Some(&record(EngineBuild::Cuda, Some("11.8")))).outcome,
            CheckOutcome::Pass
        );
        assert_eq!(
            cuda(&drv, Some(&record(EngineBuild::Cpu, None))).outcome,
            CheckOutcome::Skip
        );
        assert_eq!(cuda(&Err("none".into()), None).outcome, CheckOutcome::Skip);
    }

    #[test]
    fn full_gpus_fail_with_who_to_ask() {
        let fake = crate::gpu::FakeGpus::new(2, 80 << 30);
        use crate::gpu::GpuProbe;
        assert_eq!(
            gpu_memory(&fake.gpus(), 512 << 20).outcome,
            CheckOutcome::Pass
        );
        fake.set_free(0, 1 << 29);
        fake.set_free(1, 1 << 29);
        fails_with(&gpu_memory(&fake.gpus(), 512 << 20), "nvidia-smi");
        assert_eq!(gpu_memory(&[], 0).outcome, CheckOutcome::Skip);
    }

    #[test]
    fn disk_checks_space_and_write_access() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(disk("d", dir.path(), 0).outcome, CheckOutcome::Pass);
        fails_with(&disk("d", dir.path(), u64::MAX), "vllamactl rm");
        fails_with(
            &disk("d", &dir.path().join("missing"), 0),
            "systemd-tmpfiles --create",
        );
    }

    /// A real full file system: a 1 MiB tmpfs, filled (needs root to mount).
    #[test]
    fn a_full_tmpfs_fails_the_disk_check() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.path())
            .status();
        if !mounted.is_ok_and(|s| s.success()) {
            eprintln!("skipped: cannot mount a tmpfs here");
            return;
        }
        let _ = std::fs::write(dir.path().join("fill"), vec![0u8; 2 << 20]);
        let check = disk("disk: state_dir", dir.path(), MIN_FREE_STATE);
        let _ = std::process::Command::new("umount")
            .arg(dir.path())
            .status();
        fails_with(&check, "vllamactl rm");
        assert!(
            check.detail.contains("full") || check.detail.contains("free"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn a_bad_config_names_the_file_and_the_command() {
        let c = config(
            Some(Path::new("/etc/vllama/vllama.toml")),
            Err("engine.max_queue: invalid type".into()),
            None,
        );
        fails_with(&c, "vllamad --check-config");
        assert!(c.detail.contains("engine.max_queue"), "{}", c.detail);
        fails_with(&config(None, Ok(()), Some("bad")), "vllamactl reload");
        assert_eq!(config(None, Ok(()), None).outcome, CheckOutcome::Pass);
    }

    #[test]
    fn hub_answers_map_to_fixes() {
        use crate::store::hub::HubError;
        let down = Err(HubError::Transport {
            url: "http://127.0.0.1:9".into(),
            message: "connection refused".into(),
        });
        fails_with(&hub("http://127.0.0.1:9", "org/m", down), "store.endpoint");
        fails_with(
            &hub(
                "e",
                "org/m",
                Err(HubError::Gated {
                    repo: "org/m".into(),
                }),
            ),
            "hf-token",
        );
        assert_eq!(hub("e", "org/m", Ok(())).outcome, CheckOutcome::Pass);
    }

    /// An unreachable hub for real: a port nothing listens on.
    #[tokio::test]
    async fn an_unreachable_hub_fails_the_check() {
        let port = vllama_testkit::free_port();
        let mut config = crate::config::Config::default();
        config.store.endpoint = Some(format!("http://127.0.0.1:{port}"));
        let c = hub_check(&config).await;
        fails_with(&c, "store.endpoint");
        assert!(c.detail.contains("cannot reach"), "{}", c.detail);
    }

    #[test]
    fn engine_units_need_polkit() {
        assert_eq!(engines("systemd", Some(true)).outcome, CheckOutcome::Pass);
        fails_with(&engines("systemd", Some(false)), "polkitd");
        assert!(engines("process", None).detail.contains("end with it"));
    }

    #[test]
    fn listening_beyond_loopback_is_flagged() {
        let l = |address: &str| {
            vec![ListenerInfo {
                name: "api".into(),
                address: address.into(),
                source: ListenerSource::Bound,
            }]
        };
        assert_eq!(
            exposure(&l("127.0.0.1:11434"), 0).outcome,
            CheckOutcome::Pass
        );
        assert_eq!(exposure(&l("[::1]:11434"), 0).outcome, CheckOutcome::Pass);
        fails_with(&exposure(&l("0.0.0.0:11434"), 0), "vllamactl key add");
        assert_eq!(exposure(&l("0.0.0.0:11434"), 2).outcome, CheckOutcome::Pass);
    }
}
