//! After a reload: an engine whose configuration changed what it is started with (its
//! model's arguments, environment, context length…, or the engines' common ones) is
//! restarted once — its requests in flight finish, then it starts again with the new
//! launch; the other engines keep running untouched.

use super::*;

impl Scheduler {
    /// Restarts, in the background, the loaded engines whose launch `old` and the
    /// configuration now in force set differently; returns their models.
    pub fn restart_changed(&self, old: &Config) -> Vec<ModelName> {
        let new = self.config();
        let mut changed: Vec<ModelName> = self
            .slots()
            .iter()
            .filter(|(name, slot)| {
                slot.engine.spec.kind.local() && launch_changed(old, &new.config, name.as_str())
            })
            .map(|(name, _)| name.clone())
            .collect();
        changed.sort();
        for name in &changed {
            let (me, name) = (self.clone(), name.clone());
            self.inner.background.spawn(async move {
                tracing::info!(model = %name, "its engine's configuration changed: restarting it");
                match me.unload(&name, Unload::Drain).await {
                    Ok(()) | Err(SchedError::NotLoaded(_)) => {}
                    Err(e) => {
                        tracing::warn!(model = %name, error = %e, "cannot restart the engine");
                        return;
                    }
                }
                match me.preload(&name, None).await {
                    Ok(_) => {
                        tracing::info!(model = %name, "engine restarted with the new configuration")
                    }
                    Err(e) => {
                        tracing::error!(model = %name, error = %e, "the engine did not start again")
                    }
                }
            });
        }
        changed
    }
}

/// Whether `name`'s engine is started differently under `new` than under `old`: what only
/// decides when it unloads (keep_alive, pinned, preload) does not count.
fn launch_changed(old: &Config, new: &Config, name: &str) -> bool {
    let launch_of = |m: Option<&ModelConfig>| {
        m.map(|m| ModelConfig {
            keep_alive: None,
            pinned: false,
            preload: false,
            ..m.clone()
        })
    };
    let common = |c: &Config| {
        let e = &c.engine;
        (
            e.program.clone(),
            e.args.clone(),
            e.env.clone(),
            e.transport,
            e.context_length,
            e.responses_store,
            e.max_in_flight,
        )
    };
    launch_of(old.models.get(name)) != launch_of(new.models.get(name)) || common(old) != common(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(text, std::path::Path::new("/etc/vllama/v.toml")).unwrap()
    }

    #[test]
    fn only_what_an_engine_is_started_with_counts() {
        let base =
            "[models.\"a:latest\"]\nsource = \"/m/a\"\n[models.\"b:latest\"]\nsource = \"/m/b\"\n";
        let old = config(base);
        let args = config(&base.replace(
            "source = \"/m/a\"",
            "source = \"/m/a\"\nargs = [\"--enforce-eager\"]",
        ));
        assert!(launch_changed(&old, &args, "a:latest"));
        assert!(
            !launch_changed(&old, &args, "b:latest"),
            "b's launch is the same"
        );
        let keep = config(&base.replace(
            "source = \"/m/a\"",
            "source = \"/m/a\"\nkeep_alive = \"1h\"\npinned = true",
        ));
        assert!(
            !launch_changed(&old, &keep, "a:latest"),
            "keep_alive and pinned need no restart"
        );
        let common = config(&format!("[engine]\nargs = [\"--seed=1\"]\n{base}"));
        assert!(
            launch_changed(&old, &common, "a:latest") && launch_changed(&old, &common, "b:latest")
        );
    }
}
