//! `vllamactl bench`: load against any Ollama- or OpenAI-compatible endpoint (vllamad, vLLM,
//! Ollama, a proxy), at one or more concurrency levels; per level requests/s, output
//! tokens/s, latency and time-to-first-token percentiles, errors by kind. It speaks plain
//! HTTP/1.1 to the URL (no admin socket), so it runs from any machine.

mod client;
mod stats;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

pub use client::Api;
use client::{Outcome, Target};
use stats::Summary;

/// Prompts used when no `--prompts` file is given: short questions of mixed lengths.
const BUILT_IN: &[&str] = &[
    "Why is the sky blue?",
    "Write a haiku about a llama crossing a mountain pass.",
    "Explain in three sentences what a KV cache is in a transformer.",
    "List five uses of a hash map.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Summarise the plot of Hamlet in one paragraph.",
    "Give a short Rust function that reverses a string.",
    "What does HTTP status 429 mean and how should a client react?",
];

/// `vllamactl bench`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base URL of the endpoint (vllamad, vLLM, Ollama…); `OLLAMA_HOST` as Ollama reads it
    /// (`0.0.0.0`, `host:port`, a URL)
    #[arg(long, env = "OLLAMA_HOST", default_value = "http://127.0.0.1:11434", value_parser = base_url)]
    pub url: String,
    /// Which API to speak
    #[arg(long, value_enum, default_value = "ollama")]
    pub api: Api,
    /// Model name, as the endpoint knows it
    #[arg(long, short)]
    pub model: String,
    /// A file of prompts, one per line (default: eight built-in questions)
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Concurrency levels, run one after the other
    #[arg(long, short, value_delimiter = ',', default_value = "1")]
    pub concurrency: Vec<usize>,
    /// Requests per level, after the warm-up
    #[arg(long, short = 'n', default_value_t = 100)]
    pub requests: usize,
    /// Run each level for this many seconds instead of a number of requests
    #[arg(long, value_name = "SECONDS", conflicts_with = "requests")]
    pub duration: Option<f64>,
    /// Tokens to generate per request
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// Ask for whole answers instead of streams (no time to first token then)
    #[arg(long)]
    pub no_stream: bool,
    /// Unmeasured requests per worker before each level
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Give up on one request after this many seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
    pub request_timeout: f64,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
    /// An API key, sent as `Authorization: Bearer KEY`
    #[arg(long, env = "VLLAMA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// A base URL, as Ollama's clients read `OLLAMA_HOST`: the scheme defaults to http, the port
/// to 11434, and an address that means "every interface" to this machine.
fn base_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim().trim_end_matches('/');
    let (scheme, rest) = raw.split_once("://").unwrap_or(("http", raw));
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.to_string()),
        _ => (rest, "11434".to_string()),
    };
    let host = match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "[::]" => "[::1]",
        h => h,
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("`{raw}`: `{port}` is not a port"));
    }
    Ok(format!("{scheme}://{host}:{port}"))
}

/// `vllamactl bench`: runs the plan, prints the table (or JSON); exit 1 when a level had no
/// successful request, 2 when the arguments are wrong.
pub async fn main(args: Args) -> ExitCode {
    let prompts = match Plan::prompts_from(args.prompts.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vllamactl: {e}");
            return ExitCode::from(2);
        }
    };
    let plan = Plan {
        url: args.url,
        api: args.api,
        model: args.model,
        prompts,
        concurrency: args.concurrency,
        requests: args.requests,
        duration: args
            .duration
            .and_then(|d| Duration::try_from_secs_f64(d).ok()),
        max_tokens: args.max_tokens,
        stream: !args.no_stream,
        warmup: args.warmup,
        timeout: Duration::try_from_secs_f64(args.request_timeout)
            .unwrap_or(Duration::from_secs(600)),
        api_key: args.api_key,
    };
    match run(&plan, args.json).await {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", table(&report));
            }
            if report.levels.iter().any(|l| l.ok == 0) {
                eprintln!("vllamactl: a level had no successful request");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vllamactl: {e}");
            ExitCode::from(2)
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub url: String,
    pub api: Api,
    pub model: String,
    pub prompts: Vec<String>,
    pub concurrency: Vec<usize>,
    /// Requests per level (after warm-up), unless `duration` is set.
    pub requests: usize,
    pub duration: Option<Duration>,
    pub max_tokens: u32,
    pub stream: bool,
    /// Requests per worker before measuring (engine warm, connections open).
    pub warmup: usize,
    pub timeout: Duration,
    pub api_key: Option<String>,
}

impl Plan {
    pub fn prompts_from(file: Option<&std::path::Path>) -> Result<Vec<String>, String> {
        match file {
            None => Ok(BUILT_IN.iter().map(|s| s.to_string()).collect()),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let prompts: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect();
                if prompts.is_empty() {
                    return Err(format!("{}: no prompts (one per line)", path.display()));
                }
                Ok(prompts)
            }
        }
    }
}

/// One concurrency level's result.
#[derive(Debug, Serialize)]
pub struct Level {
    pub concurrency: usize,
    pub requests: usize,
    pub ok: usize,
    pub errors: BTreeMap<String, usize>,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub output_tokens_per_second: f64,
    pub output_tokens: u64,
    pub latency_ms: Summary,
    pub ttft_ms: Option<Summary>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub url: String,
    pub api: Api,
    pub model: String,
    pub stream: bool,
    pub max_tokens: u32,
    pub levels: Vec<Level>,
}

/// Runs every level of the plan, one after the other.
pub async fn run(plan: &Plan, quiet: bool) -> Result<Report, String> {
    let target = Arc::new(Target::new(plan)?);
    let mut levels = Vec::new();
    for &c in &plan.concurrency {
        if c == 0 {
            return Err("--concurrency levels must be 1 or more".into());
        }
        // Warm-up: engine loaded, connections open; not measured.
        let warm = plan.warmup * c;
        if warm > 0 {
            let _ = drive(&target, plan, c, Some(warm), None, None).await;
        }
        let bar = (!quiet).then(|| progress(plan, c));
        let started = Instant::now();
        let outcomes = drive(
            &target,
            plan,
            c,
            plan.duration.is_none().then_some(plan.requests),
            plan.duration,
            bar.clone(),
        )
        .await;
        let seconds = started.elapsed().as_secs_f64();
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        levels.push(summarise(c, outcomes, seconds));
    }
    Ok(Report {
        url: plan.url.clone(),
        api: plan.api,
        model: plan.model.clone(),
        stream: plan.stream,
        max_tokens: plan.max_tokens,
        levels,
    })
}

fn progress(plan: &Plan, c: usize) -> ProgressBar {
    let tty = std::io::stderr().is_terminal();
    let bar = match plan.duration {
        None => ProgressBar::new(plan.requests as u64),
        Some(d) => ProgressBar::new(d.as_secs()),
    };
    bar.set_draw_target(if tty {
        ProgressDrawTarget::stderr_with_hz(4)
    } else {
        ProgressDrawTarget::hidden()
    });
    let template = match plan.duration {
        None => "c={prefix:<4} [{bar:30}] {pos}/{len} requests, {per_sec}, ETA {eta}",
        Some(_) => "c={prefix:<4} [{bar:30}] {pos}/{len} s",
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(c.to_string());
    bar
}

/// `c` workers sending requests until `count` were sent or `duration` has passed.
async fn drive(
    target: &Arc<Target>,
    plan: &Plan,
    c: usize,
    count: Option<usize>,
    duration: Option<Duration>,
    bar: Option<ProgressBar>,
) -> Vec<Outcome> {
    let next = Arc::new(AtomicU64::new(0));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let deadline = duration.map(|d| Instant::now() + d);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..c {
        let (target, next, outcomes, bar) =
            (target.clone(), next.clone(), outcomes.clone(), bar.clone());
        let prompts = plan.prompts.clone();
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if count.is_some_and(|n| i >= n) || deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
                let outcome = target
                    .send(prompts.get(i % prompts.len()).map_or("", String::as_str))
                    .await;
                outcomes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(outcome);
                if let Some(b) = &bar {
                    match deadline {
                        None => b.inc(1),
                        Some(_) => b.set_position(started.elapsed().as_secs()),
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let mut out = outcomes.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *out)
}

fn summarise(c: usize, outcomes: Vec<Outcome>, seconds: f64) -> Level {
    let mut errors = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut ttfts = Vec::new();
    let mut tokens = 0;
    for o in &outcomes {
        match &o.error {
            Some(kind) => *errors.entry(kind.clone()).or_insert(0) += 1,
            None => {
                latencies.push(o.latency.as_secs_f64() * 1000.0);
                if let Some(t) = o.ttft {
                    ttfts.push(t.as_secs_f64() * 1000.0);
                }
                tokens += o.tokens;
            }
        }
    }
    let ok = latencies.len();
    Level {
        concurrency: c,
        requests: outcomes.len(),
        ok,
        errors,
        seconds,
        requests_per_second: ok as f64 / seconds.max(1e-9),
        output_tokens_per_second: tokens as f64 / seconds.max(1e-9),
        output_tokens: tokens,
        latency_ms: Summary::of(&mut latencies),
        ttft_ms: (!ttfts.is_empty()).then(|| Summary::of(&mut ttfts)),
    }
}

/// The human table.
pub fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} model {} ({}, max {} tokens)",
        r.api.name(),
        r.url,
        r.model,
        if r.stream {
            "streamed"
        } else {
            "whole answers"
        },
        r.max_tokens
    );
    let _ = writeln!(
        out,
        "{:>5} {:>7} {:>6} {:>9} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "CONC",
        "OK",
        "ERRORS",
        "REQ/S",
        "TOKENS/S",
        "P50 MS",
        "P90 MS",
        "P99 MS",
        "TTFT P50",
        "TTFT P99"
    );
    for l in &r.levels {
        let errors: usize = l.errors.values().sum();
        let (t50, t99) = l.ttft_ms.as_ref().map_or(("-".into(), "-".into()), |t| {
            (format!("{:.1}", t.p50), format!("{:.1}", t.p99))
        });
        let _ = writeln!(
            out,
            "{:>5} {:>7} {:>6} {:>9.1} {:>10.1} {:>9.1} {:>9.1} {:>9.1} {:>10} {:>10}",
            l.concurrency,
            l.ok,
            errors,
            l.requests_per_second,
            l.output_tokens_per_second,
            l.latency_ms.p50,
            l.latency_ms.p90,
            l.latency_ms.p99,
            t50,
            t99
        );
        for (kind, n) in &l.errors {
            let _ = writeln!(out, "      {n} × {kind}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base_url;

    #[test]
    fn ollama_host_values() {
        for (raw, want) in [
            ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
            ("0.0.0.0", "http://127.0.0.1:11434"),
            ("0.0.0.0:8080", "http://127.0.0.1:8080"),
            ("localhost:9000/", "http://localhost:9000"),
            ("http://box.lan", "http://box.lan:11434"),
            ("[::]:7000", "http://[::1]:7000"),
        ] {
            assert_eq!(base_url(raw).as_deref(), Ok(want), "{raw}");
        }
        assert!(base_url("host:port").is_err());
    }
}
