//! Fair turns at an engine.
//!
//! An engine runs a bounded number of requests at once (vLLM's `--max-num-seqs`); beyond
//! that it queues them first come, first served, so one client that sends 500 requests makes
//! everyone behind them wait for all 500. vllamad keeps the engine's batch full but never
//! over-full — at most `capacity` requests reach it — and holds the rest here, one queue per
//! tenant (an API key, or a client address when there are no keys). Each time a request
//! ends, the next turn goes to the next tenant in round-robin order that has one waiting: a
//! tenant with one request waits for at most one turn of each other tenant, however many
//! the others have queued.
//!
//! A turn is a [`Turn`]: dropping it (the request is over, or its client went away) passes
//! the turn on. A waiter that gives up before its turn comes is skipped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Who a request is counted as, for fairness: a key's id, or `ip:<address>`.
pub type Tenant = Arc<str>;

#[derive(Debug, Default)]
struct State {
    /// Requests that may run at once (0: no bound, nobody ever waits).
    capacity: usize,
    running: usize,
    waiting: HashMap<Tenant, VecDeque<oneshot::Sender<Turn>>>,
    /// Tenants with a request waiting, in the order their next turns come.
    order: VecDeque<Tenant>,
}

impl State {
    fn has_room(&self) -> bool {
        self.capacity == 0 || self.running < self.capacity
    }
}

/// One engine's turns.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<State>,
}

/// A request's turn at the engine; dropping it gives the turn to the next waiter.
#[derive(Debug)]
pub struct Turn {
    gate: Option<Arc<Gate>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.release();
        }
    }
}

impl Gate {
    pub fn new(capacity: usize) -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new(State {
                capacity,
                ..State::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for `tenant`'s turn: at once while the engine has room and nobody waits.
    pub async fn enter(self: &Arc<Self>, tenant: &Tenant) -> Turn {
        let ready = {
            let mut s = self.lock();
            if s.has_room() && s.order.is_empty() {
                s.running += 1;
                return Turn {
                    gate: Some(self.clone()),
                };
            }
            let (tx, rx) = oneshot::channel();
            match s.waiting.get_mut(tenant) {
                Some(queue) => {
                    queue.retain(|w| !w.is_closed());
                    queue.push_back(tx);
                }
                None => {
                    s.waiting.insert(tenant.clone(), VecDeque::from([tx]));
                    s.order.push_back(tenant.clone());
                }
            }
            rx
        };
        // The sender goes only with a turn in it, or with the gate: either way run.
        ready.await.unwrap_or(Turn { gate: None })
    }

    /// A request ended: its turn goes to the next tenant's first waiter, or back to the room.
    fn release(self: &Arc<Self>) {
        let mut s = self.lock();
        s.running = s.running.saturating_sub(1);
        self.fill(&mut s);
    }

    /// Gives turns to waiters while there is room.
    fn fill(self: &Arc<Self>, s: &mut State) {
        while s.has_room() {
            let Some(tenant) = s.order.pop_front() else {
                return;
            };
            let Some(queue) = s.waiting.get_mut(&tenant) else {
                continue;
            };
            let next = queue.pop_front();
            if queue.is_empty() {
                s.waiting.remove(&tenant);
            } else {
                s.order.push_back(tenant);
            }
            let Some(waiter) = next else { continue };
            s.running += 1;
            if let Err(mut unsent) = waiter.send(Turn {
                gate: Some(self.clone()),
            }) {
                // That client went away: the turn is not taken, try the next one.
                unsent.gate = None;
                s.running -= 1;
            }
        }
    }

    /// A new bound (a reload); more room lets waiters in at once.
    pub fn set_capacity(self: &Arc<Self>, capacity: usize) {
        let mut s = self.lock();
        s.capacity = capacity;
        self.fill(&mut s);
    }

    /// Requests waiting for a turn (those whose clients left may be counted until skipped).
    pub fn waiting(&self) -> usize {
        self.lock().waiting.values().map(VecDeque::len).sum()
    }

    /// Requests holding a turn.
    pub fn running(&self) -> usize {
        self.lock().running
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tenant(name: &str) -> Tenant {
        Arc::from(name)
    }

    /// Starts a waiter that records its label when its turn comes, then holds the turn
    /// until told to let go.
    fn waiter(
        gate: &Arc<Gate>,
        who: &str,
        label: u32,
        log: &Arc<Mutex<Vec<u32>>>,
    ) -> (tokio::task::JoinHandle<()>, oneshot::Sender<()>) {
        let (gate, who, log) = (gate.clone(), tenant(who), log.clone());
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let turn = gate.enter(&who).await;
            log.lock().unwrap().push(label);
            let _ = done_rx.await;
            drop(turn);
        });
        (task, done_tx)
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn turns_alternate_between_tenants_whatever_their_queues() {
        let gate = Gate::new(1);
        let log = Arc::new(Mutex::new(Vec::new()));
        let first = gate.enter(&tenant("heavy")).await;
        // The heavy tenant queues 10 (labels 0..10) before the light one queues 2 (100, 101).
        let mut held = Vec::new();
        for n in 0..10 {
            held.push(waiter(&gate, "heavy", n, &log));
            settle().await;
        }
        for n in [100, 101] {
            held.push(waiter(&gate, "light", n, &log));
            settle().await;
        }
        assert_eq!(gate.waiting(), 12);
        let mut done: HashMap<u32, oneshot::Sender<()>> = held
            .into_iter()
            .zip((0..10).chain([100, 101]))
            .map(|((_, d), label)| (label, d))
            .collect();
        drop(first);
        // Let each go once its turn came: one runs at a time.
        for _ in 0..12 {
            settle().await;
            let ran = *log.lock().unwrap().last().unwrap();
            let _ = done.remove(&ran).unwrap().send(());
        }
        settle().await;
        let order = log.lock().unwrap().clone();
        // Round-robin: the light tenant's two go second and fourth, not after all ten.
        assert_eq!(&order[..5], &[0, 100, 1, 101, 2], "{order:?}");
        assert_eq!(order.len(), 12);
        assert_eq!((gate.running(), gate.waiting()), (0, 0));
    }

    #[tokio::test]
    async fn a_waiter_that_leaves_is_skipped_and_holds_nothing() {
        let gate = Gate::new(1);
        let first = gate.enter(&tenant("a")).await;
        let gone = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.enter(&tenant("b")).await })
        };
        settle().await;
        gone.abort();
        let _ = gone.await;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (task, done) = waiter(&gate, "c", 7, &log);
        settle().await;
        drop(first);
        settle().await;
        assert_eq!(*log.lock().unwrap(), vec![7], "c ran after b left");
        assert_eq!(gate.running(), 1);
        let _ = done.send(());
        task.await.unwrap();
        assert_eq!((gate.running(), gate.waiting()), (0, 0));
    }

    #[tokio::test]
    async fn more_room_lets_waiters_in_and_no_bound_never_waits() {
        let gate = Gate::new(1);
        let log = Arc::new(Mutex::new(Vec::new()));
        let first = gate.enter(&tenant("a")).await;
        let (t1, d1) = waiter(&gate, "a", 1, &log);
        let (t2, d2) = waiter(&gate, "b", 2, &log);
        settle().await;
        assert!(log.lock().unwrap().is_empty());
        gate.set_capacity(3);
        settle().await;
        assert_eq!(log.lock().unwrap().len(), 2);
        let unbounded = Gate::new(0);
        let mut many = Vec::new();
        for _ in 0..100 {
            many.push(unbounded.enter(&tenant("x")).await);
        }
        assert_eq!(unbounded.running(), 100);
        drop(many);
        assert_eq!(unbounded.running(), 0);
        drop(first);
        let _ = (d1.send(()), d2.send(()));
        let _ = (t1.await, t2.await);
        assert_eq!(gate.running(), 0);
    }
}
