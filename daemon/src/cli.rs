//! Command-line arguments of `vllamad`.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{ConfigSource, LogFormat, DEFAULT_CONFIG_PATH};

/// vllamad serves the Ollama and OpenAI APIs on vLLM engines it starts and supervises.
///
/// Under systemd it takes its listeners from vllamad.socket and vllamad-admin.socket; run
/// by hand it binds them from the configuration.
#[derive(Debug, Parser)]
#[command(name = "vllamad", version, about, long_about = None)]
pub struct Args {
    /// Configuration file [default: /etc/vllama/vllama.toml, absent = built-in defaults]
    #[arg(long, short = 'c', env = "VLLAMA_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Log output: auto, journald, text or json [default: log.format from the configuration]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Read and validate the configuration, print it as TOML and exit.
    #[arg(long)]
    pub check_config: bool,

    /// Run the engine a record describes, as the main process of its systemd unit
    /// (vllama-engine@.service), and exit with its status.
    #[arg(long, value_name = "RECORD", hide = true)]
    pub engine_unit: Option<PathBuf>,

    /// Print the man page or a shell completion script and exit (used to build packages).
    #[arg(long, value_name = "WHAT", hide = true)]
    pub generate: Option<Generate>,
}

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Generate {
    Man,
    CompleteBash,
    CompleteZsh,
    CompleteFish,
}

/// Prints the man page (section 8) or a completion script of `vllamad`.
pub fn generate(what: Generate) -> std::io::Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let mut cmd = Args::command();
    let mut out = std::io::stdout().lock();
    let shell = match what {
        Generate::Man => return clap_mangen::Man::new(cmd).section("8").render(&mut out),
        Generate::CompleteBash => Shell::Bash,
        Generate::CompleteZsh => Shell::Zsh,
        Generate::CompleteFish => Shell::Fish,
    };
    // Into memory first: clap_complete panics when the writer fails (a closed pipe).
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut cmd, "vllamad", &mut text);
    std::io::Write::write_all(&mut out, &text)
}

impl Args {
    pub fn config_source(&self) -> ConfigSource {
        match &self.config {
            Some(path) => ConfigSource {
                path: path.clone(),
                explicit: true,
            },
            None => ConfigSource {
                path: PathBuf::from(DEFAULT_CONFIG_PATH),
                explicit: false,
            },
        }
    }
}
