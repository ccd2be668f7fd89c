//! Where text and JSON log lines go: stderr, in batches.
//!
//! Access lines come as tracing events through [`BatchedStderr`], or written by hand straight
//! into the batch ([`append_access`], `crate::access_line`).
//!
//! An access line per request was a `write(2)` per request on the request path. Access lines
//! are appended to a buffer instead, which a flusher thread writes out at most `GATHER`
//! after the first line that found it empty: one write for however many lines came
//! meanwhile. Every other line is written at once, after the buffer (so the order stays). The flusher sleeps on a condition variable while there is nothing to write (no
//! wake-ups when idle) and is only woken by a line that finds it asleep, so under load no
//! line costs a system call. [`flush`] writes what is left (at shutdown, and before a
//! panic's message).

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The access lines' target: the one line per request, batched; the rest is written as it
/// comes.
pub const ACCESS: &str = "vllamad::access";

/// How long the flusher gathers lines before writing them.
const GATHER: Duration = Duration::from_millis(50);
/// A buffer this full is written at once by the line that filled it.
const HIGH_WATER: usize = 256 * 1024;

#[derive(Debug, Default)]
struct Pending {
    lines: Vec<u8>,
    /// The flusher waits for a first line (and must be woken for it).
    asleep: bool,
    /// There is a flusher (without one, every line is written as it comes).
    flusher: bool,
}

/// Where lines go: stderr (a test's sink in the tests).
type Sink = fn(&[u8]);

fn to_stderr(bytes: &[u8]) {
    let _ = std::io::stderr().lock().write_all(bytes);
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    sink: Sink,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            pending: Mutex::default(),
            wake: Condvar::new(),
            sink: to_stderr,
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what is pending (the lock held: lines keep their order).
    fn drain(&self, pending: &mut Pending) {
        if !pending.lines.is_empty() {
            (self.sink)(&pending.lines);
            pending.lines.clear();
        }
    }
}

static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();

/// The batching stderr writer (one per process: the first call starts its flusher).
#[derive(Debug, Clone)]
pub struct BatchedStderr {
    shared: Arc<Shared>,
}

/// The one writer's state (the first call starts its flusher).
fn shared() -> &'static Arc<Shared> {
    SHARED.get_or_init(|| {
        let shared = Arc::new(Shared::default());
        let flusher = shared.clone();
        let started = std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(move || flush_loop(&flusher));
        shared.lock().flusher = started.is_ok();
        shared
    })
}

impl BatchedStderr {
    pub fn new() -> BatchedStderr {
        BatchedStderr {
            shared: shared().clone(),
        }
    }
}

impl Default for BatchedStderr {
    fn default() -> Self {
        BatchedStderr::new()
    }
}

fn flush_loop(shared: &Shared) {
    loop {
        let mut pending = shared.lock();
        while pending.lines.is_empty() {
            pending.asleep = true;
            pending = shared.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
        pending.asleep = false;
        drop(pending);
        std::thread::sleep(GATHER);
        shared.drain(&mut shared.lock());
    }
}

/// Writes every pending line now.
pub fn flush() {
    if let Some(shared) = SHARED.get() {
        shared.drain(&mut shared.lock());
    }
}

/// One event's line.
pub struct Line<'a> {
    shared: &'a Shared,
    batched: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.shared
            .push(self.batched, |lines| lines.extend_from_slice(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    /// Adds a line that `write` appends. A batched one waits for the flusher (unless it
    /// fills the buffer); any other is written at once, with the batch before it in one
    /// write.
    fn push(&self, batched: bool, write: impl FnOnce(&mut Vec<u8>)) {
        let mut pending = self.lock();
        write(&mut pending.lines);
        if !batched || !pending.flusher || pending.lines.len() >= HIGH_WATER {
            self.drain(&mut pending);
        } else if pending.asleep {
            pending.asleep = false;
            self.wake.notify_one();
        }
    }
}

/// Adds an access line that `write` appends straight into the batch (no buffer of its own,
/// no copy).
pub fn append_access(write: impl FnOnce(&mut Vec<u8>)) {
    shared().push(true, write);
}

/// Whether an event's line waits for the flusher.
fn batched(target: &str, level: Level) -> bool {
    target == ACCESS && level > Level::WARN
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            shared: &self.shared,
            batched: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a> {
        Line {
            shared: &self.shared,
            batched: batched(meta.target(), *meta.level()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the test writers wrote, in order (one test at a time uses it).
    static WRITTEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    fn sink(bytes: &[u8]) {
        WRITTEN.lock().unwrap().extend_from_slice(bytes);
    }

    fn written() -> String {
        String::from_utf8(std::mem::take(&mut *WRITTEN.lock().unwrap())).unwrap()
    }

    fn shared() -> Shared {
        let shared = Shared {
            sink,
            ..Shared::default()
        };
        shared.lock().flusher = true;
        shared
    }

    fn line(shared: &Shared, batched: bool, text: &str) {
        let mut l = Line { shared, batched };
        l.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn batched_lines_wait_and_others_take_them_along_in_order() {
        let _one = TEST.lock().unwrap();
        let shared = shared();
        line(&shared, true, "access 1\n");
        line(&shared, true, "access 2\n");
        assert_eq!(written(), "", "batched");
        // A warning writes the batch first, then itself.
        line(&shared, false, "warning\n");
        assert_eq!(written(), "access 1\naccess 2\nwarning\n");
        // A flusher asleep is woken by the first line only.
        shared.lock().asleep = true;
        line(&shared, true, "access 3\n");
        assert!(!shared.lock().asleep);
        shared.drain(&mut shared.lock());
        assert_eq!(written(), "access 3\n");
        // Without a flusher every line is written at once.
        shared.lock().flusher = false;
        line(&shared, true, "access 4\n");
        assert_eq!(written(), "access 4\n");
    }

    #[test]
    fn a_full_batch_is_written_by_the_line_that_fills_it() {
        let _one = TEST.lock().unwrap();
        let shared = shared();
        let half = "x".repeat(HIGH_WATER / 2);
        line(&shared, true, &half);
        assert_eq!(written(), "");
        line(&shared, true, &half);
        assert_eq!(written().len(), HIGH_WATER);
    }

    /// The tests share `WRITTEN`.
    static TEST: Mutex<()> = Mutex::new(());

    #[test]
    fn only_access_lines_below_warn_are_batched() {
        assert!(batched("vllamad::access", Level::INFO));
        assert!(!batched("vllamad::access", Level::WARN));
        assert!(!batched("vllamad::scheduler", Level::INFO));
        assert!(!batched("vllm", Level::DEBUG));
    }
}
