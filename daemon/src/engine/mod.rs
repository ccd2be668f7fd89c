//! Engines: each owned by one supervisor task, reached through the engine seam ([`kind`]):
//! a local `vllm serve` process ([`vllm`]) or an engine that runs elsewhere ([`remote`]). A
//! local engine's processes run on a [`host`]: children of vllamad, or systemd units of
//! their own ([`units`]) that outlive a restart of vllamad.

pub mod client;
pub mod host;
pub mod kind;
pub mod limits;
pub mod parsers;
mod pool;
pub mod process;
pub mod profile;
pub mod remote;
mod supervisor;
pub mod unit_main;
pub mod units;
mod unix;
pub mod vllm;
pub(crate) mod wire;

pub use client::{Endpoint, EngineClient};
pub use kind::EngineKind;
pub use pool::EngineBody;
pub use process::Launch;
pub use supervisor::{
    Engine, EngineError, EngineEvent, EngineObserver, EngineSpec, EngineStatus, ObserverFn, Phase,
};
