//! Room for a new engine: a loaded-model slot, GPU memory (placement) or host memory, made
//! by putting the least recently used idle engine to sleep or stopping it, never a pinned or
//! busy one; and the room a sleeping engine needs to wake.

use super::*;

impl Scheduler {
    /// Frees what a new engine needs: a loaded-model slot, and GPU memory where there are
    /// GPUs, host memory where there are none. Returns the GPU placement, or the host memory
    /// promised to a CPU engine. Called with `placing` held.
    pub(super) async fn make_room(
        &self,
        name: &ModelName,
        model: &ModelConfig,
        weights: u64,
    ) -> Result<(Option<Placement>, u64), SchedError> {
        loop {
            let config = self.config();
            let probe = self.inner.probe.clone();
            let (gpus, host_budget) =
                tokio::task::spawn_blocking(move || (probe.gpus(), crate::host_memory::budget()))
                    .await
                    .map_err(|e| SchedError::Internal(e.to_string()))?;
            let max_loaded = max_loaded(config.config.engine.max_loaded, gpus.len());
            let (loaded, reserved, host_used) = {
                let slots = self.slots();
                let loaded = slots.values().filter(|s| s.loaded_here());
                let reserved: Vec<Reservation> = loaded
                    .clone()
                    .filter_map(|s| s.placement.as_ref())
                    .flat_map(|p| p.reservations.iter().copied())
                    .collect();
                let host_used = loaded.clone().map(|s| s.host_need).sum::<u64>();
                (loaded.count(), reserved, host_used)
            };
            // Host memory decides only when the operator set no count (`max_loaded = 0`).
            let host_decides = config.config.engine.max_loaded == 0;
            let placed = if gpus.is_empty() && !host_decides {
                Ok((None, 0))
            } else if gpus.is_empty() {
                let budget = host_budget.unwrap_or(u64::MAX);
                let need = host_need(&config.config, model, weights, budget);
                if crate::host_memory::fits(host_used, need, budget, loaded) {
                    Ok((None, need))
                } else {
                    Err(Blocked::Host {
                        need,
                        used: host_used,
                        budget,
                    })
                }
            } else {
                let total = gpus.iter().map(|g| g.total_bytes).min().unwrap_or(0);
                // This machine holds one pipeline stage (the others are Ray's, elsewhere):
                // its GPUs share 1/pipeline_parallel of the weights.
                let need = placement::need_per_gpu(
                    model.gpu_memory,
                    total,
                    weights / u64::from(model.pipeline_parallel.max(1)),
                    model.tensor_parallel,
                );
                placement::place(
                    &gpus,
                    &reserved,
                    config.config.engine.gpu_memory_reserve.0,
                    need,
                    model.tensor_parallel,
                )
                .map(|p| (Some(p), 0))
                .map_err(Blocked::Memory)
            };
            let blocked = match (placed, loaded >= max_loaded) {
                (Ok(p), false) => return Ok(p),
                (Err(why), _) => why,
                (Ok(_), true) => Blocked::Count(loaded),
            };
            if !self.evict_one(name).await {
                let busy = self.busy_models(name);
                return Err(match blocked {
                    Blocked::Memory(shortfall) => SchedError::NoGpuRoom { shortfall, busy },
                    Blocked::Count(loaded) => SchedError::TooManyLoaded { loaded, busy },
                    Blocked::Host { need, used, budget } => SchedError::NoHostRoom {
                        need,
                        used,
                        budget,
                        busy,
                    },
                });
            }
        }
    }

    /// What an engine found running takes of host memory: a CPU engine's estimate; one on
    /// GPUs is counted by its placement.
    pub(super) fn found_host_need(
        config: &Config,
        model: &ModelConfig,
        weights: u64,
        placement: Option<&Placement>,
    ) -> u64 {
        match placement {
            Some(_) => 0,
            None => host_need(config, model, weights, u64::MAX),
        }
    }

    pub(super) fn busy_models(&self, except: &ModelName) -> String {
        let slots = self.slots();
        let mut busy: Vec<String> = slots
            .iter()
            .filter(|(n, s)| *n != except && s.loaded_here() && !s.evictable())
            .map(|(n, _)| n.to_string())
            .collect();
        busy.sort();
        if busy.is_empty() {
            "none".into()
        } else {
            busy.join(",")
        }
    }

    /// Sleeps or stops the least recently used idle engine. False when there is none.
    pub(super) async fn evict_one(&self, except: &ModelName) -> bool {
        let victim = {
            let slots = self.slots();
            slots
                .iter()
                .filter(|(n, s)| *n != except && s.loaded_here() && s.evictable())
                .min_by_key(|(_, s)| s.last_used)
                .map(|(n, s)| (n.clone(), s.engine.clone(), s.sleep, s.info.size))
        };
        let Some((victim, engine, sleep, weights)) = victim else {
            return false;
        };
        // /proc/meminfo is read off the async workers, like every other file.
        let fits = sleep
            && engine.status().phase == Phase::Ready
            && tokio::task::spawn_blocking(move || host_memory_for(weights))
                .await
                .unwrap_or(false);
        if fits {
            match engine.sleep().await {
                Ok(()) => {
                    tracing::info!(model = %victim, "put to sleep to make room");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(model = %victim, error = %e, "sleep failed; stopping instead")
                }
            }
        }
        tracing::info!(model = %victim, "unloading the least recently used idle model to make room");
        self.slots().remove(&victim);
        engine.stop().await;
        (self.inner.on_change)();
        true
    }

    /// A sleeping engine needs its GPU memory back before it wakes.
    pub(super) async fn wake(
        &self,
        name: &ModelName,
        engine: &Arc<Engine>,
    ) -> Result<(), SchedError> {
        let _placing = self.inner.placing.lock().await;
        if engine.status().phase != Phase::Sleeping {
            return Ok(());
        }
        loop {
            let probe = self.inner.probe.clone();
            let gpus = tokio::task::spawn_blocking(move || probe.gpus().len())
                .await
                .map_err(|e| SchedError::Internal(e.to_string()))?;
            let loaded = self.slots().values().filter(|s| s.loaded_here()).count();
            let limit = max_loaded(self.config().config.engine.max_loaded, gpus);
            if loaded < limit || !self.evict_one(name).await {
                break;
            }
        }
        tracing::info!(model = %name, "waking the engine");
        engine.wake().await?;
        Ok(())
    }
}

enum Blocked {
    Memory(Shortfall),
    Count(usize),
    Host { need: u64, used: u64, budget: u64 },
}

/// `engine.max_loaded`: 0 means 3 engines per GPU, or without a GPU no count at all (host
/// memory decides: [`crate::host_memory`]).
pub fn max_loaded(configured: u32, gpus: usize) -> usize {
    match configured {
        0 if gpus == 0 => usize::MAX,
        0 => 3 * gpus,
        n => n as usize,
    }
}

/// Sleep level 1 moves the weights to host RAM: only sleep when it has room for them.
fn host_memory_for(weights: u64) -> bool {
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return false;
    };
    let available_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    available_kib * 1024 > weights / 5 * 6 + ByteSize::GIB
}

/// What one CPU engine of `model` needs of host memory (see [`crate::host_memory::need`]).
fn host_need(config: &Config, model: &ModelConfig, weights: u64, budget: u64) -> u64 {
    let mut env = config.engine.env.clone();
    env.extend(model.env.clone());
    crate::host_memory::need(
        weights,
        crate::host_memory::kv_bytes(&vllm::configured_args(config, model), &env),
        budget,
    )
}
