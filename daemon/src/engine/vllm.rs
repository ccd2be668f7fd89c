//! The vLLM engine kind: everything vllamad knows of `vllm serve` — its command line and
//! environment (from the configuration, the model's profile and its GPU placement), its
//! endpoint, `/health`, the sleep and wake routes, the level words of its output, and its
//! default concurrency. Building a launch touches the filesystem: call [`spec`] off the async
//! workers.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};

use super::client::{Endpoint, EngineClient};
use super::host::Host;
use super::kind::{BoxFuture, Ended, EngineKind, Probe, Run};
use super::process::{Launch, Output, ProcessError, UnitOptions};
use super::supervisor::EngineSpec;
use crate::config::{Config, Executor, ModelConfig, Transport};
use crate::placement::Placement;

/// `vllm serve`, run by its host: a child of vllamad, or a systemd unit of its own.
#[derive(Debug)]
pub struct Vllm {
    pub launch: Launch,
    endpoint: Endpoint,
    host: Arc<dyn Host>,
}

impl Vllm {
    pub fn new(launch: Launch, endpoint: Endpoint, host: Arc<dyn Host>) -> Vllm {
        Vllm {
            launch,
            endpoint,
            host,
        }
    }
}

impl EngineKind for Vllm {
    fn name(&self) -> &'static str {
        "vllm"
    }

    fn start<'a>(
        &'a self,
        _client: &'a EngineClient,
        output: &'a Output,
    ) -> BoxFuture<'a, Result<Box<dyn Run>, String>> {
        Box::pin(async move {
            let run = self.host.launch(&self.launch, output).await?;
            Ok(Box::new(Served {
                run,
                endpoint: self.endpoint.clone(),
            }) as Box<dyn Run>)
        })
    }

    fn probe<'a>(&'a self, client: &'a EngineClient, timeout: Duration) -> BoxFuture<'a, Probe> {
        Box::pin(async move {
            match client.call(Method::GET, "/health", timeout).await {
                Ok((StatusCode::OK, _)) => Probe::Ready,
                Ok((status, _)) => Probe::NotYet(format!("/health answered {status}")),
                Err(e) => Probe::NotYet(e.to_string()),
            }
        })
    }

    fn sleep_paths(&self) -> Option<(&'static str, &'static str)> {
        Some(("/sleep?level=1", "/wake_up"))
    }

    fn asleep<'a>(&'a self, client: &'a EngineClient) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match client
                .call(Method::GET, "/is_sleeping", Duration::from_secs(5))
                .await
            {
                Ok((StatusCode::OK, body)) => serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("is_sleeping").and_then(serde_json::Value::as_bool))
                    .unwrap_or(false),
                _ => false,
            }
        })
    }

    fn local(&self) -> bool {
        true
    }
}

/// One run of `vllm serve`, whatever its host: its socket file goes with it.
struct Served {
    run: Box<dyn Run>,
    endpoint: Endpoint,
}

impl Run for Served {
    fn pid(&self) -> Option<u32> {
        self.run.pid()
    }

    fn ended(&mut self) -> BoxFuture<'_, Ended> {
        self.run.ended()
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let graceful = self.run.stop(grace).await;
            remove_socket(&self.endpoint);
            graceful
        })
    }

    fn survives(&self) -> bool {
        self.run.survives()
    }

    fn adopted(&self) -> bool {
        self.run.adopted()
    }
}

pub(super) fn spawn_error(e: &ProcessError) -> String {
    match e {
        ProcessError::Spawn { program, source }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            format!("the vLLM engine is not installed ({program} does not exist); run: sudo vllamactl engine install")
        }
        ProcessError::Spawn { program, source }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            format!("vllamad's user may not run {program} ({source}); run: sudo vllamactl engine install --force, or fix its permissions")
        }
        other => other.to_string(),
    }
}

fn remove_socket(endpoint: &Endpoint) {
    if let Endpoint::Unix(path) = endpoint {
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the engine socket");
            }
        }
    }
}

/// The engine arguments the configuration gives a model: `[engine] args`, then its own.
pub fn configured_args(config: &Config, model: &ModelConfig) -> Vec<String> {
    config
        .engine
        .args
        .iter()
        .chain(&model.args)
        .cloned()
        .collect()
}

/// The requests one engine of `model` runs at once: its args' `--max-num-seqs`, else
/// `engine.max_in_flight`, else (0) vLLM's own default for where it runs.
pub fn engine_concurrency(
    config: &Config,
    model: &ModelConfig,
    placement: Option<&Placement>,
) -> u32 {
    let args = configured_args(config, model);
    let mut set = None;
    for (i, arg) in args.iter().enumerate() {
        if let Some(v) = arg.strip_prefix("--max-num-seqs=") {
            set = v.parse().ok();
        } else if arg == "--max-num-seqs" {
            set = args.get(i + 1).and_then(|v| v.parse().ok());
        }
    }
    match (set, config.engine.max_in_flight) {
        (Some(n), _) => n,
        (None, 0) => vllm_default_max_num_seqs(placement, model.tensor_parallel),
        (None, n) => n,
    }
}

/// vLLM's default `--max-num-seqs` for its OpenAI server (0.32,
/// `EngineArgs._set_default_max_num_seqs_and_batched_tokens_args`): 1024 on GPUs of 160 GiB
/// and more, and on those of 70 GiB and more but A100s; 256 on other GPUs; 128 a CPU worker.
pub fn vllm_default_max_num_seqs(placement: Option<&Placement>, tensor_parallel: u32) -> u32 {
    const GIB: u64 = 1 << 30;
    match placement {
        None => 128 * tensor_parallel.max(1),
        Some(p) if p.device_total >= 160 * GIB => 1024,
        Some(p) if p.device_total >= 70 * GIB && !p.device_name.to_lowercase().contains("a100") => {
            1024
        }
        Some(_) => 256,
    }
}

/// The command line and environment of one engine, on `host`.
#[allow(clippy::too_many_arguments)]
pub fn spec(
    config: &Config,
    name: &str,
    model: &ModelConfig,
    id: &str,
    served_name: &str,
    folder: (&std::path::Path, &super::profile::Profile),
    placement: Option<&Placement>,
    host: Arc<dyn Host>,
) -> Result<EngineSpec, String> {
    let (launch, endpoint) = launch(config, name, model, id, served_name, folder, placement)?;
    Ok(EngineSpec {
        id: id.to_string(),
        model: name.to_string(),
        kind: Arc::new(Vllm::new(launch, endpoint.clone(), host)),
        endpoint,
        load_timeout: config.engine.load_timeout.0,
        health_interval: config.engine.health_interval.0,
        stop_grace: config.engine.stop_grace.0,
        backoff_max: config.engine.restart_backoff_max.0,
        stable_after: config.engine.stable_after.0,
        auto_restart: model.pinned,
    })
}

/// `vllm serve`'s command line and environment, and where it will listen.
pub fn launch(
    config: &Config,
    name: &str,
    model: &ModelConfig,
    id: &str,
    served_name: &str,
    (dir, profile): (&std::path::Path, &super::profile::Profile),
    placement: Option<&Placement>,
) -> Result<(Launch, Endpoint), String> {
    let runtime = &config.paths.runtime_dir;
    let engines_dir = runtime.join("engines");
    std::fs::create_dir_all(&engines_dir)
        .map_err(|e| format!("cannot create {}: {e}", engines_dir.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&engines_dir, std::fs::Permissions::from_mode(0o700));

    let mut args: Vec<String> = vec![
        "serve".into(),
        dir.display().to_string(),
        "--served-model-name".into(),
        served_name.to_string(),
    ];
    let endpoint = match config.engine.transport {
        Transport::Uds => {
            let sock = engines_dir.join(format!("{id}.sock"));
            args.extend(["--uds".into(), sock.display().to_string()]);
            Endpoint::Unix(sock)
        }
        Transport::Tcp => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("no free loopback port: {e}"))?
                .port();
            args.extend([
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
            ]);
            Endpoint::Tcp(([127, 0, 0, 1], port).into())
        }
    };
    if let Some(len) = model.max_model_len {
        args.extend(["--max-model-len".into(), len.to_string()]);
    }
    if let Some(dtype) = &model.dtype {
        args.extend(["--dtype".into(), dtype.clone()]);
    }
    if model.tensor_parallel > 1 {
        args.extend([
            "--tensor-parallel-size".into(),
            model.tensor_parallel.to_string(),
        ]);
    }
    if model.pipeline_parallel > 1 {
        args.extend([
            "--pipeline-parallel-size".into(),
            model.pipeline_parallel.to_string(),
        ]);
    }
    match model.executor {
        Some(Executor::Ray) => args.extend(["--distributed-executor-backend".into(), "ray".into()]),
        Some(Executor::Mp) => args.extend(["--distributed-executor-backend".into(), "mp".into()]),
        None => {}
    }
    if let Some(p) = placement {
        args.extend([
            "--gpu-memory-utilization".into(),
            format!("{:.2}", p.fraction),
        ]);
        if model.sleep {
            args.push("--enable-sleep-mode".into());
        }
    }
    let configured = configured_args(config, model);
    // What vllamad lets through at once, said to vLLM too: the two agree by construction,
    // whatever a later vLLM's own default (a model's args, when they set it, say it already).
    if !configured.iter().any(|a| a.starts_with("--max-num-seqs")) {
        let bound = engine_concurrency(config, model, placement);
        args.extend(["--max-num-seqs".into(), bound.to_string()]);
    }
    // Tools and reasoning: the flags the model's family needs (configured ones win).
    args.extend(profile.args(&configured));
    args.extend(configured);

    let tmpdir = runtime.join("tmp").join(id);
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("HOME".into(), config.paths.state_dir.display().to_string()),
        (
            "HF_HOME".into(),
            config.paths.state_dir.display().to_string(),
        ),
        ("HF_HUB_OFFLINE".into(), "1".into()),
        ("TRANSFORMERS_OFFLINE".into(), "1".into()),
        (
            "VLLM_CACHE_ROOT".into(),
            config.paths.cache_dir.join("vllm").display().to_string(),
        ),
        ("VLLM_NO_USAGE_STATS".into(), "1".into()),
        ("DO_NOT_TRACK".into(), "1".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TMPDIR".into(), tmpdir.display().to_string()),
        (
            super::process::ENGINE_MARK.into(),
            runtime.display().to_string(),
        ),
    ];
    if let Some(p) = placement {
        let devices: Vec<String> = p.gpus.iter().map(u32::to_string).collect();
        env.push(("CUDA_VISIBLE_DEVICES".into(), devices.join(",")));
        env.push(("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into()));
    }
    if model.sleep {
        env.push(("VLLM_SERVER_DEV_MODE".into(), "1".into()));
    }
    if let Some(address) = &model.ray_address {
        // vLLM's ray.init() reads the cluster's address from here.
        env.push(("RAY_ADDRESS".into(), address.clone()));
    }
    if config.engine.responses_store {
        env.push(("VLLM_ENABLE_RESPONSES_API_STORE".into(), "1".into()));
    }
    for (k, v) in config.engine.env.iter().chain(&model.env) {
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    let stale = match &endpoint {
        Endpoint::Unix(sock) => vec![sock.clone()],
        _ => Vec::new(),
    };
    let launch = Launch {
        id: id.to_string(),
        program: config.engine.program.clone(),
        args,
        env,
        tmpdir,
        model: name.to_string(),
        levels: level_of,
        stale,
        unit: UnitOptions {
            memory_max: model.memory_max.map(|b| b.0),
            cpu_weight: model.cpu_weight,
            stop_grace: config.engine.stop_grace.0,
            placement: placement.cloned(),
        },
    };
    Ok((launch, endpoint))
}

/// The tracing level of one vLLM output line: `(APIServer pid=1) WARNING 11-27 …`, or a
/// glog-style `W1127 16:11:31.835 …` from torch.
pub fn level_of(line: &str) -> tracing::Level {
    let rest = match line.strip_prefix('(') {
        Some(r) => r.split_once(") ").map_or(line, |(_, after)| after),
        None => line,
    };
    let token = rest.split_whitespace().next().unwrap_or("");
    match token {
        "DEBUG" => tracing::Level::DEBUG,
        "INFO" => tracing::Level::INFO,
        "WARNING" | "WARN" => tracing::Level::WARN,
        "ERROR" | "CRITICAL" | "FATAL" => tracing::Level::ERROR,
        // Bytes, not string slices: a first word may be any UTF-8 (`█▌ warming up`).
        t if t.len() > 4
            && t.as_bytes()
                .get(1..5)
                .is_some_and(|d| d.iter().all(u8::is_ascii_digit)) =>
        {
            match t.as_bytes().first() {
                Some(b'W') => tracing::Level::WARN,
                Some(b'E' | b'F') => tracing::Level::ERROR,
                _ => tracing::Level::INFO,
            }
        }
        _ => tracing::Level::INFO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn an_engine_runs_what_its_args_say_else_max_in_flight_else_vllms_default() {
        let gib = 1u64 << 30;
        let on = |total: u64, name: &str| Placement {
            gpus: vec![0],
            reservations: Vec::new(),
            fraction: 0.9,
            device_total: total * gib,
            device_name: name.into(),
        };
        let mut config = Config::default();
        let mut model: ModelConfig = toml::from_str("source = \"x\"").unwrap();
        // vLLM's own defaults, mirrored.
        assert_eq!(
            engine_concurrency(&config, &model, None),
            128,
            "a CPU engine"
        );
        let h200 = on(141, "NVIDIA H200");
        assert_eq!(engine_concurrency(&config, &model, Some(&h200)), 1024);
        let a100 = on(80, "NVIDIA A100-SXM4-80GB");
        assert_eq!(engine_concurrency(&config, &model, Some(&a100)), 256);
        let l4 = on(24, "NVIDIA L4");
        assert_eq!(engine_concurrency(&config, &model, Some(&l4)), 256);
        let b200 = on(180, "NVIDIA B200");
        assert_eq!(engine_concurrency(&config, &model, Some(&b200)), 1024);
        config.engine.max_in_flight = 64;
        assert_eq!(engine_concurrency(&config, &model, Some(&h200)), 64);
        model.args = vec!["--max-num-seqs".into(), "8".into()];
        assert_eq!(engine_concurrency(&config, &model, None), 8);
        config.engine.args = vec!["--max-num-seqs=2".into()];
        assert_eq!(
            engine_concurrency(&config, &model, None),
            8,
            "the model's own wins"
        );
        model.args.clear();
        assert_eq!(engine_concurrency(&config, &model, None), 2);
    }

    #[test]
    fn odd_first_words_do_not_panic() {
        for line in [
            "█▌ warming up",
            "W█▌12 x",
            "é1234",
            "W1\u{e9}34",
            "\u{fffd}\u{fffd}\u{fffd}",
        ] {
            assert_eq!(level_of(line), tracing::Level::INFO, "{line}");
        }
        assert_eq!(level_of("W1127 16:11:31.835 torch"), tracing::Level::WARN);
    }

    #[test]
    fn vllm_levels() {
        assert_eq!(
            level_of("(APIServer pid=5) INFO 11-27 16:11:39 [api_utils.py:347] x"),
            Level::INFO
        );
        assert_eq!(
            level_of("(APIServer pid=5) WARNING 11-27 16:11:39 [x.py:1] y"),
            Level::WARN
        );
        assert_eq!(
            level_of("(EngineCore_DP0 pid=9) ERROR 11-27 16:11:39 [x.py:1] boom"),
            Level::ERROR
        );
        assert_eq!(
            level_of("(EngineCore_DP0 pid=9) CRITICAL 11-27 x"),
            Level::ERROR
        );
        assert_eq!(level_of("(APIServer pid=5) DEBUG 11-27 x"), Level::DEBUG);
        assert_eq!(
            level_of("W1127 16:11:31.835000 14889 torch/utils/flop_counter.py:29] triton"),
            Level::WARN
        );
        assert_eq!(level_of("E1127 16:11:31.835000 1 x] bad"), Level::ERROR);
        assert_eq!(level_of("Traceback (most recent call last):"), Level::INFO);
        assert_eq!(level_of(""), Level::INFO);
    }

    #[test]
    fn a_ray_model_runs_on_the_operators_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.paths.runtime_dir = dir.path().join("run");
        let model: ModelConfig = toml::from_str(
            "source = \"x\"\nexecutor = \"ray\"\nray_address = \"10.0.0.1:6379\"\n\
             tensor_parallel = 2\npipeline_parallel = 3\n",
        )
        .unwrap();
        let profile =
            super::super::profile::Profile::of(super::super::profile::detect("llama", None));
        let (launch, _) = launch(
            &config,
            "big:latest",
            &model,
            "big-1",
            "big:latest",
            (std::path::Path::new("/models/big"), &profile),
            None,
        )
        .unwrap();
        let pair = |flag: &str| {
            let at = launch.args.iter().position(|a| a == flag)?;
            launch.args.get(at + 1).cloned()
        };
        for (flag, value) in [
            ("--distributed-executor-backend", "ray"),
            ("--tensor-parallel-size", "2"),
            ("--pipeline-parallel-size", "3"),
        ] {
            assert_eq!(pair(flag).as_deref(), Some(value), "{:?}", launch.args);
        }
        assert!(
            launch
                .env
                .contains(&("RAY_ADDRESS".into(), "10.0.0.1:6379".into())),
            "{:?}",
            launch.env
        );
        // Without Ray: neither the backend flag nor the address.
        let model: ModelConfig = toml::from_str("source = \"x\"").unwrap();
        let (launch, _) = super::launch(
            &config,
            "m:latest",
            &model,
            "m-1",
            "m:latest",
            (std::path::Path::new("/models/m"), &profile),
            None,
        )
        .unwrap();
        assert!(!launch
            .args
            .iter()
            .any(|a| a == "--distributed-executor-backend"));
        assert!(!launch.env.iter().any(|(k, _)| k == "RAY_ADDRESS"));
    }
}
