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
