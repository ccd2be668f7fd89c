//! The scheduler's rules, with engines that are not processes: an in-memory engine kind that
//! is ready at once and counts its starts and stops. LRU eviction, pins, busy engines, the
//! queue bound, `max_loaded`, keep_alive's one timer and its epochs.

use std::sync::atomic::AtomicUsize;

use super::*;
use crate::engine::host::Survivor;
use crate::engine::kind::{BoxFuture, Ended, EngineKind, Probe, Run};
use crate::engine::profile::Profile;
use crate::engine::EngineClient;

/// Starts and stops, per model; and what a host of engines that outlive vllamad would do.
#[derive(Debug, Default)]
struct Counts {
    starts: Mutex<HashMap<String, usize>>,
    stops: AtomicUsize,
    /// Engines "left running by an earlier vllamad" (by id): started, they are adopted.
    survivors: Mutex<Vec<Survivor>>,
    adopted: AtomicUsize,
    discarded: Mutex<Vec<String>>,
    remembered: Mutex<Vec<(String, Option<SystemTime>)>>,
    /// Engines outlive vllamad, and vllamad is restarting.
    let_go: std::sync::atomic::AtomicBool,
}

impl Counts {
    fn starts(&self, model: &str) -> usize {
        self.starts.lock().unwrap().get(model).copied().unwrap_or(0)
    }
}

#[derive(Debug)]
struct Memory {
    id: String,
    model: String,
    counts: Arc<Counts>,
}

impl EngineKind for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn start<'a>(
        &'a self,
        _: &'a EngineClient,
        _: &'a crate::engine::process::Output,
    ) -> BoxFuture<'a, Result<Box<dyn Run>, String>> {
        let found = self
            .counts
            .survivors
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.id == self.id);
        if found {
            self.counts.adopted.fetch_add(1, Ordering::SeqCst);
            let run: Box<dyn Run> = Box::new(Resident(self.counts.clone()));
            return Box::pin(std::future::ready(Ok(run)));
        }
        *self
            .counts
            .starts
            .lock()
            .unwrap()
            .entry(self.model.clone())
            .or_default() += 1;
        let run: Box<dyn Run> = Box::new(Resident(self.counts.clone()));
        Box::pin(std::future::ready(Ok(run)))
    }

    fn probe<'a>(&'a self, _: &'a EngineClient, _: Duration) -> BoxFuture<'a, Probe> {
        Box::pin(std::future::ready(Probe::Ready))
    }

    fn local(&self) -> bool {
        true
    }
}

struct Resident(Arc<Counts>);

impl Run for Resident {
    fn pid(&self) -> Option<u32> {
        None
    }

    fn ended(&mut self) -> BoxFuture<'_, Ended> {
        Box::pin(std::future::pending())
    }

    fn stop(&mut self, _: Duration) -> BoxFuture<'_, bool> {
        self.0.stops.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::ready(true))
    }

    fn survives(&self) -> bool {
        self.0.let_go.load(Ordering::SeqCst)
    }
}

/// An engine that cannot start (the program is missing): every start fails at once.
#[derive(Debug)]
struct Missing;

impl EngineKind for Missing {
    fn name(&self) -> &'static str {
        "missing"
    }

    fn start<'a>(
        &'a self,
        _: &'a EngineClient,
        _: &'a crate::engine::process::Output,
    ) -> BoxFuture<'a, Result<Box<dyn Run>, String>> {
        Box::pin(std::future::ready(Err(
            "the vLLM engine is not installed".into()
        )))
    }

    fn probe<'a>(&'a self, _: &'a EngineClient, _: Duration) -> BoxFuture<'a, Probe> {
        Box::pin(std::future::ready(Probe::NotYet("not started".into())))
    }

    fn local(&self) -> bool {
        true
    }
}

struct InMemory(Arc<Counts>);

impl Launcher for InMemory {
    fn spec(
        &self,
        config: &Config,
        name: &str,
        model: &ModelConfig,
        id: &str,
        _: &str,
        _: (&std::path::Path, &Profile),
        _: Option<&Placement>,
    ) -> Result<EngineSpec, String> {
        let kind: Arc<dyn EngineKind> = if model.env.contains_key("MISSING") {
            Arc::new(Missing)
        } else {
            Arc::new(Memory {
                id: id.to_string(),
                model: name.to_string(),
                counts: self.0.clone(),
            })
        };
        Ok(EngineSpec {
            id: id.to_string(),
            model: name.to_string(),
            kind,
            endpoint: Endpoint::Unix("/nonexistent/engine.sock".into()),
            load_timeout: Duration::from_secs(5),
            health_interval: Duration::from_millis(10),
            stop_grace: Duration::ZERO,
            backoff_max: config.engine.restart_backoff_max.0,
            stable_after: config.engine.stable_after.0,
            auto_restart: model.pinned,
        })
    }

    fn engine_id(&self, model: &str, _: &str, _: u64) -> String {
        format!("unit-{model}")
    }

    fn survivors(&self) -> Vec<Survivor> {
        self.0.survivors.lock().unwrap().clone()
    }

    fn remember(&self, id: &str, until: Option<SystemTime>) {
        self.0
            .remembered
            .lock()
            .unwrap()
            .push((id.to_string(), until));
    }

    fn discard<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        self.0.discarded.lock().unwrap().push(id.to_string());
        Box::pin(async {})
    }

    fn let_go_at_shutdown(&self) -> bool {
        self.0.let_go.load(Ordering::SeqCst)
    }
}

/// A scheduler, the engines' counts, and the configuration's sender (the scheduler reads
/// the configuration in force through it: keep it alive with the scheduler).
struct Made {
    s: Scheduler,
    counts: Arc<Counts>,
    _config: watch::Sender<Arc<ActiveConfig>>,
}

/// Models `a`, `b` and `c` (each `[models."x:latest"]` with `models`' extra lines) and the
/// `[engine]` lines given; no GPU, no engine program.
fn scheduler(dir: &std::path::Path, engine: &str, models: &[(&str, &str)]) -> Made {
    let mut text = format!(
        "[paths]\nstate_dir = \"{d}/s\"\nruntime_dir = \"{d}/r\"\ncache_dir = \"{d}/c\"\n\
         [engine]\nvllm = \"{d}/no-engine\"\n{engine}\n",
        d = dir.display()
    );
    for name in ["a", "b", "c"] {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("config.json"), r#"{"model_type":"llama"}"#).unwrap();
        let extra = models
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, l)| l);
        text.push_str(&format!(
            "[models.\"{name}:latest\"]\nsource = \"{}\"\n{extra}\n",
            folder.display()
        ));
    }
    let config = crate::config::parse(&text, &dir.join("v.toml")).unwrap();
    let active = ActiveConfig {
        access: crate::auth::AccessPolicy::resolve(&config.admin),
        config,
        file: None,
        generation: 1,
        loaded_at: SystemTime::now(),
    };
    let (tx, rx) = watch::channel(Arc::new(active));
    let counts = Arc::new(Counts::default());
    let s = Scheduler::with_launcher(
        rx,
        Arc::new(crate::gpu::NoGpu::default()),
        TaskTracker::new(),
        (
            Arc::new(crate::metrics::Metrics::new().unwrap()),
            Arc::new(|| {}),
        ),
        Arc::new(InMemory(counts.clone())),
    );
    Made {
        s,
        counts,
        _config: tx,
    }
}

fn name(n: &str) -> ModelName {
    ModelName::parse(n).unwrap()
}

fn loaded(s: &Scheduler) -> Vec<String> {
    let mut names: Vec<String> = s.engines().into_iter().map(|e| e.model).collect();
    names.sort();
    names
}

#[tokio::test]
async fn the_least_recently_used_idle_model_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let m = scheduler(dir.path(), "max_loaded = 2", &[]);
    drop(m.s.acquire(&name("a"), None).await.unwrap());
    drop(m.s.acquire(&name("b"), None).await.unwrap());
    // a is used again: b is now the least recently used.
    drop(m.s.acquire(&name("a"), None).await.unwrap());
    drop(m.s.acquire(&name("c"), None).await.unwrap());
    assert_eq!(loaded(&m.s), ["a:latest", "c:latest"]);
    assert_eq!(m.counts.stops.load(Ordering::SeqCst), 1);
    // a was started once: its second use found it loaded.
    assert_eq!(m.counts.starts("a:latest"), 1);
    m.s.shutdown().await;
}

#[tokio::test]
async fn a_pinned_model_is_never_evicted_however_old() {
    let dir = tempfile::tempdir().unwrap();
    let m = scheduler(dir.path(), "max_loaded = 2", &[("a", "pinned = true")]);
    drop(m.s.acquire(&name("a"), None).await.unwrap());
    drop(m.s.acquire(&name("b"), None).await.unwrap());
    drop(m.s.acquire(&name("c"), None).await.unwrap());
    assert_eq!(
        loaded(&m.s),
        ["a:latest", "c:latest"],
        "b went, not the older pinned a"
    );
    m.s.shutdown().await;
}

#[tokio::test]
async fn a_busy_model_is_not_evicted_and_the_refusal_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = scheduler(dir.path(), "max_loaded = 1", &[]);
    let held = m.s.acquire(&name("a"), None).await.unwrap();
    match m.s.acquire(&name("b"), None).await {
        Err(SchedError::TooManyLoaded { loaded, busy }) => {
            assert_eq!((loaded, busy.as_str()), (1, "a:latest"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.counts.starts("b:latest"), 0, "nothing started for b");
    // Released: now it can go.
    drop(held);
    drop(m.s.acquire(&name("b"), None).await.unwrap());
    assert_eq!(loaded(&m.s), ["b:latest"]);
    m.s.shutdown().await;
}

#[tokio::test]
async fn the_queue_bound_refuses_with_ollamas_busy_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = scheduler(dir.path(), "max_queue = 2", &[]);
    let first = m.s.acquire(&name("a"), None).await.unwrap();
    let second = m.s.acquire(&name("a"), None).await.unwrap();
    match m.s.acquire(&name("a"), None).await {
        Err(e @ SchedError::Busy { limit: 2, .. }) => {
            assert!(e.to_string().contains("maximum pending requests exceeded"))
        }
        other => panic!("{other:?}"),
    }
    drop(first);
    let third = m.s.acquire(&name("a"), None).await.unwrap();
    drop((second, third));
    assert_eq!(m.counts.starts("a:latest"), 1);
    m.s.shutdown().await;
}

#[tokio::test]
async fn concurrent_first_requests_start_one_engine() {
    let dir = tempfile::tempdir().unwrap();
    let m = scheduler(dir.path(), "", &[]);
    let leases = futures_join(&m.s, 16).await;
    assert_eq!(leases, 16);
    assert_eq!(m.counts.starts("a:latest"), 1);
    m.s.shutdown().await;
}

async fn futures_join(s: &Scheduler, n: usize) -> usize {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let s = s.clone();
        set.spawn(async move { s.acquire(&name("a"), None).await.is_ok() });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        ok += usize::from(r.unwrap());
    }
    ok
}

#[tokio::test]
async fn a_context_restart_never_stops_an_engine_a_lease_holds() {
    let dir = tempfile::tempdir().unwrap();
    let m = scheduler(dir.path(), "", &[]);
    let active = m.s.config();
    let (canonical, model) = models::lookup(&active.config, m.s.aliases(), &name("a")).unwrap();
    // The request that got its lease between the larger-context request's look at
    // `pending` and its stop: the stop must see the lease and leave the engine alone.
    let lease =
        m.s.start(&canonical, model.into_owned(), None)
            .await
            .unwrap();
    assert!(!m.s.stop_if_idle(&canonical).await, "stopped under a lease");
    assert_eq!(m.s.engines().len(), 1);
    drop(lease);
    assert!(m.s.stop_if_idle(&canonical).await);
    assert!(m.s.engines().is_empty());
    m.s.shutdown().await;
}

#[tokio::test]
async fn one_timer_per_model_unloads_it_when_keep_alive_passes_unused() {
    let dir = tempfile::tempdir().unwrap();
    let m = scheduler(dir.path(), "", &[("a", "keep_alive = \"300ms\"")]);
    drop(m.s.acquire(&name("a"), None).await.unwrap());
    // Used again before the deadline: the timer is re-armed, not doubled.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(m.s.acquire(&name("a"), None).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(m.s.engines().len(), 1, "unloaded by the first deadline");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(m.s.engines().is_empty(), "not unloaded after keep_alive");
    assert_eq!(m.counts.stops.load(Ordering::SeqCst), 1);
    m.s.shutdown().await;
}

#[tokio::test]
async fn a_sooner_deadline_wakes_the_timer_and_a_later_one_does_not() {
    let expiry = super::keep_alive::Expiry::default();
    let woken = |e: &super::keep_alive::Expiry| {
        // A wake-up leaves a permit: a new waiter completes at once.
        let notified = e.wake_for_test().notified();
        tokio::pin!(notified);
        notified.as_mut().enable()
    };
    let now = tokio::time::Instant::now();
    expiry.arm(now + Duration::from_secs(10), 1);
    assert!(woken(&expiry), "a timer asleep to no deadline is woken");
    expiry.set_sleeping_to_for_test(now + Duration::from_secs(10));
    expiry.arm(now + Duration::from_secs(20), 2);
    assert!(!woken(&expiry), "a later deadline woke the timer");
    expiry.arm(now + Duration::from_secs(5), 3);
    assert!(woken(&expiry), "a sooner deadline did not wake the timer");
}

#[tokio::test]
async fn a_shorter_keep_alive_on_a_later_request_unloads_sooner() {
    let dir = tempfile::tempdir().unwrap();
    let m = scheduler(dir.path(), "", &[("a", "keep_alive = \"1h\"")]);
    drop(m.s.acquire(&name("a"), None).await.unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let short = Some(KeepAlive::For(Duration::from_millis(200)));
    drop(m.s.acquire(&name("a"), short).await.unwrap());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(m.s.engines().is_empty(), "the timer slept on to the hour");
    m.s.shutdown().await;
}

#[tokio::test]
async fn a_stale_deadline_does_nothing_to_a_model_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let m = scheduler(dir.path(), "", &[("a", "keep_alive = \"100ms\"")]);
    drop(m.s.acquire(&name("a"), None).await.unwrap());
    let (canonical, _) = models::lookup(&m.s.config().config, m.s.aliases(), &name("a")).unwrap();
    let armed = m.s.slots().get(&canonical).map(|slot| slot.epoch).unwrap();
    // A lease taken since: the epoch moved on; the old deadline's expiry is ignored.
    let held = m.s.acquire(&name("a"), None).await.unwrap();
    m.s.expire(&canonical, armed).await;
    assert_eq!(m.s.engines().len(), 1, "expired under a lease");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(m.s.engines().len(), 1, "expired while in use");
    drop(held);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(m.s.engines().is_empty());
    m.s.shutdown().await;
}

#[tokio::test]
async fn without_a_gpu_and_max_loaded_unset_every_model_stays_loaded_when_memory_allows() {
    let dir = tempfile::tempdir().unwrap();
    // Tiny CPU engines: each needs its (empty) weights and a 1 KiB KV cache.
    let kv = "args = [\"--kv-cache-memory-bytes\", \"1024\"]";
    let m = scheduler(dir.path(), "", &[("a", kv), ("b", kv), ("c", kv)]);
    for n in ["a", "b", "c"] {
        drop(m.s.acquire(&name(n), None).await.unwrap());
    }
    assert_eq!(loaded(&m.s), ["a:latest", "b:latest", "c:latest"]);
    assert_eq!(max_loaded(0, 0), usize::MAX);
    assert_eq!(max_loaded(0, 2), 6, "3 per GPU");
    assert_eq!(max_loaded(4, 2), 4);
    m.s.shutdown().await;
}

#[tokio::test]
async fn a_start_that_fails_at_once_is_reported_again_not_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let m = scheduler(dir.path(), "", &[("a", "env = { MISSING = \"1\" }")]);
    let first = m.s.acquire(&name("a"), None).await.unwrap_err();
    assert!(first.to_string().contains("not installed"), "{first}");
    // The retry goes Starting → Failed in one step of the supervisor: the request must see
    // the new failure, not wait for a change the watch coalesced away.
    for _ in 0..2 {
        let again = tokio::time::timeout(Duration::from_secs(10), m.s.acquire(&name("a"), None))
            .await
            .expect("the second request hung on a start that had already failed");
        assert!(again.unwrap_err().to_string().contains("not installed"));
    }
    m.s.shutdown().await;
}

fn survivor(model: &str, until: Option<SystemTime>) -> Survivor {
    Survivor {
        id: format!("unit-{model}"),
        model: model.to_string(),
        placement: None,
        keep_alive_until: until,
    }
}

#[tokio::test]
async fn engines_left_running_are_taken_up_with_the_rest_of_their_keep_alive() {
    let dir = tempfile::tempdir().unwrap();
    let m = scheduler(dir.path(), "", &[]);
    let now = SystemTime::now();
    *m.counts.survivors.lock().unwrap() = vec![
        survivor("a:latest", Some(now + Duration::from_millis(300))),
        survivor("b:latest", None),
        // Its keep_alive ended while no vllamad ran; the other's model is gone.
        survivor("c:latest", Some(now - Duration::from_secs(1))),
        survivor("gone:latest", None),
    ];
    assert_eq!(m.s.adopt_survivors().await, 2);
    assert_eq!(loaded(&m.s), ["a:latest", "b:latest"]);
    let mut discarded = m.counts.discarded.lock().unwrap().clone();
    discarded.sort();
    assert_eq!(discarded, ["unit-c:latest", "unit-gone:latest"]);
    // A request finds the adopted engine: no start.
    drop(m.s.acquire(&name("b"), None).await.unwrap());
    for _ in 0..100 {
        if m.counts.adopted.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(m.counts.adopted.load(Ordering::SeqCst), 2);
    assert_eq!(m.counts.starts("a:latest") + m.counts.starts("b:latest"), 0);
    // a's keep_alive goes on from what was recorded (300 ms), not from the default 5 min.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        loaded(&m.s),
        ["b:latest"],
        "a expired with the rest of its keep_alive"
    );
    m.s.shutdown().await;
}

#[tokio::test]
async fn a_restart_leaves_engines_running_and_records_their_keep_alive() {
    let dir = tempfile::tempdir().unwrap();
    let m = scheduler(dir.path(), "", &[]);
    drop(m.s.acquire(&name("a"), None).await.unwrap());
    m.counts.let_go.store(true, Ordering::SeqCst);
    m.s.shutdown().await;
    assert_eq!(m.counts.stops.load(Ordering::SeqCst), 0, "nothing stopped");
    let remembered = m.counts.remembered.lock().unwrap().clone();
    assert_eq!(remembered.len(), 1);
    let (id, until) = &remembered[0];
    assert_eq!(id, "unit-a:latest");
    let left = until.unwrap().duration_since(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(290) && left <= Duration::from_secs(300),
        "{left:?}"
    );

    // Stopped, not restarted: the same engines are stopped.
    let m = scheduler(dir.path(), "", &[]);
    drop(m.s.acquire(&name("a"), None).await.unwrap());
    m.s.shutdown().await;
    assert_eq!(m.counts.stops.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_reload_that_changes_a_models_flags_restarts_that_engine_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = scheduler(dir.path(), "max_loaded = 3", &[]);
    drop(m.s.acquire(&name("a"), None).await.unwrap());
    drop(m.s.acquire(&name("b"), None).await.unwrap());
    let old = m._config.borrow().config.clone();
    let mut new = old.clone();
    new.models.get_mut("a:latest").unwrap().args = vec!["--enforce-eager".into()];
    m._config.send_modify(|c| {
        *c = Arc::new(ActiveConfig {
            access: crate::auth::AccessPolicy::resolve(&new.admin),
            config: new,
            file: None,
            generation: 2,
            loaded_at: SystemTime::now(),
        })
    });
    assert_eq!(m.s.restart_changed(&old), [name("a")]);
    for _ in 0..200 {
        if m.counts.starts("a:latest") == 2 && loaded(&m.s).len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(m.counts.starts("a:latest"), 2, "a restarted once");
    assert_eq!(m.counts.starts("b:latest"), 1, "b untouched");
    assert_eq!(m.counts.stops.load(Ordering::SeqCst), 1);
    assert_eq!(loaded(&m.s), ["a:latest", "b:latest"]);
    m.s.shutdown().await;
}
