//! Engines as systemd units: `vllama-engine@<id>.service`, a template the packages install
//! (in `vllama.slice`, under the daemon's user and sandbox), started and stopped with
//! `systemctl` — allowed to vllamad's user for exactly those units by the packaged polkit
//! rule. An engine unit is not in vllamad's cgroup and has no tie to its lifetime: a restart
//! of vllamad (or its crash) leaves it running, and the next vllamad finds it again through
//! its record, `<runtime_dir>/engines/<id>.json`, which holds the launch it was started with
//! (a different launch is stopped, not adopted), where it was placed, and when its
//! keep_alive ends. The unit's main process is `vllamad --engine-unit <record>`
//! ([`super::unit_main`]), which runs the engine as a child and maps its output into the
//! journal (`journalctl -u vllama-engine@<id>`, with the MODEL field).
//!
//! Why a template and not transient units: polkit sees the unit's name for starting and
//! stopping an existing unit, so the grant is narrow (these units, these verbs); creating a
//! transient unit is one action for any unit with any user, root included.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use super::host::{Host, Survivor};
use super::kind::{BoxFuture, Ended, Run};
use super::process::{Launch, Output, UnitOptions};
use crate::placement::Placement;

/// The template's name, before `@`.
pub const TEMPLATE: &str = "vllama-engine";
/// Where systemd looks for units (`systemd-analyze unit-paths`), the packaged one last.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];
/// What a record's layout is; another is not adopted.
const FORMAT: u32 = 1;
/// `systemctl` calls that only ask or start (Type=exec: it returns once the engine runs).
const QUICK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("cannot run systemctl: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("systemctl {command} did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("systemctl {command} failed: {message}")]
    Failed { command: String, message: String },
}

/// Whether engines can be units here: vllamad runs under systemd and the template is
/// installed. Blocking (looks at files).
pub fn available() -> bool {
    std::env::var_os("INVOCATION_ID").is_some()
        && UNIT_DIRS
            .iter()
            .any(|d| Path::new(d).join(format!("{TEMPLATE}@.service")).exists())
}

/// Whether systemd is restarting vllamad now (`systemctl restart`, `try-restart` from an
/// upgrade, a restart propagated from its socket): the job systemd runs on vllamad's own unit
/// is a restart, not a stop. Its engines then stay up for the next vllamad; on a stop (and
/// when vllamad is signalled outside a job) they are stopped. A crash runs no shutdown at
/// all: the engines stay, and the restarted vllamad adopts them. Blocking.
///
/// Unit dependencies cannot tell the three apart (tried on systemd 252 and 257): with
/// `StopPropagatedFrom=vllamad.service`, 252 keeps the engines through `systemctl restart`
/// but stops them when it restarts vllamad after a crash, and 257 stops them on a plain
/// restart too; `PartOf=` restarts them with vllamad.
pub fn restarting() -> bool {
    let Some(own) = own_unit() else {
        return false;
    };
    match systemctl_blocking(&[
        "list-jobs".into(),
        "--no-legend".into(),
        "--no-pager".into(),
    ]) {
        Ok(jobs) => job_type(&jobs, &own).is_some_and(|t| t.ends_with("restart")),
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask systemd whether vllamad is restarting: stopping the engines");
            false
        }
    }
}

/// vllamad's own service unit, from its cgroup (`0::/system.slice/vllamad.service`).
fn own_unit() -> Option<String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    unit_of_cgroup(&cgroup)
}

fn unit_of_cgroup(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .rsplit('/')
        .find(|part| part.ends_with(".service"))
        .map(str::to_string)
}

/// The type of the job on `unit` in `systemctl list-jobs` (`JOB UNIT TYPE STATE` lines).
fn job_type<'a>(jobs: &'a str, unit: &str) -> Option<&'a str> {
    jobs.lines().find_map(|line| {
        let mut words = line.split_whitespace().skip_while(|w| *w != unit);
        words.next()?;
        words.next()
    })
}

/// Whether polkit is installed, which lets vllamad's user start and stop its engine units
/// (D-Bus starts it on the first question: not running yet is fine).
pub async fn polkit_installed() -> bool {
    let args = ["show", "-p", "LoadState", "--value", "polkit.service"].map(String::from);
    systemctl(&args, QUICK)
        .await
        .is_ok_and(|out| out.trim() == "loaded")
}

pub fn unit_name(id: &str) -> String {
    format!("{TEMPLATE}@{id}.service")
}

/// What a later vllamad reads of an engine unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub id: String,
    pub model: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub tmpdir: PathBuf,
    pub stop_grace_ms: u64,
    #[serde(default)]
    pub placement: Option<Placement>,
    /// When its keep_alive ends, in milliseconds since the epoch.
    #[serde(default)]
    pub keep_alive_until_ms: Option<u64>,
}

impl Record {
    pub fn of(launch: &Launch) -> Record {
        Record {
            format: FORMAT,
            id: launch.id.clone(),
            model: launch.model.clone(),
            program: launch.program.clone(),
            args: launch.args.clone(),
            env: launch.env.clone(),
            tmpdir: launch.tmpdir.clone(),
            stop_grace_ms: u64::try_from(launch.unit.stop_grace.as_millis()).unwrap_or(u64::MAX),
            placement: launch.unit.placement.clone(),
            keep_alive_until_ms: None,
        }
    }

    /// The launch it describes (run by the unit's main process).
    pub fn launch(&self) -> Launch {
        Launch {
            id: self.id.clone(),
            program: self.program.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            tmpdir: self.tmpdir.clone(),
            model: self.model.clone(),
            levels: super::vllm::level_of,
            // The unit's main process spawns it: the daemon removed them before the start.
            stale: Vec::new(),
            unit: UnitOptions {
                stop_grace: Duration::from_millis(self.stop_grace_ms),
                placement: self.placement.clone(),
                ..UnitOptions::default()
            },
        }
    }

    /// Whether an engine started from this record is the engine `launch` would start: the
    /// same program, arguments (model folder and revision, flags, placement) and environment.
    pub fn same_engine(&self, launch: &Launch) -> bool {
        self.format == FORMAT
            && self.program == launch.program
            && self.args == launch.args
            && self.env == launch.env
    }

    pub fn read(path: &Path) -> Option<Record> {
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes it whole or not at all (a reader never sees half of it).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }
}

/// What `systemctl show` says of a unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    pub active: String,
    pub main_pid: u32,
    pub result: String,
    pub exit_status: String,
}

impl UnitState {
    const PROPERTIES: [&'static str; 4] = ["ActiveState", "MainPID", "Result", "ExecMainStatus"];

    pub fn parse(text: &str) -> UnitState {
        let mut state = UnitState::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "ActiveState" => state.active = value.into(),
                "MainPID" => state.main_pid = value.parse().unwrap_or(0),
                "Result" => state.result = value.into(),
                "ExecMainStatus" => state.exit_status = value.into(),
                _ => {}
            }
        }
        state
    }

    /// Running, or on its way up.
    pub fn running(&self) -> bool {
        matches!(self.active.as_str(), "active" | "activating" | "reloading")
    }

    /// Still changing (the answer after a process exit may lag it by a moment).
    fn settling(&self) -> bool {
        matches!(self.active.as_str(), "activating" | "deactivating")
    }
}

fn show_args(unit: &str) -> Vec<String> {
    let mut args = vec!["show".to_string(), "--no-pager".into()];
    for p in UnitState::PROPERTIES {
        args.extend(["-p".into(), p.into()]);
    }
    args.push(unit.into());
    args
}

async fn systemctl(args: &[String], timeout: Duration) -> Result<String, UnitError> {
    let command = args.join(" ");
    let run = tokio::process::Command::new("systemctl")
        .arg("--no-ask-password")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| UnitError::Timeout {
            command: command.clone(),
            timeout,
        })?
        .map_err(UnitError::Spawn)?;
    judge(command, out)
}

fn systemctl_blocking(args: &[String]) -> Result<String, UnitError> {
    let out = std::process::Command::new("systemctl")
        .arg("--no-ask-password")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(UnitError::Spawn)?;
    judge(args.join(" "), out)
}

fn judge(command: String, out: std::process::Output) -> Result<String, UnitError> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(UnitError::Failed {
            command,
            message: if message.is_empty() {
                out.status.to_string()
            } else {
                message
            },
        })
    }
}

async fn state_of(unit: &str) -> Result<UnitState, UnitError> {
    systemctl(&show_args(unit), QUICK)
        .await
        .map(|t| UnitState::parse(&t))
}

/// The unit's limits as `systemctl set-property` words: always both, so that a limit
/// removed from the configuration is lifted too.
pub fn limit_properties(options: &UnitOptions) -> [String; 2] {
    [
        match options.memory_max {
            Some(bytes) => format!("MemoryMax={bytes}"),
            None => "MemoryMax=infinity".into(),
        },
        format!("CPUWeight={}", options.cpu_weight.unwrap_or(100)),
    ]
}

/// The engines' host under systemd.
#[derive(Debug)]
pub struct Units {
    /// `<runtime_dir>/engines`: records, output tails, sockets.
    dir: PathBuf,
}

impl Units {
    pub fn new(runtime_dir: &Path) -> Units {
        Units {
            dir: runtime_dir.join("engines"),
        }
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Every record's path (`<id>.json`). Blocking.
    fn record_paths(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
            .collect()
    }

    fn forget(&self, id: &str) {
        for ext in ["json", "tail", "pid", "status"] {
            let _ = std::fs::remove_file(self.dir.join(format!("{id}.{ext}")));
        }
    }

    async fn start(&self, launch: &Launch, output: &Output) -> Result<Box<dyn Run>, String> {
        let unit = unit_name(&launch.id);
        let path = self.record_path(&launch.id);
        let state = state_of(&unit).await.map_err(|e| e.to_string())?;
        if state.running() {
            let record = Record::read(&path);
            if record.as_ref().is_some_and(|r| r.same_engine(launch)) && state.main_pid > 0 {
                let pid = self.engine_pid(&launch.id, Duration::ZERO).await;
                tracing::info!(model = %launch.model, unit, pid, "adopting the engine an earlier vllamad left running");
                return Ok(Box::new(UnitRun::watch(
                    unit,
                    (state.main_pid, pid),
                    self.dir.clone(),
                    launch,
                    output,
                    true,
                )));
            }
            tracing::info!(model = %launch.model, unit, "an engine started with another launch is running: stopping it");
            systemctl(&["stop".into(), unit.clone()], stop_timeout(launch))
                .await
                .map_err(|e| e.to_string())?;
        }
        // What a child's spawn would say (the engine not installed…), not a unit that fails.
        if super::process::find_program(&launch.program).is_none() {
            let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
            return Err(super::vllm::spawn_error(
                &super::process::ProcessError::Spawn {
                    program: launch.program.display().to_string(),
                    source: missing,
                },
            ));
        }
        Record::of(launch)
            .write(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        for ext in ["tail", "status", "pid"] {
            let _ = std::fs::remove_file(self.dir.join(format!("{}.{ext}", launch.id)));
        }
        for path in &launch.stale {
            let _ = std::fs::remove_file(path);
        }
        let mut set = vec!["set-property".into(), "--runtime".into(), unit.clone()];
        set.extend(limit_properties(&launch.unit));
        // A failed engine stays `failed` until reset; starting it again is allowed anyway.
        let started = async {
            systemctl(&set, QUICK).await?;
            systemctl(&["start".into(), unit.clone()], QUICK).await
        };
        if let Err(e) = started.await {
            self.forget(&launch.id);
            return Err(match e {
                UnitError::Failed { ref message, .. } if message.contains("authentication") || message.contains("Access denied") => format!(
                    "{e}: vllamad's user may not start engine units; the packages install a polkit rule for it (/usr/share/polkit-1/rules.d/50-vllama.rules, needs polkitd); or set engine.launch = \"process\""
                ),
                other => other.to_string(),
            });
        }
        let state = state_of(&unit).await.map_err(|e| e.to_string())?;
        let pid = self.engine_pid(&launch.id, Duration::from_secs(5)).await;
        Ok(Box::new(UnitRun::watch(
            unit,
            (state.main_pid, pid),
            self.dir.clone(),
            launch,
            output,
            false,
        )))
    }

    /// The engine's pid, which the unit's main process writes once it has spawned it
    /// (within `wait`); `None` when it has not.
    async fn engine_pid(&self, id: &str, wait: Duration) -> Option<u32> {
        let path = self.dir.join(format!("{id}.pid"));
        let until = std::time::Instant::now() + wait;
        loop {
            if let Some(pid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                return Some(pid);
            }
            if std::time::Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every engine unit a record names (vllamad now runs engines as children: units
    /// left from before would hold memory nobody serves). Blocking.
    pub fn stop_recorded(&self) -> usize {
        let mut stopped = 0;
        for path in self.record_paths() {
            let Some(id) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            let unit = unit_name(&id);
            tracing::warn!(
                unit,
                "an engine unit left from when engines were units: stopping it"
            );
            if systemctl_blocking(&["stop".into(), unit]).is_ok() {
                stopped += 1;
            }
            self.forget(&id);
        }
        stopped
    }
}

fn stop_timeout(launch: &Launch) -> Duration {
    // The unit's main process gives the engine its grace, then systemd its TimeoutStopSec.
    launch.unit.stop_grace + Duration::from_secs(30)
}

impl Host for Units {
    fn name(&self) -> &'static str {
        "systemd"
    }

    fn engine_id(&self, model: &str, slug: &str, _n: u64) -> String {
        // One unit per model, the same name for every vllamad: a slug may be shared by two
        // names (`a:b`, `a/b`), so a hash of the name goes with it.
        use sha2::Digest;
        let hash = sha2::Sha256::digest(model.as_bytes());
        let short: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
        format!("{slug}-{short}")
    }

    fn launch<'a>(
        &'a self,
        launch: &'a Launch,
        output: &'a Output,
    ) -> BoxFuture<'a, Result<Box<dyn Run>, String>> {
        Box::pin(self.start(launch, output))
    }

    fn survivors(&self) -> Vec<Survivor> {
        let mut found = Vec::new();
        for path in self.record_paths() {
            let Some(record) = Record::read(&path) else {
                tracing::warn!(path = %path.display(), "an engine record that cannot be read: removed");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let unit = unit_name(&record.id);
            let state = systemctl_blocking(&show_args(&unit)).map(|t| UnitState::parse(&t));
            match state {
                Ok(s) if s.running() && record.format == FORMAT => found.push(Survivor {
                    id: record.id.clone(),
                    model: record.model.clone(),
                    placement: record.placement.clone(),
                    keep_alive_until: record
                        .keep_alive_until_ms
                        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
                }),
                Ok(s) if s.running() => {
                    tracing::warn!(unit, "an engine of an unknown record format: stopping it");
                    let _ = systemctl_blocking(&["stop".into(), unit]);
                    self.forget(&record.id);
                }
                Ok(s) => {
                    tracing::info!(unit, state = %s.active, result = %s.result, "an engine that ended while no vllamad ran: cleaned");
                    self.forget(&record.id);
                    let _ = std::fs::remove_file(self.dir.join(format!("{}.sock", record.id)));
                }
                Err(e) => tracing::warn!(unit, error = %e, "cannot ask systemd about an engine"),
            }
        }
        found
    }

    fn remember(&self, id: &str, until: Option<SystemTime>) {
        let path = self.record_path(id);
        let Some(mut record) = Record::read(&path) else {
            return;
        };
        record.keep_alive_until_ms = until.map(|t| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        });
        if let Err(e) = record.write(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the engine's keep_alive");
        }
    }

    fn let_go_at_shutdown(&self) -> bool {
        restarting()
    }

    fn discard<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let unit = unit_name(id);
            tracing::info!(
                unit,
                "an engine of a model no longer configured: stopping it"
            );
            if let Err(e) = systemctl(&["stop".into(), unit], Duration::from_secs(120)).await {
                tracing::warn!(error = %e, "cannot stop the engine unit");
            }
            self.forget(id);
        })
    }
}

/// One engine unit, watched through a pidfd on its main process.
struct UnitRun {
    unit: String,
    /// The engine's own pid (else the unit's main process's).
    pid: u32,
    exited: Option<AsyncFd<OwnedFd>>,
    dir: PathBuf,
    id: String,
    grace_timeout: Duration,
    output: Output,
    adopted: bool,
}

impl UnitRun {
    fn watch(
        unit: String,
        (main_pid, engine_pid): (u32, Option<u32>),
        dir: PathBuf,
        launch: &Launch,
        output: &Output,
        adopted: bool,
    ) -> UnitRun {
        UnitRun {
            unit,
            pid: engine_pid.unwrap_or(main_pid),
            exited: pidfd(main_pid),
            dir,
            id: launch.id.clone(),
            grace_timeout: stop_timeout(launch),
            output: output.clone(),
            adopted,
        }
    }

    /// The engine's last output lines, written by the unit's main process when it exits.
    fn read_tail(&self) {
        let path = self.dir.join(format!("{}.tail", self.id));
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines() {
                self.output.push(line.to_string());
            }
        }
    }
}

/// A pidfd that becomes readable when `pid` exits (`None`: it is gone already).
fn pidfd(pid: u32) -> Option<AsyncFd<OwnedFd>> {
    let pid = libc::pid_t::try_from(pid).ok().filter(|p| *p > 1)?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the descriptor was just opened and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the AsyncFd owns the descriptor, which stays open and the same until it drops.
    unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }.ok()
}

impl Run for UnitRun {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn ended(&mut self) -> BoxFuture<'_, Ended> {
        Box::pin(async move {
            if let Some(fd) = &self.exited {
                // Readable once the process is gone; never cleared (cancel-safe).
                let _ = fd.readable().await;
            }
            let mut state = UnitState::default();
            for _ in 0..50 {
                match state_of(&self.unit).await {
                    Ok(s) if s.settling() => state = s,
                    Ok(s) => {
                        state = s;
                        break;
                    }
                    Err(_) => break,
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            self.read_tail();
            // The unit's main process says how the engine ended; systemd's answer is the
            // unit's (and gone once the unit is collected).
            let engine = std::fs::read_to_string(self.dir.join(format!("{}.status", self.id)))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            Ended {
                verb: "exited",
                detail: match engine {
                    Some(status) => format!("{status}; unit {}", self.unit),
                    None => format!(
                        "unit {}: {}, exit status {}",
                        self.unit, state.result, state.exit_status
                    ),
                },
            }
        })
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let began = std::time::Instant::now();
            let stopped = systemctl(&["stop".into(), self.unit.clone()], self.grace_timeout).await;
            if let Err(e) = &stopped {
                tracing::error!(unit = %self.unit, error = %e, "cannot stop the engine unit");
            }
            for ext in ["json", "tail", "pid", "status"] {
                let _ = std::fs::remove_file(self.dir.join(format!("{}.{ext}", self.id)));
            }
            stopped.is_ok() && began.elapsed() <= grace + Duration::from_secs(1)
        })
    }

    fn survives(&self) -> bool {
        true
    }

    fn adopted(&self) -> bool {
        self.adopted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch() -> Launch {
        Launch {
            id: "tiny-1a2b3c4d".into(),
            program: "/usr/bin/vllm".into(),
            args: vec!["serve".into(), "/m".into()],
            env: vec![("PATH".into(), "/usr/bin".into())],
            tmpdir: "/run/vllama/tmp/tiny-1a2b3c4d".into(),
            model: "tiny:latest".into(),
            levels: super::super::vllm::level_of,
            stale: Vec::new(),
            unit: UnitOptions {
                stop_grace: Duration::from_secs(30),
                ..UnitOptions::default()
            },
        }
    }

    #[test]
    fn a_record_names_the_same_engine_only_for_the_same_launch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.json");
        let l = launch();
        Record::of(&l).write(&path).unwrap();
        let read = Record::read(&path).unwrap();
        assert!(read.same_engine(&l));
        assert_eq!(read.launch().args, l.args);
        assert_eq!(read.launch().unit.stop_grace, Duration::from_secs(30));
        let mut flags = l.clone();
        flags.args.push("--max-model-len=512".into());
        assert!(
            !read.same_engine(&flags),
            "other flags: not the same engine"
        );
        let mut env = l.clone();
        env.env.push(("VLLM_X".into(), "1".into()));
        assert!(
            !read.same_engine(&env),
            "other environment: not the same engine"
        );
        let mut old = read.clone();
        old.format = 0;
        assert!(!old.same_engine(&l), "another format is never adopted");
    }

    #[test]
    fn systemctl_show_is_read() {
        let s = UnitState::parse(
            "ActiveState=active\nSubState=running\nMainPID=4242\nResult=success\nExecMainStatus=0\n",
        );
        assert_eq!(s.main_pid, 4242);
        assert!(s.running());
        let s =
            UnitState::parse("ActiveState=failed\nMainPID=0\nResult=exit-code\nExecMainStatus=1");
        assert!(!s.running());
        assert_eq!(
            (s.result.as_str(), s.exit_status.as_str()),
            ("exit-code", "1")
        );
    }

    #[test]
    fn the_job_on_vllamads_unit_is_read() {
        let jobs = "  812 vllama-engine@tiny-1.service start running\n  810 vllamad.service restart running\n";
        assert_eq!(job_type(jobs, "vllamad.service"), Some("restart"));
        assert_eq!(
            job_type("  9 vllamad.service stop running\n", "vllamad.service"),
            Some("stop")
        );
        assert_eq!(job_type("", "vllamad.service"), None);
        assert_eq!(
            unit_of_cgroup("0::/system.slice/vllamad.service\n").as_deref(),
            Some("vllamad.service")
        );
        assert_eq!(
            unit_of_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"),
            None
        );
    }

    #[test]
    fn limits_are_always_both_set() {
        let none = UnitOptions::default();
        assert_eq!(
            limit_properties(&none),
            ["MemoryMax=infinity", "CPUWeight=100"]
        );
        let set = UnitOptions {
            memory_max: Some(8 << 30),
            cpu_weight: Some(50),
            ..UnitOptions::default()
        };
        assert_eq!(
            limit_properties(&set),
            ["MemoryMax=8589934592", "CPUWeight=50"]
        );
    }

    #[test]
    fn engine_ids_are_stable_and_apart() {
        let units = Units::new(Path::new("/run/vllama"));
        let a = units.engine_id("a:b", "a-b", 1);
        assert_eq!(
            a,
            units.engine_id("a:b", "a-b", 7),
            "the same for every start"
        );
        assert_ne!(a, units.engine_id("a/b", "a-b", 1), "two names, one slug");
        assert!(a.starts_with("a-b-"));
        assert_eq!(unit_name(&a), format!("vllama-engine@{a}.service"));
    }

    #[tokio::test]
    async fn a_pidfd_tells_when_a_process_that_is_not_a_child_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let fd = pidfd(child.id()).expect("pidfd_open");
        let t = std::time::Instant::now();
        // Reaped by someone else, as systemd reaps a unit's main process.
        let reaper = std::thread::spawn(move || child.wait());
        let mut ready = tokio::time::timeout(Duration::from_secs(5), fd.readable())
            .await
            .expect("the pidfd became readable")
            .unwrap();
        ready.retain_ready();
        assert!(t.elapsed() >= Duration::from_millis(250));
        reaper.join().unwrap().unwrap();
        assert!(pidfd(u32::MAX).is_none());
    }
}
