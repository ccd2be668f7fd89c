//! The supervisor: one task per engine that alone owns its process and is the only code that
//! signals it. States: Starting → Ready ⇄ Sleeping → Stopping → Stopped, and Failed (load
//! failure or crash). A crash restarts the engine after a backoff (1 s doubling to a cap,
//! reset once it was Ready for `stable_after`): at once when the engine is pinned, else when
//! the scheduler next asks for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::client::{ClientError, Endpoint, EngineClient};
use super::kind::{Ended, EngineKind, Probe, Run};
use super::process::Output;

/// Lines of engine output quoted in an error.
const ERROR_TAIL: usize = 12;
/// Time allowed for `/sleep` and `/wake_up` (vLLM measures 0.1–3 s on a GPU).
const SLEEP_WAKE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    Ready,
    Sleeping,
    Stopping,
    Stopped,
    Failed,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Sleeping => "sleeping",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
        };
        f.write_str(s)
    }
}

/// What the supervisor tells its observer (metrics, systemd's STATUS=).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineEvent {
    /// A process was spawned (a first start or a restart).
    Spawned,
    /// The phase changed.
    Changed { from: Phase, to: Phase },
}

/// Called with the model, the event and the status after it; must not block.
pub type ObserverFn = dyn Fn(&str, EngineEvent, &EngineStatus) + Send + Sync;
pub type EngineObserver = Arc<ObserverFn>;

/// What an engine is doing now.
#[derive(Debug, Clone)]
pub struct EngineStatus {
    pub phase: Phase,
    pub pid: Option<u32>,
    pub since: Instant,
    /// Starts after the first.
    pub restarts: u32,
    /// Exits nobody asked for, after the engine was Ready.
    pub crashes: u32,
    pub last_error: Option<String>,
    /// Time from spawn to `/health` 200 of the last successful start.
    pub load_duration: Option<Duration>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("{0}")]
    Failed(String),
    #[error("the engine for {0} was stopped")]
    Stopped(String),
    #[error("the engine for {model} did not become ready within {timeout:?}")]
    Timeout { model: String, timeout: Duration },
    #[error("the engine for {model} is {phase}, not ready")]
    NotReady { model: String, phase: Phase },
    /// A remote engine that does not answer: requests fail at once while it is retried.
    #[error("{0}")]
    Unreachable(String),
    #[error("the engine for {model} refused to {what}: {message}")]
    SleepWake {
        model: String,
        what: &'static str,
        message: String,
    },
}

/// How to run one engine.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    pub id: String,
    /// The model's canonical name.
    pub model: String,
    /// What it is and how it is started: the seam (`vllm`, `remote`).
    pub kind: Arc<dyn EngineKind>,
    pub endpoint: Endpoint,
    pub load_timeout: Duration,
    pub health_interval: Duration,
    pub stop_grace: Duration,
    pub backoff_max: Duration,
    pub stable_after: Duration,
    /// Restart after a crash without waiting for a request (pinned models).
    pub auto_restart: bool,
}

enum Command {
    Stop(oneshot::Sender<()>),
    /// vllamad is restarting: let go of an engine that survives it (else stop it).
    LetGo(oneshot::Sender<()>),
    Sleep(oneshot::Sender<Result<(), EngineError>>),
    Wake(oneshot::Sender<Result<(), EngineError>>),
    Restart,
    /// The engine stopped answering (why): kill it, and let the crash path restart it.
    Hung(String),
}

/// A handle on a supervised engine. Cheap to share; the supervisor task holds the process.
#[derive(Debug)]
pub struct Engine {
    pub spec: EngineSpec,
    state: watch::Sender<EngineStatus>,
    commands: mpsc::Sender<CommandBox>,
    client: EngineClient,
    output: Output,
}

/// `Command` is not `Debug` (it holds channels); this wrapper keeps `Engine: Debug`.
struct CommandBox(Command);

impl std::fmt::Debug for CommandBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Engine {
    /// Starts supervising: the engine process is spawned at once. `on_change` runs after
    /// every state change (the daemon refreshes systemd's STATUS= with it).
    pub fn start(
        spec: EngineSpec,
        tasks: &crate::tasks::Background,
        on_change: EngineObserver,
    ) -> Arc<Engine> {
        let (commands, rx) = mpsc::channel(16);
        let engine = Arc::new(Engine {
            client: EngineClient::new(spec.endpoint.clone()),
            state: watch::Sender::new(EngineStatus {
                phase: Phase::Starting,
                pid: None,
                since: Instant::now(),
                restarts: 0,
                crashes: 0,
                last_error: None,
                load_duration: None,
            }),
            commands,
            spec,
            output: Output::default(),
        });
        let supervised = engine.clone();
        tasks.spawn(async move { supervise(supervised, rx, on_change).await });
        engine
    }

    pub fn status(&self) -> EngineStatus {
        self.state.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<EngineStatus> {
        self.state.subscribe()
    }

    pub fn client(&self) -> &EngineClient {
        &self.client
    }

    /// The engine's last output line (for progress displays).
    pub fn last_output(&self) -> Option<String> {
        self.output.last()
    }

    /// Waits until the engine is Ready; fails at once when it fails or stops.
    pub async fn ready(&self, timeout: Duration) -> Result<(), EngineError> {
        let mut rx = self.watch();
        let wait = async {
            loop {
                let status = rx.borrow_and_update().clone();
                match status.phase {
                    Phase::Ready => return Ok(()),
                    Phase::Failed => {
                        return Err(EngineError::Failed(
                            status.last_error.unwrap_or_else(|| "engine failed".into()),
                        ))
                    }
                    Phase::Stopped | Phase::Stopping => {
                        return Err(EngineError::Stopped(self.spec.model.clone()))
                    }
                    Phase::Starting | Phase::Sleeping => {}
                }
                if rx.changed().await.is_err() {
                    return Err(EngineError::Stopped(self.spec.model.clone()));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| EngineError::Timeout {
                model: self.spec.model.clone(),
                timeout,
            })?
    }

    /// Stops the engine (SIGTERM, grace, SIGKILL of its group) and waits until it has.
    pub async fn stop(&self) {
        self.tell(Command::Stop).await
    }

    /// vllamad restarts: an engine that outlives it (a systemd unit) is left running for the
    /// next vllamad to adopt; any other is stopped. Waits until it is done.
    pub async fn let_go(&self) {
        self.tell(Command::LetGo).await
    }

    /// Sends a command and waits for its acknowledgement (none if the supervisor is gone).
    async fn tell(&self, make: fn(oneshot::Sender<()>) -> Command) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(CommandBox(make(tx))).await.is_ok() {
            let _ = rx.await;
        }
    }

    pub async fn sleep(&self) -> Result<(), EngineError> {
        self.ask(Command::Sleep).await
    }

    pub async fn wake(&self) -> Result<(), EngineError> {
        self.ask(Command::Wake).await
    }

    /// The engine stopped answering while serving (a stream stalled and `/health` did not
    /// answer): its process group is killed and it restarts as after a crash.
    pub fn hung(&self, why: String) {
        let _ = self.commands.try_send(CommandBox(Command::Hung(why)));
    }

    /// A request could not reach the engine (`e`): the status to answer with. A remote that
    /// cannot be reached is taken as down at once (its watch would take seconds to see it):
    /// requests fail fast with 503 while the supervisor retries it.
    pub fn lost(&self, e: &ClientError) -> hyper::StatusCode {
        if self.spec.kind.local() {
            return hyper::StatusCode::BAD_GATEWAY;
        }
        if matches!(e, ClientError::Request(_)) {
            self.hung(e.to_string());
        }
        hyper::StatusCode::SERVICE_UNAVAILABLE
    }

    /// After a failure: start again once the backoff allows, and wait until the new start
    /// has begun (so that a following [`Engine::ready`] does not see the old failure).
    pub async fn restart(&self) {
        let mut rx = self.watch();
        let before = {
            let status = rx.borrow_and_update();
            if status.phase != Phase::Failed {
                return;
            }
            status.restarts
        };
        if self
            .commands
            .send(CommandBox(Command::Restart))
            .await
            .is_err()
        {
            return;
        }
        // The new start counts itself in `restarts`: a start that fails at once goes
        // Starting → Failed faster than this watch may look, and must still end the wait.
        let _ = rx
            .wait_for(|s| s.phase != Phase::Failed || s.restarts > before)
            .await;
    }

    async fn ask(
        &self,
        make: fn(oneshot::Sender<Result<(), EngineError>>) -> Command,
    ) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        let gone = || EngineError::Stopped(self.spec.model.clone());
        self.commands
            .send(CommandBox(make(tx)))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    fn set(&self, on_change: &ObserverFn, update: impl FnOnce(&mut EngineStatus)) {
        let mut changed = None;
        self.state.send_modify(|s| {
            let before = s.phase;
            update(s);
            if s.phase != before {
                s.since = Instant::now();
                changed = Some((before, s.clone()));
            }
        });
        if let Some((from, status)) = changed {
            let to = status.phase;
            tracing::info!(model = %self.spec.model, engine = %self.spec.id, pid = status.pid, %from, %to, "engine state");
            on_change(&self.spec.model, EngineEvent::Changed { from, to }, &status);
        }
    }

    fn failure(&self, what: String) -> String {
        let tail = self.output.tail(ERROR_TAIL);
        if tail.is_empty() {
            what
        } else {
            format!("{what}; its last output:\n  {}", tail.join("\n  "))
        }
    }
}

/// How a start ended.
enum Loaded {
    Ready(Duration),
    Failed(String),
    Stop(oneshot::Sender<()>),
    LetGo(oneshot::Sender<()>),
}

async fn supervise(
    engine: Arc<Engine>,
    mut commands: mpsc::Receiver<CommandBox>,
    on_change: EngineObserver,
) {
    let spec = &engine.spec;
    let mut backoff = Duration::from_secs(1);
    let mut first = true;
    loop {
        if !first {
            engine.set(&*on_change, |s| {
                s.phase = Phase::Starting;
                s.pid = None;
                s.restarts += 1;
            });
        }
        first = false;
        let mut run = match spec.kind.start(&engine.client, &engine.output).await {
            Ok(run) => run,
            Err(msg) => {
                tracing::error!(model = %spec.model, error = %msg, "engine did not start");
                engine.set(&*on_change, |s| {
                    s.phase = Phase::Failed;
                    s.last_error = Some(msg);
                });
                match wait_for_retry(&engine, &mut commands, &mut backoff).await {
                    Some(()) => continue,
                    None => return,
                }
            }
        };
        let pid = run.pid();
        engine.set(&*on_change, |s| s.pid = pid);
        if run.adopted() {
            tracing::info!(model = %spec.model, pid, kind = spec.kind.name(), endpoint = %spec.endpoint, "engine adopted");
        } else {
            on_change(&spec.model, EngineEvent::Spawned, &engine.status());
            tracing::info!(model = %spec.model, pid, kind = spec.kind.name(), endpoint = %spec.endpoint, "engine spawned");
        }

        let started = Instant::now();
        let loaded = {
            let health = wait_ready(&engine, spec.health_interval, spec.load_timeout);
            tokio::pin!(health);
            loop {
                tokio::select! {
                    ready = &mut health => break match ready {
                        Ok(()) => Loaded::Ready(started.elapsed()),
                        Err(msg) => Loaded::Failed(engine.failure(msg)),
                    },
                    ended = run.ended() => break Loaded::Failed(engine.failure(format!(
                        "the engine for {} {} during start-up ({})", spec.model, ended.verb, ended.detail
                    ))),
                    cmd = commands.recv() => match cmd.map(|c| c.0) {
                        None => break Loaded::Stop(oneshot::channel().0),
                        Some(Command::Stop(ack)) => break Loaded::Stop(ack),
                        Some(Command::LetGo(ack)) if run.survives() => break Loaded::LetGo(ack),
                        Some(Command::LetGo(ack)) => break Loaded::Stop(ack),
                        Some(Command::Sleep(tx) | Command::Wake(tx)) => {
                            let _ = tx.send(Err(EngineError::NotReady { model: spec.model.clone(), phase: Phase::Starting }));
                        }
                        Some(Command::Restart | Command::Hung(_)) => {}
                    },
                }
            }
        };
        let load_duration = match loaded {
            Loaded::Ready(d) => d,
            Loaded::Stop(ack) => {
                stop(&engine, &*on_change, run.as_mut()).await;
                let _ = ack.send(());
                return;
            }
            Loaded::LetGo(ack) => {
                let_go(&engine, &*on_change, run);
                let _ = ack.send(());
                return;
            }
            Loaded::Failed(msg) => {
                tracing::error!(model = %spec.model, error = %msg, "engine failed to load");
                run.stop(spec.stop_grace).await;
                engine.set(&*on_change, |s| {
                    s.phase = Phase::Failed;
                    s.pid = None;
                    s.last_error = Some(msg);
                });
                match wait_for_retry(&engine, &mut commands, &mut backoff).await {
                    Some(()) => continue,
                    None => return,
                }
            }
        };
        // An engine found running may have been put to sleep by the vllamad before.
        let phase = if run.adopted() && spec.kind.asleep(&engine.client).await {
            Phase::Sleeping
        } else {
            Phase::Ready
        };
        engine.set(&*on_change, |s| {
            s.phase = phase;
            s.load_duration = Some(load_duration);
        });
        let ready_at = Instant::now();

        // Serving: until it ends on its own (a crash, whatever the exit code) or is stopped.
        let mut hung = None;
        let ended: Ended = loop {
            tokio::select! {
                ended = run.ended() => break ended,
                cmd = commands.recv() => match cmd.map(|c| c.0) {
                    None => {
                        stop(&engine, &*on_change, run.as_mut()).await;
                        return;
                    }
                    Some(Command::Stop(ack)) => {
                        stop(&engine, &*on_change, run.as_mut()).await;
                        let _ = ack.send(());
                        return;
                    }
                    Some(Command::LetGo(ack)) => {
                        if run.survives() {
                            let_go(&engine, &*on_change, run);
                        } else {
                            stop(&engine, &*on_change, run.as_mut()).await;
                        }
                        let _ = ack.send(());
                        return;
                    }
                    Some(Command::Sleep(tx)) => {
                        let r = sleep_wake(&engine, Phase::Sleeping).await;
                        if r.is_ok() {
                            engine.set(&*on_change, |s| s.phase = Phase::Sleeping);
                        }
                        let _ = tx.send(r);
                    }
                    Some(Command::Wake(tx)) => {
                        let r = sleep_wake(&engine, Phase::Ready).await;
                        if r.is_ok() {
                            engine.set(&*on_change, |s| s.phase = Phase::Ready);
                        }
                        let _ = tx.send(r);
                    }
                    Some(Command::Restart) => {}
                    Some(Command::Hung(why)) => {
                        tracing::error!(model = %spec.model, pid, why, "the engine stopped answering: ending its run to start it again");
                        run.stop(Duration::ZERO).await;
                        hung = Some(why);
                        break Ended { verb: "stopped answering", detail: String::new() };
                    }
                },
            }
        };
        let msg = match (hung, spec.kind.local()) {
            (Some(why), true) => format!(
                "the engine for {} stopped answering ({why}) and was killed",
                spec.model
            ),
            (Some(why), false) => format!(
                "the remote engine for {} is unreachable ({why}); vllamad retries it",
                spec.model
            ),
            (None, _) => engine.failure(format!(
                "the engine for {} {} unexpectedly ({})",
                spec.model, ended.verb, ended.detail
            )),
        };
        tracing::error!(model = %spec.model, pid, error = %msg, "engine crashed");
        engine.set(&*on_change, |s| {
            s.phase = Phase::Failed;
            s.pid = None;
            s.crashes += 1;
            s.last_error = Some(msg);
        });
        if ready_at.elapsed() >= spec.stable_after {
            backoff = Duration::from_secs(1);
        }
        match wait_for_retry(&engine, &mut commands, &mut backoff).await {
            Some(()) => continue,
            None => return,
        }
    }
}

async fn stop(engine: &Engine, on_change: &ObserverFn, run: &mut dyn Run) {
    engine.set(on_change, |s| s.phase = Phase::Stopping);
    let graceful = run.stop(engine.spec.stop_grace).await;
    tracing::info!(model = %engine.spec.model, graceful, "engine stopped");
    engine.set(on_change, |s| {
        s.phase = Phase::Stopped;
        s.pid = None;
    });
}

/// Leaves a run that survives vllamad running, for the next vllamad.
fn let_go(engine: &Engine, on_change: &ObserverFn, run: Box<dyn Run>) {
    tracing::info!(model = %engine.spec.model, pid = run.pid(), "engine left running for the next vllamad");
    drop(run);
    engine.set(on_change, |s| {
        s.phase = Phase::Stopped;
        s.pid = None;
    });
}

/// Puts the engine to sleep (`to` Sleeping) or wakes it (`to` Ready), when its kind can.
async fn sleep_wake(engine: &Engine, to: Phase) -> Result<(), EngineError> {
    let what = if to == Phase::Sleeping {
        "sleep"
    } else {
        "wake up"
    };
    let refused = |message: String| EngineError::SleepWake {
        model: engine.spec.model.clone(),
        what,
        message,
    };
    let (sleep, wake) = engine.spec.kind.sleep_paths().ok_or_else(|| {
        refused(format!(
            "a {} engine does not sleep",
            engine.spec.kind.name()
        ))
    })?;
    let path = if to == Phase::Sleeping { sleep } else { wake };
    engine
        .client
        .post_ok(path, SLEEP_WAKE_TIMEOUT)
        .await
        .map_err(|e| refused(e.to_string()))
}

/// Asks the engine's kind whether it is ready until it is (`Ok`), refuses, or `timeout`
/// passes (the error says why).
async fn wait_ready(engine: &Engine, interval: Duration, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let per_try = Duration::from_secs(5).min(timeout);
    let model = &engine.spec.model;
    loop {
        let why = match engine.spec.kind.probe(&engine.client, per_try).await {
            Probe::Ready => return Ok(()),
            Probe::Refused(why) => return Err(why),
            Probe::NotYet(why) => why,
        };
        if Instant::now() + interval >= deadline {
            return Err(if engine.spec.kind.local() {
                format!("the engine for {model} did not become ready within {timeout:?} (engine.load_timeout)")
            } else {
                format!("the remote engine for {model} did not answer within {timeout:?}: {why}")
            });
        }
        tokio::time::sleep(interval).await;
    }
}

/// After a failure: waits for the backoff, and (unless the engine restarts on its own) for a
/// Restart command. `None` when the engine is to stop for good.
async fn wait_for_retry(
    engine: &Engine,
    commands: &mut mpsc::Receiver<CommandBox>,
    backoff: &mut Duration,
) -> Option<()> {
    let retry_at = tokio::time::Instant::now() + *backoff;
    *backoff = (*backoff * 2).min(engine.spec.backoff_max);
    let mut asked = engine.spec.auto_restart;
    loop {
        let wait_backoff = async {
            if asked {
                tokio::time::sleep_until(retry_at).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = wait_backoff => return Some(()),
            cmd = commands.recv() => match cmd.map(|c| c.0) {
                None => return None,
                Some(Command::Stop(ack) | Command::LetGo(ack)) => {
                    engine.state.send_modify(|s| { s.phase = Phase::Stopped; s.since = Instant::now(); });
                    let _ = ack.send(());
                    return None;
                }
                Some(Command::Restart) => asked = true,
                Some(Command::Hung(_)) => {}
                Some(Command::Sleep(tx) | Command::Wake(tx)) => {
                    let _ = tx.send(Err(EngineError::NotReady { model: engine.spec.model.clone(), phase: Phase::Failed }));
                }
            },
        }
    }
}
