//! GPUs behind a trait: the real probe reads NVML (nvml-wrapper, which loads
//! libnvidia-ml.so at run time, so the daemon runs and builds without the driver); without
//! a driver it reports no GPU; tests use [`FakeGpus`]. NVML calls block for milliseconds:
//! callers run them off the request path (`spawn_blocking`).

use std::sync::Mutex;

/// One GPU as the probe saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GpuInfo {
    /// NVML index (= CUDA index with CUDA_DEVICE_ORDER=PCI_BUS_ID).
    pub index: u32,
    pub name: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub utilization_percent: Option<u32>,
    pub temperature_celsius: Option<u32>,
    pub power_milliwatts: Option<u32>,
}

/// The NVIDIA driver, as NVML reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverInfo {
    pub version: String,
    /// The newest CUDA version the driver supports, (major, minor).
    pub cuda: (u32, u32),
}

pub trait GpuProbe: Send + Sync + std::fmt::Debug {
    /// Every GPU; empty without a GPU or driver.
    fn gpus(&self) -> Vec<GpuInfo>;
    /// The driver, or why there is none (NVML missing, no device).
    fn driver(&self) -> Result<DriverInfo, String>;
    /// GPU memory used by these processes, summed over all GPUs.
    fn process_memory(&self, pids: &[u32]) -> u64;
}

/// A machine without (usable) GPUs, and why.
#[derive(Debug, Default)]
pub struct NoGpu {
    pub reason: String,
}

impl GpuProbe for NoGpu {
    fn gpus(&self) -> Vec<GpuInfo> {
        Vec::new()
    }
    fn driver(&self) -> Result<DriverInfo, String> {
        Err(if self.reason.is_empty() {
            "no NVIDIA driver".into()
        } else {
            self.reason.clone()
        })
    }
    fn process_memory(&self, _: &[u32]) -> u64 {
        0
    }
}

/// NVML, through nvml-wrapper.
pub struct Nvml(nvml_wrapper::Nvml);

impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nvml")
    }
}

/// The real probe, or [`NoGpu`] where NVML cannot be loaded (no driver).
pub fn detect() -> Box<dyn GpuProbe> {
    match nvml_wrapper::Nvml::init() {
        Ok(nvml) => {
            let probe = Nvml(nvml);
            let gpus = probe.gpus();
            tracing::info!(count = gpus.len(), "NVML: GPUs found");
            for g in &gpus {
                tracing::info!(index = g.index, name = %g.name, total_bytes = g.total_bytes, free_bytes = g.free_bytes, "GPU");
            }
            Box::new(probe)
        }
        Err(e) => {
            tracing::info!(reason = %e, "no NVIDIA GPU (NVML unavailable): engines run without GPU placement");
            Box::new(NoGpu {
                reason: format!("NVML is unavailable ({e})"),
            })
        }
    }
}

impl GpuProbe for Nvml {
    fn driver(&self) -> Result<DriverInfo, String> {
        let version = self.0.sys_driver_version().map_err(|e| e.to_string())?;
        let cuda = self
            .0
            .sys_cuda_driver_version()
            .map_err(|e| e.to_string())?;
        // NVML encodes CUDA 12.4 as 12040.
        let cuda = (cuda / 1000, (cuda % 1000) / 10);
        Ok(DriverInfo {
            version,
            cuda: (cuda.0.max(0) as u32, cuda.1.max(0) as u32),
        })
    }

    fn gpus(&self) -> Vec<GpuInfo> {
        let count = match self.0.device_count() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "NVML device count failed");
                return Vec::new();
            }
        };
        (0..count)
            .filter_map(|index| {
                let dev = self.0.device_by_index(index).ok()?;
                let mem = dev.memory_info().ok()?;
                Some(GpuInfo {
                    index,
                    name: dev.name().unwrap_or_default(),
                    total_bytes: mem.total,
                    free_bytes: mem.free,
                    used_bytes: mem.used,
                    utilization_percent: dev.utilization_rates().ok().map(|u| u.gpu),
                    temperature_celsius: dev
                        .temperature(nvml_wrapper::enum_wrappers::device::TemperatureSensor::Gpu)
                        .ok(),
                    power_milliwatts: dev.power_usage().ok(),
                })
            })
            .collect()
    }

    fn process_memory(&self, pids: &[u32]) -> u64 {
        let Ok(count) = self.0.device_count() else {
            return 0;
        };
        let mut total = 0;
        for index in 0..count {
            let Ok(dev) = self.0.device_by_index(index) else {
                continue;
            };
            for procs in [
                dev.running_compute_processes(),
                dev.running_graphics_processes(),
            ] {
                for p in procs.unwrap_or_default() {
                    if pids.contains(&p.pid) {
                        if let nvml_wrapper::enums::device::UsedGpuMemory::Used(bytes) =
                            p.used_gpu_memory
                        {
                            total += bytes;
                        }
                    }
                }
            }
        }
        total
    }
}

/// GPUs for tests: fixed totals, free memory set by the test.
#[derive(Debug, Default)]
pub struct FakeGpus {
    gpus: Mutex<Vec<GpuInfo>>,
    /// The driver's CUDA version (default 12.4).
    pub cuda: Option<(u32, u32)>,
}

impl FakeGpus {
    /// `count` GPUs of `total_bytes` each, all free.
    pub fn new(count: u32, total_bytes: u64) -> Self {
        let gpus = (0..count)
            .map(|index| GpuInfo {
                index,
                name: "Fake GPU".into(),
                total_bytes,
                free_bytes: total_bytes,
                used_bytes: 0,
                utilization_percent: Some(0),
                temperature_celsius: Some(40),
                power_milliwatts: Some(50_000),
            })
            .collect();
        FakeGpus {
            gpus: Mutex::new(gpus),
            cuda: Some((12, 4)),
        }
    }

    pub fn set_free(&self, index: u32, free_bytes: u64) {
        let mut gpus = self.gpus.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = gpus.iter_mut().find(|g| g.index == index) {
            g.free_bytes = free_bytes.min(g.total_bytes);
            g.used_bytes = g.total_bytes - g.free_bytes;
        }
    }
}

impl GpuProbe for FakeGpus {
    fn driver(&self) -> Result<DriverInfo, String> {
        match self.cuda {
            Some(cuda) => Ok(DriverInfo {
                version: "550.0-fake".into(),
                cuda,
            }),
            None => Err("fake: no driver".into()),
        }
    }

    fn gpus(&self) -> Vec<GpuInfo> {
        self.gpus.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn process_memory(&self, _: &[u32]) -> u64 {
        0
    }
}
