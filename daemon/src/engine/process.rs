//! One engine process: `vllm serve` spawned in its own process group, with an explicit
//! environment, its output mapped into tracing (vLLM's level token → tracing level) and
//! the last lines kept for error reports; stopped by SIGTERM to the leader, then SIGKILL to
//! the whole group after the grace, and the group swept again after the leader exits
//! (vLLM's EngineCore and workers outlive a leader-only kill).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncRead;
use tokio::process::{Child, Command};

/// How many output lines are kept for error reports.
pub const TAIL_LINES: usize = 50;
/// Every engine carries this variable, so that a later vllamad can find engines a killed
/// one left behind (see [`sweep_orphans`]).
pub const ENGINE_MARK: &str = "VLLAMA_ENGINE_RUNTIME_DIR";

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare the engine's folder {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Everything needed to start one engine process.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The engine's id: its socket's and folder's name (and its unit's instance).
    pub id: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The complete environment: nothing of the daemon's is inherited.
    pub env: Vec<(String, String)>,
    /// The engine's own TMPDIR (vLLM leaves socket files there); removed after it stops.
    pub tmpdir: PathBuf,
    /// For log fields.
    pub model: String,
    /// The tracing level of one of its output lines (the engine kind's log format).
    pub levels: fn(&str) -> tracing::Level,
    /// Files a fresh start removes first (a crashed vLLM's socket: it will not bind over it).
    pub stale: Vec<PathBuf>,
    /// What an engine unit needs besides ([`super::units`]).
    pub unit: UnitOptions,
}

/// An engine unit's limits and stop grace, and where the engine was placed (kept for the
/// next vllamad, which adopts it there).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnitOptions {
    pub memory_max: Option<u64>,
    pub cpu_weight: Option<u32>,
    pub stop_grace: Duration,
    pub placement: Option<crate::placement::Placement>,
}

/// Output lines shared between the pumps and the supervisor.
#[derive(Debug, Default, Clone)]
pub struct Output {
    inner: Arc<Mutex<VecDeque<String>>>,
}

impl Output {
    pub(crate) fn push(&self, line: String) {
        let mut lines = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    pub fn last(&self) -> Option<String> {
        self.tail(1).pop()
    }
}

/// A running engine process (the leader of its own process group).
#[derive(Debug)]
pub struct EngineProcess {
    child: Child,
    pgid: i32,
    /// The output readers: they end at EOF, once every process of the group is gone.
    pumps: Vec<tokio::task::JoinHandle<()>>,
    exited: Option<ExitStatus>,
    tmpdir: PathBuf,
}

impl EngineProcess {
    /// Spawns the engine. Must be called from a runtime worker thread (not `spawn_blocking`):
    /// PR_SET_PDEATHSIG fires when the spawning *thread* exits.
    pub fn spawn(launch: &Launch, output: &Output) -> Result<Self, ProcessError> {
        for path in &launch.stale {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale engine file");
                }
            }
        }
        std::fs::create_dir_all(&launch.tmpdir).map_err(|source| ProcessError::Dir {
            path: launch.tmpdir.display().to_string(),
            source,
        })?;
        let mut cmd = Command::new(&launch.program);
        cmd.args(&launch.args)
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&launch.tmpdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl and getppid are async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The daemon died between fork and prctl: do not outlive it.
                if libc::getppid() == 1 {
                    return Err(std::io::Error::other("vllamad exited"));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            program: launch.program.display().to_string(),
            source,
        })?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(
                out,
                launch.model.clone(),
                pid,
                (output.clone(), launch.levels),
            )));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(
                err,
                launch.model.clone(),
                pid,
                (output.clone(), launch.levels),
            )));
        }
        Ok(EngineProcess {
            child,
            pgid: pid,
            pumps,
            exited: None,
            tmpdir: launch.tmpdir.clone(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pgid.max(0) as u32
    }

    /// Waits for the leader to exit (cancel-safe), then kills what is left of its group.
    pub async fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let status = match self.child.wait().await {
            Ok(status) => status,
            Err(e) => {
                tracing::error!(pid = self.pgid, error = %e, "waiting for the engine failed");
                std::os::unix::process::ExitStatusExt::from_raw(0xff00)
            }
        };
        self.exited = Some(status);
        sweep_group(self.pgid).await;
        // Its last words (the reason it died) must be in the output before anyone quotes it.
        for pump in self.pumps.drain(..) {
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), pump).await {
                if e.is_panic() {
                    let why = crate::tasks::panic_message(e.into_panic());
                    tracing::error!(pid = self.pgid, panic = %why, "the engine's output reader panicked");
                }
            }
        }
        status
    }

    /// SIGTERM to the leader; SIGKILL to the group after `grace`; sweep. Returns whether the
    /// engine stopped within the grace.
    pub async fn stop(&mut self, grace: Duration) -> bool {
        if self.exited.is_none() && self.pgid > 1 {
            let _ = kill(Pid::from_raw(self.pgid), Signal::SIGTERM);
        }
        let graceful = tokio::time::timeout(grace, self.wait()).await.is_ok();
        if !graceful {
            tracing::warn!(pid = self.pgid, grace = ?grace, "engine did not stop within the grace; killing its process group");
            signal_group(self.pgid, Signal::SIGKILL);
            self.wait().await;
        }
        let _ = std::fs::remove_dir_all(&self.tmpdir);
        graceful
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        // Never leave an engine behind, whatever path dropped it.
        if self.exited.is_none() {
            signal_group(self.pgid, Signal::SIGKILL);
        }
    }
}

/// Sends `signal` to a process group; never to group 0 or 1 (that would be us, or init).
fn signal_group(pgid: i32, signal: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

fn group_alive(pgid: i32) -> bool {
    pgid > 1 && killpg(Pid::from_raw(pgid), None) != Err(Errno::ESRCH)
}

/// Kills every process left in the group and waits (briefly) until none is.
async fn sweep_group(pgid: i32) {
    if !group_alive(pgid) {
        return;
    }
    tracing::debug!(pgid, "killing the engine's remaining processes");
    signal_group(pgid, Signal::SIGKILL);
    for _ in 0..200 {
        if !group_alive(pgid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(
        pgid,
        "engine processes survived SIGKILL for 2 s (uninterruptible I/O?)"
    );
}

/// Reads one of the engine's streams forever (bounded lines: `crate::lines`), mapping each
/// line to a tracing event at the line's own level and keeping it for error reports.
async fn pump(
    stream: impl AsyncRead + Unpin,
    model: String,
    pid: i32,
    (output, levels): (Output, fn(&str) -> tracing::Level),
) {
    crate::lines::for_each_line(stream, |line| {
        match levels(&line) {
            tracing::Level::ERROR => tracing::error!(target: "vllm", model, pid, "{line}"),
            tracing::Level::WARN => tracing::warn!(target: "vllm", model, pid, "{line}"),
            tracing::Level::DEBUG => tracing::debug!(target: "vllm", model, pid, "{line}"),
            _ => tracing::info!(target: "vllm", model, pid, "{line}"),
        }
        output.push(line);
    })
    .await;
}

/// The executable `program` names, as spawning it would find it: a path as it is, a bare
/// name through `PATH`; only an executable regular file counts.
pub fn find_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return runnable(program).then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| runnable(p))
}

/// Every live process in process group `pgid` (an engine and its EngineCore/Workers), for
/// attributing GPU memory. Blocking: reads /proc.
pub fn group_pids(pgid: i32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // Fields after "(comm)": state, ppid, pgrp, ...
            let (_, rest) = stat.rsplit_once(')')?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let pgrp: i32 = fields.nth(1)?.parse().ok()?;
            (pgrp == pgid && state != "Z").then_some(pid)
        })
        .collect()
}

/// Kills engines that a previous vllamad with the same runtime directory left behind (it
/// was SIGKILLed outside systemd; PR_SET_PDEATHSIG took the leaders, not their children).
/// Blocking: reads /proc. Returns how many process groups were killed.
pub fn sweep_orphans(runtime_dir: &Path) -> usize {
    let mark = format!("{ENGINE_MARK}={}", runtime_dir.display());
    let me = std::process::id() as i32;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut groups = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if !environ.split(|&b| b == 0).any(|var| var == mark.as_bytes()) {
            continue;
        }
        // An engine unit's processes outlive vllamad on purpose (a later one adopts them).
        let unit = format!("/{}@", super::units::TEMPLATE);
        if std::fs::read_to_string(entry.path().join("cgroup")).is_ok_and(|c| c.contains(&unit)) {
            continue;
        }
        if let Ok(pgid) = nix::unistd::getpgid(Some(Pid::from_raw(pid))) {
            let pgid = pgid.as_raw();
            if pgid > 1 && pgid != me && !groups.contains(&pgid) {
                groups.push(pgid);
            }
        }
    }
    for &pgid in &groups {
        tracing::warn!(pgid, "killing an engine left behind by an earlier vllamad");
        signal_group(pgid, Signal::SIGKILL);
    }
    groups.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_the_last_lines() {
        let out = Output::default();
        for i in 0..(TAIL_LINES + 10) {
            out.push(format!("line {i}"));
        }
        let tail = out.tail(3);
        assert_eq!(tail, ["line 57", "line 58", "line 59"]);
        assert_eq!(out.tail(1000).len(), TAIL_LINES);
        assert_eq!(out.last().as_deref(), Some("line 59"));
    }

    fn sh(script: &str, tmp: &Path) -> Launch {
        Launch {
            id: "test-1".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            tmpdir: tmp.join("engine-tmp"),
            model: "test".into(),
            levels: |_| tracing::Level::INFO,
            stale: Vec::new(),
            unit: UnitOptions::default(),
        }
    }

    #[tokio::test]
    async fn stop_kills_the_whole_group_even_when_sigterm_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        // Leader ignores SIGTERM and has a child that would outlive it.
        let launch = sh("trap '' TERM; sleep 300 & echo started; wait", dir.path());
        let out = Output::default();
        let mut p = EngineProcess::spawn(&launch, &out).unwrap();
        let pgid = p.pid() as i32;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(group_alive(pgid));
        let t = std::time::Instant::now();
        let graceful = p.stop(Duration::from_millis(300)).await;
        assert!(!graceful);
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(!group_alive(pgid), "a process of the group survived");
        assert!(!launch.tmpdir.exists(), "TMPDIR not removed");
        assert_eq!(out.last().as_deref(), Some("started"));
    }

    #[tokio::test]
    async fn group_pids_finds_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let launch = sh("sleep 300 & sleep 300 & wait", dir.path());
        let mut p = EngineProcess::spawn(&launch, &Output::default()).unwrap();
        let pgid = p.pid() as i32;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pids = group_pids(pgid);
        assert_eq!(pids.len(), 3, "{pids:?}");
        assert!(pids.contains(&p.pid()));
        p.stop(Duration::from_millis(200)).await;
        assert!(group_pids(pgid).is_empty());
    }

    #[tokio::test]
    async fn a_leader_exit_sweeps_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let launch = sh("sleep 300 & exit 0", dir.path());
        let mut p = EngineProcess::spawn(&launch, &Output::default()).unwrap();
        let pgid = p.pid() as i32;
        let status = p.wait().await;
        assert!(status.success());
        assert!(
            !group_alive(pgid),
            "orphaned child survived the leader's exit"
        );
    }

    #[tokio::test]
    async fn environment_is_explicit() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("VLLAMA_TEST_SHOULD_NOT_LEAK", "1");
        let launch = sh("env", dir.path());
        let out = Output::default();
        let mut p = EngineProcess::spawn(&launch, &out).unwrap();
        p.wait().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let lines = out.tail(TAIL_LINES);
        assert!(lines.iter().any(|l| l == "PATH=/usr/bin:/bin"), "{lines:?}");
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("VLLAMA_TEST_SHOULD_NOT_LEAK")),
            "{lines:?}"
        );
    }
}
