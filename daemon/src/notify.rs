//! The systemd notification protocol (`sd_notify(3)`): READY, STATUS, RELOADING, STOPPING
//! and the watchdog. Without `NOTIFY_SOCKET` every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Set (to anything) in the environment, enables test-only hooks (see `spawn_watchdog`).
pub const TEST_HOOKS: &str = "VLLAMA_TEST_HOOKS";

/// Sends state changes to the service manager. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    pub fn from_env() -> Self {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }

    /// `READY=1` with the current status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (required by `Type=notify-reload`).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading configuration"),
            ]),
            Err(e) => {
                tracing::warn!(error = %e, "reading CLOCK_MONOTONIC failed");
                self.send(&[NotifyState::Reloading]);
            }
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Sends `WATCHDOG=1` at half the interval systemd asked for (`WATCHDOG_USEC`), from a
    /// task on the main runtime: if the runtime hangs, the pings stop and systemd restarts
    /// the daemon.
    pub fn spawn_watchdog(&self, tracker: &TaskTracker, shutdown: CancellationToken) {
        let Some(timeout) = sd_notify::watchdog_enabled() else {
            return;
        };
        let period = (timeout / 2).max(Duration::from_millis(10));
        tracing::info!(timeout = ?timeout, period = ?period, "systemd watchdog enabled");
        let notifier = self.clone();
        // Test hook (the end-to-end test under real systemd): with VLLAMA_TEST_HOOKS=1,
        // SIGUSR2 stops the pings, as a hung daemon would, so the watchdog can be seen to act.
        let mut stall = std::env::var_os(TEST_HOOKS).and_then(|_| {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()).ok()
        });
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let stalled = async {
                match stall.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(stalled);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = &mut stalled => {
                        tracing::warn!("test hook: SIGUSR2, watchdog pings stopped");
                        break;
                    }
                    _ = tick.tick() => notifier.send(&[NotifyState::Watchdog]),
                }
            }
        });
    }
}
