//! Readings of processes from `/proc` (memory, CPU, fds): kernel memory, never disk, so
//! cheap enough for a scrape; engines' readings are still taken by the sampler.

use std::path::Path;

/// What `/proc` says of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessReading {
    pub resident_bytes: u64,
    /// Since the Unix epoch.
    pub start_time_seconds: f64,
    pub open_fds: u64,
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096)
}

/// Resident memory of a process, 0 when it is gone.
pub fn resident_bytes(pid: u32) -> u64 {
    statm_resident(&Path::new("/proc").join(pid.to_string()).join("statm"))
}

fn statm_resident(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page_size())
}

/// vllamad itself.
pub fn read_self() -> ProcessReading {
    let resident_bytes = statm_resident(Path::new("/proc/self/statm"));
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    ProcessReading {
        resident_bytes,
        start_time_seconds: *START_TIME.get_or_init(|| start_time().unwrap_or(0.0)),
        open_fds,
    }
}

/// It does not change: read once, not on every scrape.
static START_TIME: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// Boot time plus the process's start in clock ticks (field 22 of /proc/self/stat).
fn start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after its closing parenthesis.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (hz > 0.0).then(|| btime + ticks / hz)
}

/// Gives the pages that freed memory left in glibc's arenas back to the system, so that
/// vllamad's RSS follows what it holds (its heap stays within a few MiB; without this the
/// arenas keep a load peak's pages). Called by the sampler, off the request path.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let r = read_self();
        assert!(r.resident_bytes > 1024 * 1024, "{r:?}");
        assert!(r.open_fds >= 3, "{r:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            (now - r.start_time_seconds).abs() < 3600.0,
            "{r:?} vs {now}"
        );
        assert_eq!(resident_bytes(u32::MAX), 0);
        assert!(resident_bytes(std::process::id()) > 0);
    }
}
