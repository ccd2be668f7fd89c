//! Running a [`Plan`]: each command in its own process group with an explicit environment,
//! its output read line by line (bounded) into the install's progress and a tail for the
//! error report; then the result verified and recorded.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::watch;
use vllama_proto::{EngineBuild, EngineRecord, InstallPhase, InstallProgress};

use super::plan::{Plan, Step, RECORD_FILE};
use super::InstallError;

/// Output lines kept for the error report.
const TAIL: usize = 30;
/// `vllm --version` imports torch: seconds on a warm disk, more on a cold one.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(300);

const VERIFY_PY: &str =
    "import json, sys, torch, vllm; print(json.dumps({'vllm': vllm.__version__, \
'torch': torch.__version__, 'cuda': torch.version.cuda, 'python': sys.version.split()[0]}))";
const PURELIB_PY: &str = "import sysconfig; print(sysconfig.get_paths()['purelib'])";

/// Runs every step, then verifies the build and writes its record (last).
pub async fn execute(
    plan: &Plan,
    env: &[(String, String)],
    tx: &watch::Sender<InstallProgress>,
    started: Instant,
) -> Result<EngineRecord, InstallError> {
    for (i, step) in plan.steps.iter().enumerate() {
        tx.send_modify(|p| {
            p.phase = InstallPhase::Running;
            p.step = i + 1;
            p.step_name = step.name().to_string();
            p.package = None;
            p.file_bytes_done = 0;
            p.file_bytes_total = 0;
            p.elapsed_seconds = started.elapsed().as_secs_f64();
        });
        tracing::info!(step = i + 1, what = step.name(), command = %step.line(), "engine install step");
        match step {
            Step::Run {
                name,
                program,
                args,
            } => {
                run(name, program, args, env, Some((tx, started))).await?;
            }
            Step::Write { path, content, .. } => {
                tokio::fs::write(path, content)
                    .await
                    .map_err(|e| InstallError::io("write", path, e))?;
            }
            Step::NameDistribution { version } => {
                let out = run(
                    step.name(),
                    &plan.python(),
                    &args(["-c", PURELIB_PY]),
                    env,
                    None,
                )
                .await?;
                let site = PathBuf::from(out.trim());
                let dist = site.join(format!("vllm-{version}+cpu.dist-info"));
                tokio::fs::create_dir_all(&dist)
                    .await
                    .map_err(|e| InstallError::io("create", &dist, e))?;
                let metadata =
                    format!("Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n");
                for (file, text) in [("METADATA", metadata.as_str()), ("RECORD", "")] {
                    let path = dist.join(file);
                    tokio::fs::write(&path, text)
                        .await
                        .map_err(|e| InstallError::io("write", &path, e))?;
                }
            }
        }
    }
    tx.send_modify(|p| {
        p.phase = InstallPhase::Verifying;
        p.step_name = "verifying: vllm --version, import vllm and torch".into();
        p.package = None;
        p.elapsed_seconds = started.elapsed().as_secs_f64();
    });
    let record = verify(plan, env, started).await?;
    let path = plan.target.join(RECORD_FILE);
    let tmp = plan.target.join(format!("{RECORD_FILE}.tmp"));
    let text =
        serde_json::to_vec_pretty(&record).map_err(|e| InstallError::Verify(e.to_string()))?;
    tokio::fs::write(&tmp, text)
        .await
        .map_err(|e| InstallError::io("write", &tmp, e))?;
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(|e| InstallError::io("rename", &path, e))?;
    Ok(record)
}

fn args<const N: usize>(a: [&str; N]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Checks that the build runs: `vllm --version` answers, and vllm and torch import.
async fn verify(
    plan: &Plan,
    env: &[(String, String)],
    started: Instant,
) -> Result<EngineRecord, InstallError> {
    let program = plan.target.join("bin/vllm");
    let version = tokio::time::timeout(
        VERIFY_TIMEOUT,
        run("vllm --version", &program, &args(["--version"]), env, None),
    )
    .await
    .map_err(|_| {
        InstallError::Verify(format!(
            "{} --version did not answer within {}s",
            program.display(),
            VERIFY_TIMEOUT.as_secs()
        ))
    })??;
    let vllm_version = version
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    if vllm_version.is_empty() {
        return Err(InstallError::Verify(format!(
            "{} --version printed nothing",
            program.display()
        )));
    }
    let out = tokio::time::timeout(
        VERIFY_TIMEOUT,
        run(
            "import vllm",
            &plan.python(),
            &args(["-c", VERIFY_PY]),
            env,
            None,
        ),
    )
    .await
    .map_err(|_| InstallError::Verify("importing vllm did not finish".into()))??;
    let facts: serde_json::Value = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            InstallError::Verify(format!("unexpected output of the import check: {out}"))
        })?;
    let text = |k: &str| facts.get(k).and_then(|v| v.as_str()).map(str::to_string);
    // The parser names, for checking models' profiles without asking vLLM at each start.
    let parsers = run(
        "reading the parser names",
        &plan.python(),
        &args(["-c", crate::engine::parsers::PROBE_PY]),
        env,
        None,
    )
    .await
    .ok()
    .and_then(|out| {
        out.lines()
            .rev()
            .find_map(|l| serde_json::from_str::<crate::engine::profile::KnownParsers>(l).ok())
    })
    .unwrap_or_default();
    Ok(EngineRecord {
        build: plan.build,
        vllm_version,
        requested_version: plan.version.clone(),
        torch_version: text("torch").unwrap_or_default(),
        torch_cuda: text("cuda"),
        python_version: text("python").unwrap_or_default(),
        installed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        install_seconds: started.elapsed().as_secs_f64(),
        tool_parsers: parsers.tool,
        reasoning_parsers: parsers.reasoning,
    })
}

/// pip's output, read for progress.
#[derive(Debug, Default)]
struct PipOutput {
    tail: VecDeque<String>,
    stdout: String,
    /// Bytes of the downloads that finished.
    finished_bytes: u64,
    file_done: u64,
    file_total: u64,
}

impl PipOutput {
    fn line(&mut self, line: String, progress: Option<&mut InstallProgress>) {
        let mut scratch = None;
        let progress = match progress {
            Some(p) => p,
            None => scratch.get_or_insert_with(|| InstallProgress::new(EngineBuild::Cpu, "")),
        };
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("Progress ") {
            // `--progress-bar raw`: "Progress 262144 of 7034756".
            let mut it = rest.split(" of ");
            let done = it.next().and_then(|n| n.trim().parse::<u64>().ok());
            let total = it.next().and_then(|n| n.trim().parse::<u64>().ok());
            if let (Some(done), Some(total)) = (done, total) {
                self.file_done = done;
                self.file_total = total;
                if done >= total {
                    self.finished_bytes += total;
                    self.file_done = 0;
                    self.file_total = 0;
                    progress.file_bytes_done = total;
                    progress.file_bytes_total = total;
                } else {
                    progress.file_bytes_done = done;
                    progress.file_bytes_total = total;
                }
                progress.downloaded_bytes = self.finished_bytes + self.file_done;
            }
            return; // progress lines are not worth a place in the tail
        }
        if let Some(rest) = t.strip_prefix("Collecting ") {
            progress.package = rest.split_whitespace().next().map(str::to_string);
        } else if let Some(rest) = t.strip_prefix("Downloading ") {
            progress.package = rest.split_whitespace().next().map(str::to_string);
            progress.file_bytes_done = 0;
            progress.file_bytes_total = 0;
        } else if let Some(rest) = t.strip_prefix("Installing collected packages: ") {
            let n = rest.split(',').count();
            progress.package = Some(format!("{n} package{}", if n == 1 { "" } else { "s" }));
        }
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }
}

/// A process group killed when dropped (cancelled installs leave no pip running).
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        if self.0 > 1 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs one command; its stdout is returned. With `progress`, pip's lines update it.
async fn run(
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    progress: Option<(&watch::Sender<InstallProgress>, Instant)>,
) -> Result<String, InstallError> {
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| InstallError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    let group = Group(child.id().map_or(0, |id| id as i32));
    let state = Arc::new(Mutex::new(PipOutput::default()));
    let feed = |is_stdout: bool| {
        let state = state.clone();
        move |line: String| {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if is_stdout && s.stdout.len() < 64 * 1024 {
                s.stdout.push_str(&line);
                s.stdout.push('\n');
            }
            match progress {
                Some((tx, started)) => tx.send_modify(|p| {
                    s.line(line, Some(&mut *p));
                    p.elapsed_seconds = started.elapsed().as_secs_f64();
                }),
                None => s.line(line, None),
            }
        }
    };
    let out = child.stdout.take();
    let err = child.stderr.take();
    let read_out = async {
        if let Some(out) = out {
            crate::lines::for_each_line(out, feed(true)).await;
        }
    };
    let read_err = async {
        if let Some(err) = err {
            crate::lines::for_each_line(err, feed(false)).await;
        }
    };
    let (status, (), ()) = tokio::join!(child.wait(), read_out, read_err);
    drop(group); // anything the command left in its group goes with it
    let status = status.map_err(|source| InstallError::Spawn {
        program: program.display().to_string(),
        source,
    })?;
    let s = state.lock().unwrap_or_else(|p| p.into_inner());
    if status.success() {
        return Ok(s.stdout.clone());
    }
    let tail: Vec<String> = s.tail.iter().cloned().collect();
    Err(InstallError::Step {
        step: name.to_string(),
        status: status.to_string(),
        hint: super::hint(&tail),
        tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_lines_become_progress() {
        let mut out = PipOutput::default();
        let mut p = InstallProgress::new(EngineBuild::Cpu, "0.32.0");
        for line in [
            "Collecting torch==2.13.0",
            "  Downloading torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl (900.1 MB)",
            "Progress 0 of 1000",
            "Progress 400 of 1000",
        ] {
            out.line(line.into(), Some(&mut p));
        }
        assert_eq!(
            p.package.as_deref(),
            Some("torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl")
        );
        assert_eq!(
            (p.file_bytes_done, p.file_bytes_total, p.downloaded_bytes),
            (400, 1000, 400)
        );
        out.line("Progress 1000 of 1000".into(), Some(&mut p));
        out.line(
            "  Downloading six-1.16.0-py2.py3-none-any.whl (11 kB)".into(),
            Some(&mut p),
        );
        out.line("Progress 50 of 100".into(), Some(&mut p));
        assert_eq!(p.downloaded_bytes, 1050);
        out.line(
            "Installing collected packages: six, torch".into(),
            Some(&mut p),
        );
        assert_eq!(p.package.as_deref(), Some("2 packages"));
        assert!(
            out.tail.iter().all(|l| !l.starts_with("Progress")),
            "{:?}",
            out.tail
        );
        assert_eq!(out.tail.len(), 4);
    }
}
