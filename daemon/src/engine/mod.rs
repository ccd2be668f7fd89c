//! Engines: `vllm serve` processes, each owned by one supervisor task.

pub mod client;
pub mod limits;
pub mod parsers;
pub mod process;
pub mod profile;
mod supervisor;

pub use client::{Endpoint, EngineClient};
pub use process::Launch;
pub use supervisor::{
    Engine, EngineError, EngineEvent, EngineObserver, EngineSpec, EngineStatus, ObserverFn, Phase,
};
