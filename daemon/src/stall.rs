//! Stalled streams: an engine that sends nothing for `engine.stall_timeout` in the middle of
//! a stream (a hung EngineCore behind a live API server is a known vLLM failure) fails that
//! stream with a clear error, and the engine is asked `/health`: one that does not answer is
//! killed and restarted like a crashed one.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::engine::Engine;

/// How long `/health` may take before a stalled engine is judged hung (at most the stall
/// timeout itself).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// A stream's watch on its engine.
#[derive(Debug, Clone)]
pub struct Stall {
    pub after: Duration,
    engine: Arc<Engine>,
    tasks: TaskTracker,
}

impl Stall {
    pub fn new(after: Duration, engine: Arc<Engine>, tasks: TaskTracker) -> Stall {
        Stall {
            after,
            engine,
            tasks,
        }
    }

    /// The stream got nothing for `after`: checks the engine in the background and returns
    /// the error the client gets.
    pub fn fired(&self) -> String {
        let model = self.engine.spec.model.clone();
        let after = self.after;
        tracing::error!(model = %model, after = ?after, "the engine sent nothing in the middle of a stream (engine.stall_timeout): failing the stream, checking the engine");
        let engine = self.engine.clone();
        crate::tasks::spawn(&self.tasks, "stall check", async move {
            if engine.client().healthy(HEALTH_TIMEOUT.min(after)).await {
                tracing::warn!(model = %engine.spec.model, "the stalled engine answers /health: left running");
            } else {
                engine.hung(format!(
                    "a stream got nothing for {} and /health did not answer within {}",
                    humantime::format_duration(after),
                    humantime::format_duration(HEALTH_TIMEOUT.min(after))
                ));
            }
        });
        format!(
            "the engine for {model} sent nothing for {} in the middle of the response (engine.stall_timeout)",
            humantime::format_duration(after)
        )
    }
}
