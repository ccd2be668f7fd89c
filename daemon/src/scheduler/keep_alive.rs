//! keep_alive: one timer per loaded model, re-armed on every release, unloading the model
//! when its deadline passes unused (epochs make a stale deadline do nothing).
//!
//! A release only writes the new deadline down; the timer is woken for it only when it
//! comes sooner than the one the timer sleeps to (or the timer sleeps to none). Under load
//! every release moves the deadline later, and the timer, finding it moved when it wakes,
//! sleeps on: no wake-up of the timer's thread (the main runtime's, while requests are
//! served on connection threads) for each request.

use tokio::sync::Notify;

use super::*;

/// A slot's keep_alive deadline, shared by its releases and its timer. Dropped with the
/// slot, which ends the timer's task.
#[derive(Debug, Default)]
pub(super) struct Expiry {
    state: Arc<ExpiryState>,
}

#[derive(Debug, Default)]
struct ExpiryState {
    times: Mutex<Times>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Times {
    /// The deadline and the epoch it was set at.
    deadline: Option<(tokio::time::Instant, u64)>,
    /// What the timer sleeps to; `None`: to no deadline.
    sleeping_to: Option<tokio::time::Instant>,
    /// The slot is gone.
    ended: bool,
}

impl ExpiryState {
    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        // Plain values: a panic while the lock was held left nothing half-written.
        self.times.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Expiry {
    /// The model unloads at `at` unless used since (`epoch` then moved on).
    pub(super) fn arm(&self, at: tokio::time::Instant, epoch: u64) {
        let wake = {
            let mut times = self.state.times();
            times.deadline = Some((at, epoch));
            times.sleeping_to.is_none_or(|to| at < to)
        };
        if wake {
            self.state.wake.notify_one();
        }
    }
}

#[cfg(test)]
impl Expiry {
    pub(super) fn wake_for_test(&self) -> &Notify {
        &self.state.wake
    }

    pub(super) fn set_sleeping_to_for_test(&self, to: tokio::time::Instant) {
        self.state.times().sleeping_to = Some(to);
    }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        self.state.times().ended = true;
        self.state.wake.notify_one();
    }
}

impl Scheduler {
    /// The task that unloads `name` when its keep_alive deadline passes unused. One per slot,
    /// for the slot's life: a task per release would leave one sleeping for the whole
    /// keep_alive after every request that left the model idle (thousands under load).
    pub(super) fn spawn_keep_alive_timer(&self, name: &ModelName) -> Expiry {
        let expiry = Expiry::default();
        let state = expiry.state.clone();
        let scheduler = Arc::downgrade(&self.inner);
        let cancel = self.inner.cancel.clone();
        let name = name.clone();
        self.inner.background.spawn(async move {
            loop {
                let deadline = {
                    let mut times = state.times();
                    if times.ended {
                        return;
                    }
                    times.sleeping_to = times.deadline.map(|(at, _)| at);
                    times.deadline
                };
                let fired = async {
                    match deadline {
                        Some((at, epoch)) => {
                            tokio::time::sleep_until(at).await;
                            (at, epoch)
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    (at, epoch) = fired => {
                        // Re-armed while it slept: sleep on to the new deadline.
                        if state.times().deadline != Some((at, epoch)) {
                            continue;
                        }
                        let Some(inner) = scheduler.upgrade() else { return };
                        Scheduler { inner }.expire(&name, epoch).await;
                        // Spent: wait for the next deadline (or the slot's end).
                        let mut times = state.times();
                        if times.deadline == Some((at, epoch)) {
                            times.deadline = None;
                        }
                    }
                    _ = state.wake.notified() => {}
                    _ = cancel.cancelled() => return,
                }
            }
        });
        expiry
    }

    /// keep_alive ended: unload the model unless it was used since.
    pub(super) async fn expire(&self, name: &ModelName, epoch: u64) {
        let _placing = self.inner.placing.lock().await;
        let engine = {
            let mut slots = self.slots();
            match slots.get(name) {
                Some(slot) if slot.epoch == epoch && slot.pending == 0 && !slot.pinned => {
                    slots.remove(name).map(|s| s.engine)
                }
                _ => None,
            }
        };
        if let Some(engine) = engine {
            tracing::info!(model = %name, "keep_alive ended: unloading");
            engine.stop().await;
            (self.inner.on_change)();
        }
    }
}
