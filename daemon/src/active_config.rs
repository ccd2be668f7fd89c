//! The configuration in force: one loaded generation (the validated file, where it came
//! from, when, and the admin access policy resolved from it), immutable once published on the
//! daemon's `watch` channel. Below the scheduler and the daemon's state, which both read it.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::auth::AccessPolicy;
use crate::config::Config;

/// One loaded configuration, immutable once published.
#[derive(Debug)]
pub struct ActiveConfig {
    pub config: Config,
    pub file: Option<PathBuf>,
    /// 1 at start, +1 for every applied reload.
    pub generation: u64,
    pub loaded_at: SystemTime,
    pub access: AccessPolicy,
}
