//! The sampler: every `metrics.sample_interval`, reads the GPUs (NVML) and each engine's
//! memory (its process group's RSS, and GPU memory per NVML) on a blocking thread, and
//! stores the reading for scrapes, `STATUS=` and `vllamactl status`.

use crate::gpu::{GpuInfo, GpuProbe};

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
