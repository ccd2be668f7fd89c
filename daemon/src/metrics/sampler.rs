//! The sampler: every `metrics.sample_interval`, reads the GPUs (NVML) and each engine's
//! memory (its process group's RSS, and GPU memory per NVML) on a blocking thread, and
//! stores the reading for scrapes, `STATUS=` and `vllamactl status`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gpu::{GpuInfo, GpuProbe};
use crate::state::Daemon;

/// One engine's memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineSample {
    pub model: String,
    pub resident_bytes: u64,
    pub gpu_bytes: u64,
}

/// The latest reading.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub gpus: Vec<GpuInfo>,
    pub engines: Vec<EngineSample>,
}

/// Reads everything once (blocking: NVML and /proc).
pub fn sample(probe: &dyn GpuProbe, engines: &[(String, u32)]) -> Samples {
    let gpus = probe.gpus();
    let engines = engines
        .iter()
        .map(|(model, pid)| {
            let pids = crate::engine::process::group_pids(*pid as i32);
            EngineSample {
                model: model.clone(),
                resident_bytes: pids
                    .iter()
                    .map(|p| super::process::resident_bytes(*p))
                    .sum(),
                gpu_bytes: if gpus.is_empty() {
                    0
                } else {
                    probe.process_memory(&pids)
                },
            }
        })
        .collect();
    Samples { gpus, engines }
}

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
                super::process::trim_heap();
                sample(&*probe, &engines)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{FakeGpus, NoGpu};

    #[test]
    fn samples_engines_and_gpus() {
        use std::os::unix::process::CommandExt;
        // An "engine": a process group of its own, like the supervisor makes.
        let mut engine = std::process::Command::new("sleep")
            .arg("5")
            .process_group(0)
            .spawn()
            .unwrap();
        let s = sample(&NoGpu::default(), &[("m".into(), engine.id())]);
        let _ = engine.kill();
        let _ = engine.wait();
        assert!(s.gpus.is_empty());
        assert_eq!(s.engines.len(), 1);
        assert_eq!(s.engines[0].model, "m");
        assert!(s.engines[0].resident_bytes > 0, "{:?}", s.engines[0]);
        assert_eq!(s.engines[0].gpu_bytes, 0, "no GPU, no NVML question");
        // A group that is gone reads as nothing, not as an error.
        let gone = sample(&NoGpu::default(), &[("m".into(), engine.id())]);
        assert_eq!(gone.engines[0].resident_bytes, 0);
        let s = sample(&FakeGpus::new(2, 1 << 30), &[]);
        assert_eq!(s.gpus.len(), 2);
    }
}
