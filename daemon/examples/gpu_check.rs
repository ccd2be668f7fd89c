//! Checks vllamad's GPU probe on a real NVIDIA GPU, in one command (tests/gpu/check.sh):
//! NVML device count and memory, and GPU memory attributed to a process group: a child
//! process group whose leader starts a PyTorch grandchild that allocates 1 GiB on GPU 0, as
//! a vLLM engine's EngineCore does. Prints the readings and a verdict; exits 1 on failure.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use vllamad::engine::process::group_pids;
use vllamad::gpu::{self, GpuProbe};

const GIB: u64 = 1 << 30;

fn main() -> ExitCode {
    let probe: Box<dyn GpuProbe> = gpu::detect();
    let gpus = probe.gpus();
    println!("GPUs: {}", gpus.len());
    for g in &gpus {
        println!(
            "  GPU {}: {} total {:.1} GiB free {:.1} GiB used {:.1} GiB util {:?}% temp {:?}C power {:?}mW",
            g.index,
            g.name,
            g.total_bytes as f64 / GIB as f64,
            g.free_bytes as f64 / GIB as f64,
            g.used_bytes as f64 / GIB as f64,
            g.utilization_percent,
            g.temperature_celsius,
            g.power_milliwatts
        );
    }
    if gpus.is_empty() {
        println!("VERDICT: FAIL: NVML found no GPU");
        return ExitCode::FAILURE;
    }
    let free_before = gpus[0].free_bytes;

    // A process group like an engine's: a shell leader whose python child holds the memory.
    let script =
        "import torch, time; x = torch.empty(1 << 30, dtype=torch.uint8, device='cuda:0'); \
                  torch.cuda.synchronize(); print('allocated', flush=True); time.sleep(60)";
    let mut leader = match Command::new("sh")
        .args(["-c", &format!("python3 -c \"{script}\" & wait")])
        .env("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        .env("CUDA_VISIBLE_DEVICES", "0")
        .process_group(0)
        .stdout(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            println!("VERDICT: FAIL: cannot start the allocating process: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pgid = leader.id() as i32;
    let started = Instant::now();
    let mut attributed = 0;
    while started.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(500));
        let pids = group_pids(pgid);
        attributed = probe.process_memory(&pids);
        if attributed >= GIB {
            break;
        }
    }
    let free_during = probe.gpus().first().map_or(0, |g| g.free_bytes);
    let pids = group_pids(pgid);
    // SAFETY: kill has no memory-safety preconditions; pgid is our child's own group (> 1).
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = leader.wait();
    println!("process group {pgid}: pids {pids:?}");
    println!(
        "GPU memory attributed to the group: {:.2} GiB; GPU 0 free before {:.2} GiB, during {:.2} GiB",
        attributed as f64 / GIB as f64,
        free_before as f64 / GIB as f64,
        free_during as f64 / GIB as f64
    );
    if attributed >= GIB && free_before.saturating_sub(free_during) >= GIB {
        println!("VERDICT: PASS");
        ExitCode::SUCCESS
    } else {
        println!("VERDICT: FAIL: expected at least 1 GiB attributed and taken from GPU 0");
        ExitCode::FAILURE
    }
}
