//! Placement on (fake) GPUs through the real scheduler and the fake engine: the fraction
//! each engine gets, CUDA_VISIBLE_DEVICES, eviction to make room, and the refusal that
//! names the busy models when nothing can give way.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;
use tokio_util::task::TaskTracker;
use vllama_testkit::workspace_bin;
use vllamad::auth::AccessPolicy;
use vllamad::config::{Config, GpuMemory, ModelConfig};
use vllamad::gpu::FakeGpus;
use vllamad::models::ModelName;
use vllamad::scheduler::{SchedError, Scheduler};
use vllamad::state::ActiveConfig;
use vllamad::units::ByteSize;

const GIB: u64 = ByteSize::GIB;

fn setup(dir: &std::path::Path, models: &[(&str, f64)]) -> (Scheduler, Arc<FakeGpus>, TaskTracker) {
    let mut config = Config::default();
    config.paths.state_dir = dir.join("state");
    config.paths.runtime_dir = dir.join("run");
    config.paths.cache_dir = dir.join("cache");
    config.engine.program = workspace_bin(env!("CARGO_BIN_EXE_vllamad"), "fake-vllm");
    for (name, fraction) in models {
        let model_dir = dir.join("models").join(name);
        std::fs::create_dir_all(&model_dir).unwrap();
        std::fs::write(model_dir.join("config.json"), "{}").unwrap();
        let mut m = ModelConfig::from_source(model_dir.display().to_string());
        m.gpu_memory = GpuMemory::Fraction(*fraction);
        m.env.insert(
            "FAKE_VLLM_STATE_DIR".into(),
            dir.join("fake").join(name).display().to_string(),
        );
        m.env.insert("FAKE_VLLM_STARTUP_MS".into(), "50".into());
        config
            .models
            .insert(ModelName::parse(name).unwrap().to_string(), m); // canonical, as validation makes them
    }
    let access = AccessPolicy::resolve(&config.admin);
    let active = ActiveConfig {
        config,
        file: None,
        generation: 1,
        loaded_at: SystemTime::now(),
        access,
    };
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(active));
    std::mem::forget(_tx); // keep the channel open for the test's life
    let gpus = Arc::new(FakeGpus::new(1, 80 * GIB));
    let tracker = TaskTracker::new();
    let metrics = Arc::new(vllamad::metrics::Metrics::new().unwrap());
    let scheduler = Scheduler::new(rx, gpus.clone(), tracker.clone(), metrics, Arc::new(|| {}));
    (scheduler, gpus, tracker)
}

fn launched_with(dir: &std::path::Path, model: &str) -> (Vec<String>, Value) {
    let state = dir.join("fake").join(model);
    let argv =
        serde_json::from_str(&std::fs::read_to_string(state.join("argv.json")).unwrap()).unwrap();
    let env =
        serde_json::from_str(&std::fs::read_to_string(state.join("env.json")).unwrap()).unwrap();
    (argv, env)
}

fn utilization(argv: &[String]) -> String {
    argv.windows(2)
        .find(|w| w[0] == "--gpu-memory-utilization")
        .map(|w| w[1].clone())
        .unwrap_or_default()
}

fn name(n: &str) -> ModelName {
    ModelName::parse(n).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_get_their_share_and_room_is_made_lru_first() {
    let dir = tempfile::tempdir().unwrap();
    let (scheduler, _gpus, _tracker) = setup(dir.path(), &[("a", 0.5), ("b", 0.4), ("c", 0.3)]);

    drop(scheduler.acquire(&name("a"), None).await.unwrap());
    let (argv, env) = launched_with(dir.path(), "a");
    assert_eq!(utilization(&argv), "0.50");
    assert_eq!(env["CUDA_VISIBLE_DEVICES"], "0");
    assert_eq!(env["CUDA_DEVICE_ORDER"], "PCI_BUS_ID");

    drop(scheduler.acquire(&name("b"), None).await.unwrap());
    assert_eq!(utilization(&launched_with(dir.path(), "b").0), "0.40");

    // 0.5 + 0.4 promised of 80 GiB (NVML still says all free: the engines are fakes):
    // c's 0.3 does not fit until the least recently used idle engine, a, goes.
    drop(scheduler.acquire(&name("c"), None).await.unwrap());
    let loaded: Vec<String> = scheduler
        .engines()
        .iter()
        .map(|e| e.model.clone())
        .collect();
    assert_eq!(loaded, ["b:latest", "c:latest"]);
    let promised: u64 = scheduler.engines().iter().map(|e| e.gpu_memory_bytes).sum();
    assert!(
        promised <= 80 * GIB - ByteSize::MIB * 512,
        "over budget: {promised}"
    );

    // Both busy: a cannot be placed, and the error says why.
    let hold_b = scheduler.acquire(&name("b"), None).await.unwrap();
    let hold_c = scheduler.acquire(&name("c"), None).await.unwrap();
    match scheduler.acquire(&name("a"), None).await {
        Err(SchedError::NoGpuRoom { shortfall, busy }) => {
            assert_eq!(shortfall.need, 40 * GIB);
            assert_eq!(busy, "b:latest,c:latest");
        }
        other => panic!("expected NoGpuRoom, got {other:?}"),
    }
    drop((hold_b, hold_c));
    scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measured_free_memory_limits_placement_too() {
    let dir = tempfile::tempdir().unwrap();
    let (scheduler, gpus, _tracker) = setup(dir.path(), &[("a", 0.5)]);
    // Another program holds 60 of the 80 GiB.
    gpus.set_free(0, 20 * GIB);
    let err = scheduler.acquire(&name("a"), None).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("not enough GPU memory: need 40GiB"),
        "{err}"
    );
    gpus.set_free(0, 80 * GIB);
    assert!(scheduler.acquire(&name("a"), None).await.is_ok());
    scheduler.shutdown().await;
}
