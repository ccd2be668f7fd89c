//! The engine seam: what differs between kinds of engine. The supervisor drives any kind the
//! same way (start, readiness, serving, crash and back-off, stop); a kind says how one run is
//! started and ended, how its readiness is asked, and whether it sleeps. Two kinds today: a
//! local `vllm serve` process ([`super::vllm`]) and an engine that already runs elsewhere
//! ([`super::remote`]). A new kind is one module implementing [`EngineKind`] plus its
//! configuration.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::client::EngineClient;
use super::process::Output;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What one readiness question got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Ready,
    /// Not (yet) ready: why, for the error when the wait ends.
    NotYet(String),
    /// Will not become ready by waiting (a refused token, a model it does not serve): the
    /// start fails at once with this.
    Refused(String),
}

/// One kind of engine.
pub trait EngineKind: Send + Sync + std::fmt::Debug {
    /// `vllm`, `remote`: shown in `vllamactl ps`, the admin API and logs.
    fn name(&self) -> &'static str;

    /// Starts one run: spawns a process (or finds the one an earlier vllamad left), or begins
    /// watching an engine that runs elsewhere.
    fn start<'a>(
        &'a self,
        client: &'a EngineClient,
        output: &'a Output,
    ) -> BoxFuture<'a, Result<Box<dyn Run>, String>>;

    /// Asks once whether the engine is ready, within `timeout`.
    fn probe<'a>(&'a self, client: &'a EngineClient, timeout: Duration) -> BoxFuture<'a, Probe>;

    /// The requests that put it to sleep and wake it, when it has them.
    fn sleep_paths(&self) -> Option<(&'static str, &'static str)> {
        None
    }

    /// Whether it runs on this machine: GPU and host memory accounting, `engine.max_loaded`,
    /// and making room count only local engines.
    fn local(&self) -> bool;

    /// Whether an engine found running (adopted) is asleep.
    fn asleep<'a>(&'a self, _client: &'a EngineClient) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }

    /// The model name the engine answers to, when it said so itself (a remote's only model);
    /// `None`: the name it was configured with. Shared: every request to a remote asks it.
    fn served_name(&self) -> Option<Arc<str>> {
        None
    }
}

/// How a run ended: `exited` (`exit status: 1`), `stopped answering` (`connection refused`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub verb: &'static str,
    pub detail: String,
}

/// One run of an engine, owned by its supervisor.
pub trait Run: Send {
    /// The leader process, when the run is a local process.
    fn pid(&self) -> Option<u32>;

    /// Resolves when the run ends without being asked to (cancel-safe).
    fn ended(&mut self) -> BoxFuture<'_, Ended>;

    /// Ends it: within `grace`, then by force. True when it ended within the grace.
    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, bool>;

    /// Whether it keeps running when vllamad lets go of it without stopping it (an engine
    /// unit, for the next vllamad); else letting go ends it.
    fn survives(&self) -> bool {
        false
    }

    /// Whether it was found running rather than started.
    fn adopted(&self) -> bool {
        false
    }
}
