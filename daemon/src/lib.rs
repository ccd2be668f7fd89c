//! vllamad: a systemd-native daemon that serves the Ollama API (and the OpenAI API) and runs
//! the models on vLLM engines it supervises. `main.rs` only parses arguments and calls
//! [`server::run`]; everything else lives here, one module per concern (see
//! docs/ARCHITECTURE.md).

// Nothing a request, an engine event or a signal can reach may panic: no unwrap/expect, no
// string slicing by byte offsets, no panic!/todo!/unimplemented! outside tests.
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

pub mod access_line;
pub mod active_config;
pub mod admin;
pub mod aliases;
pub mod api;
pub mod auth;
pub mod cli;
pub mod clients;
pub mod config;
pub mod conn_threads;
pub mod connections;
pub mod cors;
pub mod doctor;
pub mod engine;
pub mod fair;
pub mod forwarded;
#[cfg(test)]
mod fuzz;
pub mod gpu;
pub mod h1;
pub mod health;
pub mod host_memory;
pub mod http;
pub mod install;
pub mod ip_text;
pub mod keys;
pub mod limits;
pub mod lines;
pub mod listeners;
pub mod log_fields;
pub mod log_writer;
pub mod logging;
pub mod metrics;
pub mod model_info;
pub mod models;
pub mod names;
pub mod needle;
pub mod notify;
pub mod observe;
pub mod ollama;
pub mod openai;
pub mod placement;
pub mod reload;
pub mod request_id;
pub mod response_ids;
pub mod sampling;
pub mod scheduler;
pub mod scrape;
pub mod server;
pub mod sse;
pub mod stall;
pub mod state;
pub mod store;
pub mod store_ops;
pub mod tasks;
pub mod units;
pub mod view;

/// The daemon's version, reported by `/api/version` and the admin API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
