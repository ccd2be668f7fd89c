//! Where a local engine's processes run: the launch seam under the vLLM kind. Two hosts:
//! [`Children`] (child processes of vllamad, gone with it: development, containers, no
//! systemd) and [`super::units::Units`] (a systemd unit per engine, which outlives a restart
//! of vllamad and is found again by the next one). The supervisor drives both through the
//! same [`Run`]; which one is chosen once, at start ([`choose`]).

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::kind::{BoxFuture, Ended, Run};
use super::process::{EngineProcess, Launch, Output};
use crate::placement::Placement;

/// One host of local engines.
pub trait Host: Send + Sync + std::fmt::Debug {
    /// `process` or `systemd`: in logs and `vllamactl ps`.
    fn name(&self) -> &'static str;

    /// The id of a model's engine (its socket's and folder's name). `n` counts engines;
    /// a host whose engines a later vllamad finds again names them by the model alone.
    fn engine_id(&self, model: &str, slug: &str, n: u64) -> String;

    /// Starts the engine (or finds it already running, started with the same launch).
    fn launch<'a>(
        &'a self,
        launch: &'a Launch,
        output: &'a Output,
    ) -> BoxFuture<'a, Result<Box<dyn Run>, String>>;

    /// The engines an earlier vllamad left running. Blocking.
    fn survivors(&self) -> Vec<Survivor> {
        Vec::new()
    }

    /// Notes when an engine's keep_alive ends, for the next vllamad. Blocking.
    fn remember(&self, _id: &str, _until: Option<SystemTime>) {}

    /// At shutdown: whether its engines are left running for the next vllamad (engines that
    /// outlive it, and vllamad is being restarted) rather than stopped. Blocking.
    fn let_go_at_shutdown(&self) -> bool {
        false
    }

    /// Stops an engine a survivor named and forgets it (its model is no longer served).
    fn discard<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// An engine left running by an earlier vllamad.
#[derive(Debug, Clone, PartialEq)]
pub struct Survivor {
    pub id: String,
    /// The model's canonical name.
    pub model: String,
    /// Where it was placed on the GPUs (`None`: on the CPU).
    pub placement: Option<Placement>,
    /// When its keep_alive ends (`None`: not recorded, or forever).
    pub keep_alive_until: Option<SystemTime>,
}

/// Engines as child processes of vllamad, each in its own process group.
#[derive(Debug, Default)]
pub struct Children;

impl Host for Children {
    fn name(&self) -> &'static str {
        "process"
    }

    fn engine_id(&self, _model: &str, slug: &str, n: u64) -> String {
        // An engine may start while the one it replaces still stops: never the same name.
        format!("{slug}-{n}")
    }

    fn launch<'a>(
        &'a self,
        launch: &'a Launch,
        output: &'a Output,
    ) -> BoxFuture<'a, Result<Box<dyn Run>, String>> {
        // Spawned here, on a runtime worker: PR_SET_PDEATHSIG follows the spawning thread.
        let spawned = EngineProcess::spawn(launch, output)
            .map(|process| {
                Box::new(Child {
                    process,
                    tmpdir: launch.tmpdir.clone(),
                }) as Box<dyn Run>
            })
            .map_err(|e| super::vllm::spawn_error(&e));
        Box::pin(async move { spawned })
    }
}

/// One engine process.
struct Child {
    process: EngineProcess,
    tmpdir: std::path::PathBuf,
}

impl Run for Child {
    fn pid(&self) -> Option<u32> {
        Some(self.process.pid())
    }

    fn ended(&mut self) -> BoxFuture<'_, Ended> {
        Box::pin(async move {
            let status = self.process.wait().await;
            let _ = std::fs::remove_dir_all(&self.tmpdir);
            Ended {
                verb: "exited",
                detail: status.to_string(),
            }
        })
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, bool> {
        Box::pin(self.process.stop(grace))
    }
}

/// The host in force: units when vllamad runs under systemd with the engine template
/// installed (or `engine.launch = "systemd"`), else children. Blocking (looks for the unit).
pub fn choose(mode: crate::config::LaunchMode, runtime_dir: &Path) -> Box<dyn Host> {
    use crate::config::LaunchMode;
    let units = || Box::new(super::units::Units::new(runtime_dir)) as Box<dyn Host>;
    match mode {
        LaunchMode::Process => Box::new(Children),
        LaunchMode::Systemd => units(),
        LaunchMode::Auto if super::units::available() => units(),
        LaunchMode::Auto => Box::new(Children),
    }
}
