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
use std::process::ExitCode;

use clap::Parser;
use vllamad::cli::Args;
use vllamad::listeners::ActivatedFds;

/// mimalloc, not glibc's malloc: 9% fewer instructions a proxied request, 17% fewer on the
/// Ollama translation (callgrind, docs/PERFORMANCE.md "Where a proxied request's
/// instructions go"), for ~9 MiB more resident memory at idle.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let source = args.config_source();
    if let Some(what) = args.generate {
        return match vllamad::cli::generate(what) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vllamad: {e}");
                ExitCode::FAILURE
            }
        };
    }

    if let Some(record) = &args.engine_unit {
        return engine_unit(record, args.log_format);
    }

    if args.check_config {
        return match vllamad::config::load(&source, std::env::vars()) {
            Ok(loaded) => match toml::to_string(&loaded.config) {
                Ok(text) => {
                    for warning in &loaded.warnings {
                        eprintln!("vllamad: warning: {warning}");
                    }
                    print!("{text}");
                    // What each model's engine will be started with, and why.
                    for (name, profile) in vllamad::models::profiles(&loaded.config) {
                        match profile {
                            Ok(p) => println!("# models.\"{name}\": {p}"),
                            Err(e) => println!("# models.\"{name}\": {e}"),
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vllamad: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("vllamad: {e}");
                ExitCode::FAILURE
            }
        };
    }

    // SAFETY: no other thread exists yet; the runtime is built below.
    let activated = match unsafe { ActivatedFds::take_from_env() } {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("vllamad: {e}");
            return ExitCode::FAILURE;
        }
    };

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // tokio reads TOKIO_WORKER_THREADS itself when it is set.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(vllamad::server::worker_threads(
            std::thread::available_parallelism().map_or(1, usize::from),
        ));
    }
    let runtime = match builder.enable_all().thread_name("vllamad").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vllamad: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = vllamad::server::Options {
        config: source,
        log_format: args.log_format,
        activated,
    };
    let result = runtime.block_on(vllamad::server::run(options));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    // The last batched log lines (the access lines of the last requests) before exiting.
    vllamad::log_writer::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Before logging is up (bad configuration) stderr is the only channel; after, the
            // error was logged as well. systemd puts stderr in the journal either way.
            tracing::error!(error = %e, "vllamad failed");
            eprintln!("vllamad: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `vllamad --engine-unit RECORD`: an engine unit's main process.
fn engine_unit(record: &std::path::Path, format: Option<vllamad::config::LogFormat>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vllamad: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let format = format.unwrap_or(vllamad::config::LogFormat::Auto);
        let _log = match vllamad::logging::init(format, "info") {
            Ok(log) => log,
            Err(e) => {
                eprintln!("vllamad: {e}");
                return ExitCode::FAILURE;
            }
        };
        match vllamad::engine::unit_main::run(record).await {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                tracing::error!(error = %e, "the engine unit cannot run");
                ExitCode::FAILURE
            }
        }
    })
}
