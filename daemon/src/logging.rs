//! Logging through `tracing`: natively to journald when stderr is the journal (structured
//! fields survive), otherwise human-readable text or JSON lines on stderr. The filter can be
//! swapped at run time (configuration reload).

use std::os::fd::AsFd;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log filter `{filter}`: {message}")]
    Filter { filter: String, message: String },
    #[error("a global logger is already installed")]
    AlreadyInstalled,
    #[error("the log filter can no longer be changed: {0}")]
    Reload(String),
}

/// Changes the log filter of the running daemon.
#[derive(Debug, Clone)]
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set: it wins over the configuration, also on reload.
    pinned_by_env: bool,
    /// The format actually in use (`auto` resolved).
    pub format: LogFormat,
}

impl LogHandle {
    pub fn set_filter(&self, filter: &str) -> Result<(), LogError> {
        if self.pinned_by_env {
            tracing::info!("RUST_LOG is set: it keeps precedence over log.filter");
            return Ok(());
        }
        let new = parse_filter(filter)?;
        self.filter
            .reload(new)
            .map_err(|e| LogError::Reload(e.to_string()))
    }
}

fn parse_filter(filter: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::builder()
        .parse(filter)
        .map_err(|e| LogError::Filter {
            filter: filter.to_string(),
            message: e.to_string(),
        })
}

/// True when stderr is connected to the journal (systemd sets `JOURNAL_STREAM=dev:inode`).
pub fn stderr_is_journal() -> bool {
    let Some(expected) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    expected.to_string_lossy() == format!("{}:{}", stat.st_dev, stat.st_ino)
}

/// Installs the global subscriber.
pub fn init(format: LogFormat, filter: &str) -> Result<LogHandle, LogError> {
    let env_filter = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let pinned_by_env = env_filter.is_some();
    let filter = parse_filter(env_filter.as_deref().unwrap_or(filter))?;
    let (filter_layer, handle) = reload::Layer::new(filter);

    let mut format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };
    let journald = if format == LogFormat::Journald {
        match tracing_journald::layer() {
            // No field prefix: `journalctl -u vllamad MODEL=qwen2.5:7b` works as documented.
            Ok(layer) => Some(
                layer
                    .with_syslog_identifier("vllamad".into())
                    .with_field_prefix(None),
            ),
            Err(e) => {
                eprintln!("vllamad: journald is not reachable ({e}); logging text to stderr");
                format = LogFormat::Text;
                None
            }
        }
    } else {
        None
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    crate::access_line::set_format(match (format, &journald) {
        (_, Some(_)) => crate::access_line::Format::Tracing,
        (LogFormat::Json, _) => crate::access_line::Format::Json,
        _ => crate::access_line::Format::Text { ansi },
    });
    let output: Box<dyn Layer<_> + Send + Sync> = match (format, journald) {
        (_, Some(layer)) => layer.boxed(),
        (LogFormat::Json, _) => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(crate::log_writer::BatchedStderr::new())
            .boxed(),
        _ => tracing_subscriber::fmt::layer()
            .fmt_fields(crate::log_fields::PlainFields)
            .with_writer(crate::log_writer::BatchedStderr::new())
            .with_ansi(ansi)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(output)
        .try_init()
        .map_err(|_| LogError::AlreadyInstalled)?;
    // The lines still batched are written before a panic's message.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        crate::log_writer::flush();
        previous(info);
    }));
    Ok(LogHandle {
        filter: handle,
        pinned_by_env,
        format,
    })
}
