//! keep_alive: one timer per loaded model, re-armed on every release, unloading the model
//! when its deadline passes unused (epochs make a stale deadline do nothing).

use super::*;

impl Scheduler {
    /// The task that unloads `name` when its keep_alive deadline passes unused. One per slot,
    /// for the slot's life: a task per release would leave one sleeping for the whole
    /// keep_alive after every request that left the model idle (thousands under load).
    pub(super) fn spawn_keep_alive_timer(
        &self,
        name: &ModelName,
    ) -> watch::Sender<Option<(tokio::time::Instant, u64)>> {
        let (tx, mut rx) = watch::channel(None);
        let scheduler = Arc::downgrade(&self.inner);
        let cancel = self.inner.cancel.clone();
        let name = name.clone();
        self.inner.tracker.spawn(async move {
            loop {
                let deadline = *rx.borrow_and_update();
                let fired = async {
                    match deadline {
                        Some((at, epoch)) => {
                            tokio::time::sleep_until(at).await;
                            epoch
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    epoch = fired => {
                        let Some(inner) = scheduler.upgrade() else { return };
                        Scheduler { inner }.expire(&name, epoch).await;
                        // Wait for the next deadline (or the slot's end).
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = cancel.cancelled() => return,
                }
            }
        });
        tx
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
