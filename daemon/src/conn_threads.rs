//! The threads that serve the public API's connections: one single-threaded tokio runtime
//! per core, each with its own I/O driver and timers, the accepted connections handed to
//! them in turn — nginx's worker processes, as threads of one process.
//!
//! Why not the multi-threaded runtime's workers: they share one I/O driver, so a burst of
//! readiness is taken from epoll by one thread and handed to the others, and on this
//! two-core machine one worker or two served the same (docs/PERFORMANCE.md, "Connections on
//! threads of their own"). Here every connection lives on one thread from its accept to its
//! close: its socket, its engine connections (the pool keeps one set per thread: see
//! [`current`]) and its timers are that thread's, and no wake-up crosses threads on the
//! request path.
//!
//! What must outlive a connection (an engine's supervision, keep-alive timers, pulls) runs
//! on the daemon's main runtime instead ([`crate::tasks::Background`]), whichever thread's
//! request started it.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

thread_local! {
    /// 1 + this thread's index on a connection thread; 0 on any other.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Which connection thread runs the caller: `1..=n` on those, 0 on any other thread (the
/// main runtime's workers, blocking threads, tests). Whatever keeps I/O objects for reuse
/// (the engine pool) keeps one set per value, so that a socket is used by the thread whose
/// I/O driver it is registered with.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// How many connection threads `configured` (`api.threads`; 0: one per core) means on a
/// machine with `cores` cores.
pub fn count(configured: u32, cores: usize) -> usize {
    match configured {
        0 => cores.max(1),
        n => n as usize,
    }
}

/// The running connection threads; stopped by [`ConnThreads::stop`] (or when dropped).
#[derive(Debug)]
pub struct ConnThreads {
    runtimes: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl ConnThreads {
    /// Starts `n` threads (at least one), each running a runtime until stopped.
    pub fn start(n: usize) -> io::Result<ConnThreads> {
        let stop = CancellationToken::new();
        let mut runtimes = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtimes.push(runtime.handle().clone());
            let stopped = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("vllamad-conn-{i}"))
                .spawn(move || {
                    INDEX.with(|index| index.set(i + 1));
                    // What is still running when it stops (connections past the shutdown
                    // grace) is dropped with the runtime.
                    runtime.block_on(stopped.cancelled());
                });
            match thread {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    stop.cancel();
                    return Err(e);
                }
            }
        }
        Ok(ConnThreads {
            runtimes,
            next: AtomicUsize::new(0),
            stop,
            threads: Mutex::new(threads),
        })
    }

    /// The runtimes, for their metrics.
    pub fn runtimes(&self) -> &[Handle] {
        &self.runtimes
    }

    /// Runs `fut` on the next thread in turn, tracked by `tracker`.
    pub fn spawn<F>(&self, tracker: &TaskTracker, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.runtimes.len().max(1);
        match self.runtimes.get(i) {
            Some(runtime) => {
                tracker.spawn_on(fut, runtime);
            }
            None => {
                tracker.spawn(fut);
            }
        }
    }

    /// Ends the threads, dropping what still runs on them, and waits for them to exit
    /// (blocking: call it off the async runtime, or after it).
    pub fn stop(&self) {
        self.stop.cancel();
        let threads = std::mem::take(
            &mut *self
                .threads
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for ConnThreads {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn one_thread_per_core_unless_configured() {
        assert_eq!(count(0, 2), 2);
        assert_eq!(count(0, 0), 1);
        assert_eq!(count(3, 64), 3);
    }

    #[test]
    fn tasks_go_round_the_threads_and_stop_ends_them() {
        let threads = ConnThreads::start(2).unwrap();
        let tracker = TaskTracker::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..4 {
            let seen = seen.clone();
            threads.spawn(&tracker, async move {
                let name = std::thread::current().name().map(str::to_owned);
                seen.lock().unwrap().push((current(), name));
            });
        }
        tracker.close();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait())
                .await
                .unwrap()
        });
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        let conn = |i: usize| (i + 1, Some(format!("vllamad-conn-{i}")));
        assert_eq!(seen, [conn(0), conn(0), conn(1), conn(1)]);
        assert_eq!(current(), 0, "not on a connection thread");
        threads.stop();
        assert!(threads.threads.lock().unwrap().is_empty());
        // Stopped: what is spawned now never runs.
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        threads.spawn(&TaskTracker::new(), async move {
            r.fetch_add(1, Ordering::SeqCst);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
