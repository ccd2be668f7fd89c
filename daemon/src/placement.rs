//! GPU placement arithmetic, pure so it can be tested exhaustively: how much memory a model
//! needs per GPU, which GPUs have room, and the `--gpu-memory-utilization` fraction to pass.
//!
//! The free memory of a GPU is the smaller of what NVML measures and what vllamad has not
//! already promised to its own engines, so engines still loading (not yet visible in NVML)
//! are counted: the fractions given out on one GPU never sum past its budget.

use crate::config::GpuMemory;
use crate::gpu::GpuInfo;
use crate::units::ByteSize;

/// Memory promised to one engine on one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    pub gpu: u32,
    pub bytes: u64,
}

/// Where an engine goes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    pub gpus: Vec<u32>,
    /// What the engine may take on each GPU: `fraction` × that GPU's total.
    pub reservations: Vec<Reservation>,
    /// `--gpu-memory-utilization`: a fraction of each GPU's total memory.
    pub fraction: f64,
    /// The smallest total memory of those GPUs, and the first one's name: what vLLM sizes
    /// its defaults by.
    pub device_total: u64,
    pub device_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not enough GPU memory: need {} on each of {gpus} GPU(s), {} free at most; free some (vllamactl ps, vllamactl unload MODEL; nvidia-smi shows other programs) or lower the model's gpu_memory or max_model_len", ByteSize(*need), ByteSize(*best_free))]
pub struct Shortfall {
    pub need: u64,
    pub gpus: u32,
    pub best_free: u64,
}

/// Memory per GPU for a model whose weights take `weights` bytes on disk.
pub fn need_per_gpu(memory: GpuMemory, gpu_total: u64, weights: u64, tensor_parallel: u32) -> u64 {
    let tp = u64::from(tensor_parallel.max(1));
    match memory {
        GpuMemory::Fraction(f) => (gpu_total as f64 * f) as u64,
        GpuMemory::Bytes(b) => b.0,
        GpuMemory::Auto => {
            let estimate = weights / tp * 6 / 5 + ByteSize::GIB;
            estimate.min(gpu_total / 10 * 9)
        }
    }
}

/// What is free on `gpu` for a new engine.
pub fn free_on(gpu: &GpuInfo, reserved: &[Reservation], keep_free: u64) -> u64 {
    let promised: u64 = reserved
        .iter()
        .filter(|r| r.gpu == gpu.index)
        .map(|r| r.bytes)
        .sum();
    let unpromised = gpu.total_bytes.saturating_sub(promised);
    gpu.free_bytes.min(unpromised).saturating_sub(keep_free)
}

/// Chooses `tensor_parallel` GPUs with the most room, each able to hold `need` bytes once
/// rounded up to vLLM's whole-percent fraction of its total.
pub fn place(
    gpus: &[GpuInfo],
    reserved: &[Reservation],
    keep_free: u64,
    need: u64,
    tensor_parallel: u32,
) -> Result<Placement, Shortfall> {
    let tp = tensor_parallel.max(1) as usize;
    let mut room: Vec<(&GpuInfo, u64)> = gpus
        .iter()
        .map(|g| (g, free_on(g, reserved, keep_free)))
        .collect();
    room.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.index.cmp(&b.0.index)));
    let shortfall = |best_free| Shortfall {
        need,
        gpus: tensor_parallel.max(1),
        best_free,
    };
    let chosen = room.get(..tp).unwrap_or(&room);
    let best_free = chosen.last().map_or(0, |c| c.1);
    if chosen.len() < tp {
        return Err(shortfall(best_free));
    }
    // One fraction for all of them (vLLM applies it on each GPU), from the smallest total.
    let total = chosen.iter().map(|c| c.0.total_bytes).min().unwrap_or(0);
    if total == 0 {
        return Err(shortfall(best_free));
    }
    let percent = (u128::from(need) * 100).div_ceil(u128::from(total)).max(1);
    if percent > 99 {
        return Err(shortfall(best_free));
    }
    let mut reservations = Vec::with_capacity(tp);
    for (gpu, free) in chosen {
        let bytes = (u128::from(gpu.total_bytes) * percent / 100) as u64;
        if bytes > *free {
            return Err(shortfall(best_free));
        }
        reservations.push(Reservation {
            gpu: gpu.index,
            bytes,
        });
    }
    reservations.sort_by_key(|r| r.gpu);
    Ok(Placement {
        gpus: reservations.iter().map(|r| r.gpu).collect(),
        reservations,
        fraction: percent as f64 / 100.0,
        device_total: total,
        device_name: chosen.first().map(|c| c.0.name.clone()).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = ByteSize::GIB;

    fn gpu(index: u32, total: u64, free: u64) -> GpuInfo {
        GpuInfo {
            index,
            name: "t".into(),
            total_bytes: total,
            free_bytes: free,
            used_bytes: total - free,
            utilization_percent: None,
            temperature_celsius: None,
            power_milliwatts: None,
        }
    }

    #[test]
    fn needs() {
        assert_eq!(
            need_per_gpu(GpuMemory::Fraction(0.5), 80 * GIB, 0, 1),
            40 * GIB
        );
        assert_eq!(
            need_per_gpu(GpuMemory::Bytes(ByteSize(8 * GIB)), 80 * GIB, 0, 1),
            8 * GIB
        );
        // 15 GiB of weights: 18 GiB + 1 GiB of KV cache.
        assert_eq!(
            need_per_gpu(GpuMemory::Auto, 80 * GIB, 15 * GIB, 1),
            19 * GIB
        );
        // Split over two GPUs.
        assert_eq!(
            need_per_gpu(GpuMemory::Auto, 80 * GIB, 16 * GIB, 2),
            8 * GIB * 6 / 5 + GIB
        );
        // Never more than 90% of a GPU.
        assert_eq!(
            need_per_gpu(GpuMemory::Auto, 24 * GIB, 100 * GIB, 1),
            24 * GIB / 10 * 9
        );
    }

    #[test]
    fn picks_the_roomiest_gpus_and_rounds_the_fraction_up() {
        let gpus = [gpu(0, 80 * GIB, 10 * GIB), gpu(1, 80 * GIB, 70 * GIB)];
        let p = place(&gpus, &[], 0, 20 * GIB, 1).unwrap();
        assert_eq!(p.gpus, [1]);
        assert_eq!(p.fraction, 0.25);
        let p = place(&gpus, &[], 0, 20 * GIB + 1, 1).unwrap();
        assert_eq!(p.fraction, 0.26, "rounded up, never down");
        assert!(p.reservations[0].bytes > 20 * GIB);
    }

    #[test]
    fn reservations_count_before_nvml_sees_them() {
        // NVML still says 80 GiB free, but 50 GiB are promised to an engine that is loading.
        let gpus = [gpu(0, 80 * GIB, 80 * GIB)];
        let reserved = [Reservation {
            gpu: 0,
            bytes: 50 * GIB,
        }];
        assert_eq!(free_on(&gpus[0], &reserved, 0), 30 * GIB);
        assert!(place(&gpus, &reserved, 0, 40 * GIB, 1).is_err());
        // 30 GiB would round up to 38% = 30.4 GiB: too much. 29 GiB → 37% = 29.6 GiB fits.
        assert!(place(&gpus, &reserved, 0, 30 * GIB, 1).is_err());
        assert!(place(&gpus, &reserved, 0, 29 * GIB, 1).is_ok());
    }

    #[test]
    fn fractions_never_sum_over_the_budget() {
        // Place engines of assorted sizes until nothing fits, as the scheduler does.
        let keep_free = GIB / 2;
        for sizes in [
            [7u64, 13, 29, 3],
            [40, 40, 1, 1],
            [5, 5, 5, 5],
            [33, 33, 33, 33],
        ] {
            let gpus = [gpu(0, 80 * GIB, 80 * GIB), gpu(1, 48 * GIB, 48 * GIB)];
            let mut reserved: Vec<Reservation> = Vec::new();
            for round in 0..6 {
                for s in sizes {
                    if let Ok(p) = place(&gpus, &reserved, keep_free, s * GIB, 1 + (round % 2)) {
                        reserved.extend(p.reservations);
                    }
                }
            }
            for g in &gpus {
                let promised: u64 = reserved
                    .iter()
                    .filter(|r| r.gpu == g.index)
                    .map(|r| r.bytes)
                    .sum();
                assert!(
                    promised + keep_free <= g.total_bytes,
                    "{sizes:?}: GPU {} over budget",
                    g.index
                );
            }
        }
    }

    #[test]
    fn tensor_parallel_needs_that_many_gpus() {
        let gpus = [gpu(0, 80 * GIB, 80 * GIB), gpu(1, 80 * GIB, 5 * GIB)];
        let err = place(&gpus, &[], 0, 10 * GIB, 2).unwrap_err();
        assert_eq!(err.best_free, 5 * GIB);
        assert!(
            err.to_string().contains("need 10GiB on each of 2 GPU(s)"),
            "{err}"
        );
        assert!(place(&gpus, &[], 0, 10 * GIB, 3).is_err());
        // 4 GiB is exactly 5% of 80 GiB: fits in the 5 GiB left on GPU 1.
        assert_eq!(place(&gpus, &[], 0, 4 * GIB, 2).unwrap().gpus, [0, 1]);
    }

    #[test]
    fn no_gpu_no_placement() {
        assert!(place(&[], &[], 0, 1, 1).is_err());
    }
}
