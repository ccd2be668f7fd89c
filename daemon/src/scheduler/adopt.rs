//! Taking up the engines an earlier vllamad left running (engine units): each is served
//! again where it was placed, with the rest of its keep_alive, when its model is still
//! configured and its launch is the one this configuration makes (its host checks that and
//! replaces an engine started otherwise); the others are stopped.

use super::*;
use crate::engine::host::Survivor;

impl Scheduler {
    /// Finds and takes up the engines left running; returns how many were taken up. Their
    /// slots exist when it returns (requests wait for them, never start another), the
    /// health check of each runs in its supervisor.
    pub async fn adopt_survivors(&self) -> usize {
        let launcher = self.inner.launcher.clone();
        let found = tokio::task::spawn_blocking(move || launcher.survivors())
            .await
            .unwrap_or_default();
        let mut taken = 0;
        for survivor in found {
            if self.take_up(&survivor).await {
                taken += 1;
            } else {
                self.inner.launcher.discard(&survivor.id).await;
            }
        }
        if taken > 0 {
            tracing::info!(
                engines = taken,
                "took up the engines the last vllamad left running"
            );
        }
        taken
    }

    async fn take_up(&self, survivor: &Survivor) -> bool {
        let config = self.config();
        let Ok(asked) = ModelName::parse(&survivor.model) else {
            return false;
        };
        let Ok((name, model)) = models::lookup(&config.config, &self.inner.aliases, &asked) else {
            tracing::info!(model = %survivor.model, "an engine left running serves a model no longer configured");
            return false;
        };
        if model.remote.is_some() {
            return false;
        }
        let left = survivor
            .keep_alive_until
            .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default());
        if left == Some(Duration::ZERO) && !model.pinned {
            tracing::info!(model = %name, "an engine left running whose keep_alive ended meanwhile");
            return false;
        }
        let pinned = model.pinned;
        match self
            .start_with(&name, model.into_owned(), None, Some(survivor))
            .await
        {
            Ok(lease) => drop(lease),
            Err(e) => {
                tracing::warn!(model = %name, error = %e, "cannot take up the engine left running");
                return false;
            }
        }
        // The rest of its keep_alive, not a new one.
        if let (Some(left), false) = (left, pinned) {
            let mut slots = self.slots();
            if let Some(slot) = slots.get_mut(&name) {
                if slot.pending == 0 {
                    slot.expires_at = Some((Instant::now() + left, SystemTime::now() + left));
                    slot.expiry
                        .arm(tokio::time::Instant::now() + left, slot.epoch);
                }
            }
        }
        true
    }

    /// Records when each engine's keep_alive ends (for the next vllamad). Blocking writes,
    /// done off the workers.
    pub(super) async fn remember_keep_alives(&self) {
        let due: Vec<(String, Option<SystemTime>)> = self
            .slots()
            .values()
            .map(|s| (s.engine.spec.id.clone(), s.expires_at.map(|(_, wall)| wall)))
            .collect();
        let launcher = self.inner.launcher.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (id, until) in due {
                launcher.remember(&id, until);
            }
        })
        .await;
    }
}
