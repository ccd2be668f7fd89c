//! The sampling task: every `metrics.sample_interval`, [`crate::metrics::sampler::sample`]
//! on a blocking thread for the scheduler's engines, the reading stored for scrapes, and
//! systemd's `STATUS=` refreshed when the line it shows moved. Above the daemon's state.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::Daemon;

/// Samples until `shutdown`. Refreshes `STATUS=` when the GPU memory figure it shows moved.
pub fn spawn(daemon: &Arc<Daemon>, tracker: &TaskTracker, shutdown: CancellationToken) {
    let daemon = daemon.clone();
    tracker.spawn(async move {
        let mut shown = daemon.status_line();
        loop {
            let engines: Vec<(String, u32)> = daemon
                .scheduler
                .engines()
                .into_iter()
                .filter_map(|e| Some((e.model, e.pid?)))
                .collect();
            let probe = daemon.scheduler.probe();
            let reading = tokio::task::spawn_blocking(move || {
                crate::metrics::process::trim_heap();
                crate::metrics::sampler::sample(&*probe, &engines)
            })
            .await;
            if let Ok(samples) = reading {
                daemon.metrics.store_samples(samples);
                let line = daemon.status_line();
                if line != shown {
                    daemon.notifier.status(&line);
                    shown = line;
                }
            }
            let every = daemon.config().config.metrics.sample_interval.0;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
}
