//! `vllamactl pull`: follows a pull's progress. On a terminal, a bar for the whole pull
//! (bytes, rate, ETA) and one per file being downloaded; elsewhere, a plain line per file
//! and per phase. Ctrl-C detaches: the daemon goes on pulling, and `pull` again reattaches.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use vllama_proto::{PullPhase, PullProgress, PullRequest, PULL_PATH};

use crate::client::{AdminClient, ClientError};
use crate::render::bytes;

/// The display: bars on a terminal, lines elsewhere.
struct View {
    tty: bool,
    multi: MultiProgress,
    total: Option<ProgressBar>,
    files: HashMap<String, ProgressBar>,
    /// Plain mode: files already reported complete, and the last phase printed.
    reported: HashMap<String, bool>,
    phase: Option<PullPhase>,
}

impl View {
    fn new() -> View {
        let tty = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr_with_hz(8)
        } else {
            ProgressDrawTarget::hidden()
        });
        View {
            tty,
            multi,
            total: None,
            files: HashMap::new(),
            reported: HashMap::new(),
            phase: None,
        }
    }

    fn show(&mut self, p: &PullProgress) {
        if self.phase != Some(p.phase) {
            self.phase = Some(p.phase);
            let what = match p.phase {
                PullPhase::Resolving => format!("resolving {}@{}", p.repo, p.revision),
                PullPhase::Downloading => format!(
                    "downloading {} files, {} (commit {})",
                    p.files.len(),
                    bytes(p.bytes_total),
                    p.commit
                        .as_deref()
                        .map_or("?", |c| c.get(..12).unwrap_or(c))
                ),
                PullPhase::Linking => "writing the snapshot".into(),
                PullPhase::Done | PullPhase::Failed => String::new(),
            };
            if !what.is_empty() {
                let _ = self.multi.println(&what);
                if !self.tty {
                    eprintln!("{what}");
                }
            }
        }
        if self.tty {
            if matches!(p.phase, PullPhase::Downloading | PullPhase::Linking) {
                self.bars(p);
            }
        } else {
            for f in &p.files {
                let complete = f.done >= f.size;
                if complete && !self.reported.get(&f.path).copied().unwrap_or(false) {
                    eprintln!("  {} ({})", f.path, bytes(f.size));
                    self.reported.insert(f.path.clone(), true);
                }
            }
        }
    }

    fn bars(&mut self, p: &PullProgress) {
        let total = self.total.get_or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(p.bytes_total));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix("total");
            bar
        });
        total.set_length(p.bytes_total);
        total.set_position(p.bytes_done);
        for f in &p.files {
            let active = f.done > 0 && f.done < f.size;
            match (self.files.get(&f.path), active) {
                (Some(bar), true) => bar.set_position(f.done),
                (Some(bar), false) => {
                    bar.finish_and_clear();
                    self.multi.remove(bar);
                    self.files.remove(&f.path);
                }
                (None, true) => {
                    let bar = self.multi.insert_from_back(1, ProgressBar::new(f.size));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    let name = f.path.rsplit('/').next().unwrap_or(&f.path);
                    bar.set_prefix(truncate(name, 12));
                    bar.set_position(f.done);
                    self.files.insert(f.path.clone(), bar);
                }
                (None, false) => {}
            }
        }
    }

    fn clear(&mut self) {
        for bar in self.files.values() {
            bar.finish_and_clear();
        }
        if let Some(t) = &self.total {
            t.finish_and_clear();
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let keep: String = s.chars().take(n - 1).collect();
        format!("{keep}…")
    }
}

pub async fn pull(client: &AdminClient, model: String) -> Result<ExitCode, ClientError> {
    let body = serde_json::to_vec(&PullRequest {
        model: model.clone(),
    })
    .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut view = View::new();
    let mut last: Option<PullProgress> = None;
    let follow = client.stream_lines(PULL_PATH, body.into(), |line| {
        if let Ok(p) = serde_json::from_str::<PullProgress>(line) {
            view.show(&p);
            last = Some(p);
        }
    });
    let detached = tokio::select! {
        r = follow => { r?; false }
        _ = tokio::signal::ctrl_c() => true,
    };
    view.clear();
    if detached {
        eprintln!(
            "detached: vllamad goes on pulling {model}; `vllamactl pull {model}` follows it again"
        );
        return Ok(ExitCode::from(130));
    }
    match last {
        Some(p) if p.phase == PullPhase::Done => {
            println!(
                "{model}: {}@{} is in the store ({}, commit {})",
                p.repo,
                p.revision,
                bytes(p.bytes_total),
                p.commit.as_deref().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(p) => Err(ClientError::Daemon {
            status: hyper::StatusCode::BAD_GATEWAY,
            message: p.error.unwrap_or_else(|| "the pull failed".into()),
        }),
        None => Err(ClientError::Protocol("the daemon sent no progress".into())),
    }
}
