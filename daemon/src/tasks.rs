//! Background tasks started by requests (response streams, progress streams): each on a
//! `TaskTracker`, so shutdown waits for it, and watched, so a panic in one is logged with
//! what it was doing and for which request instead of vanishing with the task.

use std::future::Future;

use tokio_util::task::TaskTracker;
use tracing::Instrument;

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
