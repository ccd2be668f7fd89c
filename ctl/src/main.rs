//! vllamactl: the operator's tool for vllamad, over the admin socket.

mod client;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hyper::Method;
use vllama_proto::{ReloadOutcome, Status, DEFAULT_ADMIN_SOCKET, RELOAD_PATH, STATUS_PATH};

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
