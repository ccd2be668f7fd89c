//! `vllamactl engine install | status`: the daemon installs vLLM as its own user; this
//! follows the install's progress (a spinner line on a terminal, a line per step elsewhere)
//! and prints what is installed. Ctrl-C detaches: the daemon goes on installing.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use hyper::Method;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vllama_proto::{
    EngineBuild, EngineInstallRequest, EngineStatus, InstallPhase, InstallProgress,
    ENGINE_INSTALL_PATH, ENGINE_PATH,
};

use crate::client::{AdminClient, ClientError};
use crate::render::bytes;

/// One line of what an install is doing.
fn describe(p: &InstallProgress) -> String {
    let mut line = format!("[{}/{}] {}", p.step, p.steps, p.step_name);
    if let Some(pkg) = &p.package {
        line.push_str(&format!(" · {pkg}"));
    }
    if p.file_bytes_total > 0 && p.file_bytes_done < p.file_bytes_total {
        line.push_str(&format!(
            " {}/{}",
            bytes(p.file_bytes_done),
            bytes(p.file_bytes_total)
        ));
    }
    if p.downloaded_bytes > 0 {
        line.push_str(&format!(" · {} downloaded", bytes(p.downloaded_bytes)));
    }
    line
}

pub async fn install(
    client: &AdminClient,
    request: EngineInstallRequest,
) -> Result<ExitCode, ClientError> {
    let body = serde_json::to_vec(&request).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let tty = std::io::stderr().is_terminal();
    let spinner = ProgressBar::with_draw_target(
        None,
        if tty {
            ProgressDrawTarget::stderr_with_hz(8)
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.enable_steady_tick(Duration::from_millis(125));
    let mut last: Option<InstallProgress> = None;
    let mut shown_step = 0usize;
    let follow = client.stream_lines(ENGINE_INSTALL_PATH, body.into(), |line| {
        let Ok(p) = serde_json::from_str::<InstallProgress>(line) else {
            return;
        };
        // A hidden bar prints nothing: off a terminal, plain stderr lines.
        let note = |text: String| {
            if tty {
                spinner.println(text);
            } else {
                eprintln!("{text}");
            }
        };
        if last.is_none() && !p.phase.finished() {
            note(format!(
                "installing vLLM {} ({} build) into {}\n  engines start {}",
                p.version, p.build, p.target, p.program
            ));
        }
        if tty {
            if p.step != shown_step && shown_step > 0 {
                let done = last.as_ref().map_or("", |l| l.step_name.as_str());
                note(format!("  ✓ {done}"));
            }
            spinner.set_message(describe(&p));
        } else if p.step != shown_step && p.phase == InstallPhase::Running {
            note(format!(
                "[{}/{}] {} ({:.0}s)",
                p.step, p.steps, p.step_name, p.elapsed_seconds
            ));
        }
        shown_step = p.step;
        last = Some(p);
    });
    let detached = tokio::select! {
        r = follow => { r.inspect_err(|_| spinner.finish_and_clear())?; false }
        _ = tokio::signal::ctrl_c() => true,
    };
    spinner.finish_and_clear();
    if detached {
        eprintln!(
            "detached: vllamad goes on installing; `vllamactl engine status` shows how far it is"
        );
        return Ok(ExitCode::from(130));
    }
    let Some(p) = last else {
        return Err(ClientError::Protocol("the daemon sent no progress".into()));
    };
    match p.phase {
        InstallPhase::Planned => {
            println!(
                "vLLM {} ({} build) would be installed into {}",
                p.version, p.build, p.target
            );
            println!("and {} would start engines from it. Steps:", p.program);
            for (i, line) in p.plan.iter().enumerate() {
                println!("  {}. {line}", i + 1);
            }
            println!(
                "then: {} --version and an import of vllm and torch, the record, the link",
                p.program
            );
            Ok(ExitCode::SUCCESS)
        }
        InstallPhase::Done => {
            let r = p.installed.as_ref();
            let what = r.map_or_else(String::new, |r| {
                format!(
                    "vLLM {} ({} build, torch {}{})",
                    r.vllm_version,
                    r.build,
                    r.torch_version,
                    r.torch_cuda
                        .as_deref()
                        .map_or(String::new(), |c| format!(", CUDA {c}"))
                )
            });
            if p.already_installed {
                println!(
                    "{what} is already installed at {} (--force installs it again)",
                    p.target
                );
            } else {
                println!(
                    "installed {what} in {:.0}s at {}",
                    p.elapsed_seconds, p.target
                );
                println!("the next engine start uses it; try: vllamactl preload MODEL");
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            for line in &p.tail {
                eprintln!("  | {line}");
            }
            Err(ClientError::Daemon {
                status: hyper::StatusCode::INTERNAL_SERVER_ERROR,
                message: format!(
                    "engine install failed: {}",
                    p.error.unwrap_or_else(|| "no reason given".into())
                ),
            })
        }
    }
}

pub async fn status(client: &AdminClient, json: bool) -> Result<ExitCode, ClientError> {
    let answer = client.request(Method::GET, ENGINE_PATH).await?.ok()?;
    if json {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return Ok(ExitCode::SUCCESS);
    }
    let s: EngineStatus = answer.json()?;
    print!("{}", render(&s));
    Ok(if s.present {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn render(s: &EngineStatus) -> String {
    let mut out = format!("program   {}", s.program);
    if let Some(t) = &s.target {
        out.push_str(&format!(" → {t}"));
    }
    out.push('\n');
    match (&s.record, s.present) {
        (Some(r), _) => {
            out.push_str(&format!(
                "installed vLLM {} ({} build) on {}, in {:.0}s\ntorch     {}{}\npython    {}\n",
                r.vllm_version,
                r.build,
                r.installed_at,
                r.install_seconds,
                r.torch_version,
                r.torch_cuda
                    .as_deref()
                    .map_or(" (CPU)".to_string(), |c| format!(" (CUDA {c})")),
                r.python_version
            ));
        }
        (None, true) => {
            out.push_str("installed yes, by other means than `vllamactl engine install`\n")
        }
        (None, false) => out.push_str(&format!(
            "installed no: run `sudo vllamactl engine install` (vLLM {}, the {} build: {})\n",
            s.default_version, s.suggested_build, s.suggested_reason
        )),
    }
    if let Some(p) = &s.installing {
        out.push_str(&format!(
            "installing {} {}: {} ({:.0}s)\n",
            p.build,
            p.version,
            describe(p),
            p.elapsed_seconds
        ));
    }
    out
}

/// `--cpu` / `--cuda` → the build asked for.
pub fn build(cpu: bool, cuda: bool) -> Option<EngineBuild> {
    match (cpu, cuda) {
        (true, _) => Some(EngineBuild::Cpu),
        (_, true) => Some(EngineBuild::Cuda),
        _ => None,
    }
}
