//! Background tasks started by requests (response streams, progress streams): each on a
//! `TaskTracker`, so shutdown waits for it, and watched, so a panic in one is logged with
//! what it was doing and for which request instead of vanishing with the task. And
//! [`Background`]: where the daemon's own tasks run.

use std::future::Future;

use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// A tracker whose tasks run on the runtime that made it, whichever thread spawns them: an
/// engine started by a request on a connection thread ([`crate::conn_threads`]) is
/// supervised on the daemon's main runtime, not tied to that thread's. Made outside a
/// runtime, it spawns on the spawner's.
#[derive(Debug, Clone)]
pub struct Background {
    tracker: TaskTracker,
    runtime: Option<Handle>,
}

impl Background {
    /// `tracker`'s tasks, on the current runtime.
    pub fn here(tracker: TaskTracker) -> Background {
        Background {
            tracker,
            runtime: Handle::try_current().ok(),
        }
    }

    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.runtime {
            Some(runtime) => {
                self.tracker.spawn_on(fut, runtime);
            }
            None => {
                self.tracker.spawn(fut);
            }
        }
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }
}

/// Spawns `fut` on `tracker` in the current span; if it panics, an error naming `what` is
/// logged in that span (with the request id, when a request started it).
pub fn spawn<F>(tracker: &TaskTracker, what: &'static str, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let span = tracing::Span::current();
    let handle = tracker.spawn(fut.instrument(span.clone()));
    tracker.spawn(async move {
        if let Err(e) = handle.await {
            if e.is_panic() {
                let why = panic_message(e.into_panic());
                tracing::error!(parent: &span, task = what, panic = %why, "a background task panicked; its client got a cut response");
            }
        }
    });
}

/// The message of a panic's payload, when it has one.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task spawned from a connection thread runs on the runtime that made the
    /// `Background`, not on that thread's.
    #[test]
    fn background_tasks_run_on_the_runtime_that_made_them() {
        let main = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("the-main-runtime")
            .enable_all()
            .build()
            .unwrap();
        let tracker = TaskTracker::new();
        let background = main.block_on(async { Background::here(tracker.clone()) });
        let threads = crate::conn_threads::ConnThreads::start(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        threads.spawn(&TaskTracker::new(), async move {
            background.spawn(async move {
                let _ = tx.send(std::thread::current().name().map(str::to_owned));
            });
        });
        let ran_on = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(ran_on.as_deref(), Some("the-main-runtime"));
        tracker.close();
        main.block_on(tracker.wait());
        threads.stop();
    }

    #[tokio::test]
    async fn a_panic_is_caught_and_the_tracker_still_closes() {
        let tracker = TaskTracker::new();
        spawn(&tracker, "test", async { panic!("boom") });
        let (tx, rx) = tokio::sync::oneshot::channel();
        spawn(&tracker, "test", async move {
            let _ = tx.send(7);
        });
        tracker.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait())
            .await
            .expect("the tracker empties");
        assert_eq!(rx.await.ok(), Some(7));
        assert_eq!(panic_message(Box::new("x")), "x");
        assert_eq!(panic_message(Box::new(String::from("y"))), "y");
    }
}
