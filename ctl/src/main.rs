//! vllamactl: the operator's tool for vllamad, over the admin socket.

mod client;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hyper::Method;
use vllama_proto::{
    EngineInfo, PreloadEvent, PreloadRequest, ReloadOutcome, Status, UnloadRequest,
    DEFAULT_ADMIN_SOCKET, ENGINES_PATH, PRELOAD_PATH, RELOAD_PATH, STATUS_PATH, UNLOAD_PATH,
};

use client::{AdminClient, ClientError};

/// Control vllamad, the vllama daemon, through its admin socket.
#[derive(Debug, Parser)]
#[command(name = "vllamactl", version, about)]
struct Cli {
    /// Admin socket of vllamad
    #[arg(long, global = true, env = "VLLAMA_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET, value_name = "PATH")]
    socket: PathBuf,

    /// Give up when vllamad does not answer within this many seconds
    #[arg(long, global = true, default_value_t = 10.0, value_name = "SECONDS")]
    timeout: f64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the daemon's state, configuration and listeners
    Status {
        /// Print the admin API's JSON as it is
        #[arg(long)]
        json: bool,
    },
    /// List the engines: model, state, GPUs, requests, when they unload
    Ps {
        /// Print the admin API's JSON as it is
        #[arg(long)]
        json: bool,
    },
    /// Start a model's engine now and wait until it is ready
    Preload {
        /// Model name (qwen2.5:0.5b, org/name, or a [models] entry)
        model: String,
        /// How long it stays loaded once idle: 5m, 1h, -1 (forever), 0
        #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
        keep_alive: Option<String>,
    },
    /// Stop a model's engine now
    Unload {
        /// Model name
        model: String,
    },
    /// Re-read the configuration file; a broken file is refused and the old one stays
    Reload {
        /// Print the admin API's JSON as it is
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vllamactl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vllamactl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, ClientError> {
    let timeout = Duration::try_from_secs_f64(cli.timeout).unwrap_or(Duration::from_secs(10));
    let client = AdminClient::new(cli.socket, timeout);
    match cli.command {
        Command::Status { json } => {
            let answer = client.request(Method::GET, STATUS_PATH).await?.ok()?;
            if json {
                println!("{}", String::from_utf8_lossy(&answer.body));
            } else {
                print!("{}", render::status(&answer.json::<Status>()?));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ps { json } => {
            let answer = client.request(Method::GET, ENGINES_PATH).await?.ok()?;
            if json {
                println!("{}", String::from_utf8_lossy(&answer.body));
            } else {
                let list: Vec<EngineInfo> = answer.json()?;
                if list.is_empty() {
                    println!("no engines loaded");
                } else {
                    print!("{}", render::engines(&list));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Preload { model, keep_alive } => preload(&client, model, keep_alive).await,
        Command::Unload { model } => {
            let body = serde_json::to_vec(&UnloadRequest {
                model: model.clone(),
            })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
            client
                .request_with(Method::POST, UNLOAD_PATH, body.into())
                .await?
                .ok()?;
            println!("{model} unloaded");
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { json } => {
            let answer = client.request(Method::POST, RELOAD_PATH).await?;
            // 422 carries the outcome too: the reload was refused, the reason inside.
            let answer = if answer.status == hyper::StatusCode::UNPROCESSABLE_ENTITY {
                answer
            } else {
                answer.ok()?
            };
            print_reload(&answer, json)
        }
    }
}

async fn preload(
    client: &AdminClient,
    model: String,
    keep_alive: Option<String>,
) -> Result<ExitCode, ClientError> {
    use std::io::{IsTerminal, Write};
    let body = serde_json::to_vec(&PreloadRequest { model, keep_alive })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let tty = std::io::stderr().is_terminal();
    let spinner = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let mut ticks = 0usize;
    let mut last_state = String::new();
    let mut outcome: Option<PreloadEvent> = None;
    client
        .stream_lines(PRELOAD_PATH, body.into(), |line| {
            let Ok(event) = serde_json::from_str::<PreloadEvent>(line) else {
                return;
            };
            let message = event.message.as_deref().unwrap_or("");
            if tty {
                let width = 100usize;
                let mut text = format!(
                    "{} {} {} {:>5.1}s  {message}",
                    spinner[ticks % spinner.len()],
                    event.model,
                    event.state,
                    event.elapsed_seconds
                );
                text.truncate(
                    text.char_indices()
                        .nth(width)
                        .map_or(text.len(), |(i, _)| i),
                );
                let _ = write!(std::io::stderr(), "\r\x1b[2K{text}");
                ticks += 1;
            } else if event.state != last_state {
                eprintln!(
                    "{} {} ({:.1}s)",
                    event.model, event.state, event.elapsed_seconds
                );
            }
            last_state = event.state.clone();
            if event.state == "ready" || event.state == "failed" {
                outcome = Some(event);
            }
        })
        .await?;
    if tty {
        eprint!("\r\x1b[2K");
    }
    match outcome {
        Some(e) if e.state == "ready" => {
            println!("{} is ready ({:.1}s)", e.model, e.elapsed_seconds);
            Ok(ExitCode::SUCCESS)
        }
        Some(e) => Err(ClientError::Daemon {
            status: hyper::StatusCode::INTERNAL_SERVER_ERROR,
            message: e
                .error
                .unwrap_or_else(|| format!("{} failed to load", e.model)),
        }),
        None => Err(ClientError::Protocol(
            "the daemon ended the stream without an outcome".into(),
        )),
    }
}

fn print_reload(answer: &client::Answer, json: bool) -> Result<ExitCode, ClientError> {
    let outcome: ReloadOutcome = answer.json()?;
    if json {
        println!("{}", String::from_utf8_lossy(&answer.body));
    } else if outcome.applied {
        print!("{}", render::reload(&outcome));
    } else {
        eprint!("{}", render::reload(&outcome));
    }
    Ok(if outcome.applied {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
