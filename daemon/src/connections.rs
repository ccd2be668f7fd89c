//! The public listener's connections, and what to close when there are too many.
//!
//! Each connection is in one of three states: *header-less* (accepted, its first request not
//! yet read), *busy* (a request in flight, its response not yet sent to the end) or *idle*
//! (kept alive between requests). Two rules use them:
//!
//! - When `accept` fails for want of file descriptors, the oldest header-less connection
//!   (at least [`MIN_HEADERLESS_AGE`] old: a younger one may have its request on the way) or
//!   else the oldest idle one is closed to make room, and the new client is served. Busy
//!   connections are never shed: that would cut an answer. If every connection is busy, a reserve descriptor
//!   is given up for a moment to accept the new client and tell it `503` at once, instead of
//!   leaving it in the backlog unanswered.
//! - One client address may hold at most `api.max_headerless_per_client` header-less
//!   connections a second old or more: a new connection from an address over its share
//!   closes that address's oldest one (slowloris). A real client's connection is header-less
//!   for microseconds, and a burst of young ones is let be, so the bound meets only clients
//!   that hold connections open without sending — and never locks out the other clients of
//!   the same address (a NAT, a reverse proxy, the machine itself).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// A header-less connection younger than this is not shed: its request may be in its socket
/// buffer, not yet read.
pub const MIN_HEADERLESS_AGE: Duration = Duration::from_secs(1);

const HEADERLESS: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;
const SHED: u8 = 3;

/// What `/metrics` reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub open: u64,
    pub headerless: u64,
    /// Closed to make room when the fd table was full.
    pub shed_fd_limit: u64,
    /// Closed when a new one came from an address over its share of header-less ones.
    pub shed_per_client: u64,
    /// Answered 503 at once: the fd table was full and no connection could be shed.
    pub refused_fd_limit: u64,
}

/// The registry of the public listener's connections.
#[derive(Debug)]
pub struct Connections {
    inner: Mutex<Inner>,
    /// Opened at start; closed for a moment to accept one client when nothing can be shed.
    reserve: Mutex<Option<File>>,
    shed_fd_limit: AtomicU64,
    shed_per_client: AtomicU64,
    refused_fd_limit: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// By age: the oldest first.
    live: BTreeMap<u64, Arc<Conn>>,
    headerless: HashMap<IpAddr, u32>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            inner: Mutex::default(),
            reserve: Mutex::new(File::open("/dev/null").ok()),
            shed_fd_limit: AtomicU64::new(0),
            shed_per_client: AtomicU64::new(0),
            refused_fd_limit: AtomicU64::new(0),
        }
    }
}

/// One connection's state, shared by its task, its service and the registry.
#[derive(Debug)]
pub struct Conn {
    state: AtomicU8,
    born: Instant,
    /// Still counted among its address's header-less connections.
    counted: AtomicBool,
    peer: IpAddr,
    /// Fired when the registry sheds this connection: its task closes it at once.
    shed: CancellationToken,
    /// Fired when the connection's task has closed it (its descriptor is free).
    gone: CancellationToken,
    registry: Arc<Connections>,
}

/// Held by the connection's task: dropping it takes the connection out of the registry.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    conn: Arc<Conn>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Connections {
    /// Registers a just-accepted connection from `peer`. If that address already holds
    /// `limit` header-less connections (0: no bound), its oldest one of a second or more is
    /// shed; the second value says so.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, limit: u32) -> (Registration, bool) {
        let mut inner = lock(&self.inner);
        let held = inner.headerless.get(&peer).copied().unwrap_or(0);
        let mut shed = false;
        if limit > 0 && held >= limit {
            let now = Instant::now();
            shed = inner.live.values().any(|c| {
                c.peer == peer
                    && now.duration_since(c.born) >= MIN_HEADERLESS_AGE
                    && c.try_shed(HEADERLESS)
            });
            if shed {
                self.shed_per_client.fetch_add(1, Ordering::Relaxed);
            }
        }
        inner.headerless.insert(peer, held + 1);
        let id = inner.next_id;
        inner.next_id += 1;
        let conn = Arc::new(Conn {
            state: AtomicU8::new(HEADERLESS),
            born: Instant::now(),
            counted: AtomicBool::new(true),
            peer,
            shed: CancellationToken::new(),
            gone: CancellationToken::new(),
            registry: self.clone(),
        });
        inner.live.insert(id, conn.clone());
        (Registration { id, conn }, shed)
    }

    /// Sheds the oldest header-less connection (of those old enough) or else the oldest idle
    /// one: returns the token that fires once its descriptor is closed, or `None` if none
    /// can go.
    pub fn shed_oldest(&self) -> Option<CancellationToken> {
        let inner = lock(&self.inner);
        let now = Instant::now();
        let victim = inner
            .live
            .values()
            .find(|c| now.duration_since(c.born) >= MIN_HEADERLESS_AGE && c.try_shed(HEADERLESS))
            .or_else(|| inner.live.values().find(|c| c.try_shed(IDLE)))?;
        self.shed_fd_limit.fetch_add(1, Ordering::Relaxed);
        Some(victim.gone.clone())
    }

    /// Gives up the reserve descriptor until the guard is dropped: room to accept one
    /// client and answer it.
    pub fn release_reserve(&self) -> ReserveReleased<'_> {
        drop(lock(&self.reserve).take());
        ReserveReleased(self)
    }

    pub fn refused(&self) {
        self.refused_fd_limit.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Counts {
        let inner = lock(&self.inner);
        Counts {
            open: inner.live.len() as u64,
            headerless: inner.headerless.values().map(|&n| u64::from(n)).sum(),
            shed_fd_limit: self.shed_fd_limit.load(Ordering::Relaxed),
            shed_per_client: self.shed_per_client.load(Ordering::Relaxed),
            refused_fd_limit: self.refused_fd_limit.load(Ordering::Relaxed),
        }
    }

    fn uncount(&self, peer: IpAddr) {
        let mut inner = lock(&self.inner);
        if let Some(n) = inner.headerless.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.headerless.remove(&peer);
            }
        }
    }
}

impl crate::h1::Activity for Conn {
    /// A request's headers were read: the connection is busy until its response ends.
    fn busy(&self) {
        let _ = self
            .state
            .compare_exchange(HEADERLESS, BUSY, Ordering::AcqRel, Ordering::Acquire)
            .or_else(|_| {
                self.state
                    .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire)
            });
        if self.counted.swap(false, Ordering::AcqRel) {
            self.registry.uncount(self.peer);
        }
    }

    /// The response went out to its last byte (or was abandoned).
    fn idle(&self) {
        let _ = self
            .state
            .compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }
}

impl Conn {
    fn try_shed(&self, from: u8) -> bool {
        let shed = self
            .state
            .compare_exchange(from, SHED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if shed {
            self.shed.cancel();
        }
        shed
    }
}

impl Registration {
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    /// Fires when the registry sheds this connection.
    pub fn shed(&self) -> CancellationToken {
        self.conn.shed.clone()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let registry = &self.conn.registry;
        lock(&registry.inner).live.remove(&self.id);
        if self.conn.counted.swap(false, Ordering::AcqRel) {
            registry.uncount(self.conn.peer);
        }
        self.conn.gone.cancel();
    }
}

/// Takes the reserve descriptor back when dropped.
#[derive(Debug)]
pub struct ReserveReleased<'a>(&'a Connections);

impl Drop for ReserveReleased<'_> {
    fn drop(&mut self) {
        let mut reserve = lock(&self.0.reserve);
        if reserve.is_none() {
            *reserve = File::open("/dev/null").ok();
        }
    }
}

/// What a client accepted on the reserve descriptor is told.
pub const NO_ROOM_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: application/json; charset=utf-8\r\nRetry-After: 1\r\nConnection: close\r\n\
Content-Length: 82\r\n\r\n\
{\"error\":\"vllamad is out of file descriptors and every connection is busy; retry\"}";

/// A rate limit for a warning that a flood would repeat: due at most once per period.
#[derive(Debug)]
pub struct LogEvery {
    period: std::time::Duration,
    last: Option<std::time::Instant>,
}

impl LogEvery {
    pub fn new(period: std::time::Duration) -> Self {
        LogEvery { period, last: None }
    }

    pub fn due(&mut self) -> bool {
        let now = std::time::Instant::now();
        let due = self
            .last
            .is_none_or(|t| now.duration_since(t) >= self.period);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// Whether an accept error means the process (or the system) is out of descriptors.
pub fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::Activity;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn admit(r: &Arc<Connections>, last: u8, limit: u32) -> Registration {
        r.admit(ip(last), limit).0
    }

    #[test]
    fn an_address_over_its_share_loses_its_oldest_headerless_connection() {
        let r = Arc::new(Connections::default());
        let held: Vec<_> = (0..3).map(|_| admit(&r, 2, 3)).collect();
        // A burst: the three are too young to be taken for a slowloris.
        let (young, shed) = r.admit(ip(2), 3);
        assert!(!shed && !held[0].shed().is_cancelled());
        drop(young);
        std::thread::sleep(MIN_HEADERLESS_AGE);
        let (fourth, shed) = r.admit(ip(2), 3);
        assert!(shed && held[0].shed().is_cancelled() && !held[1].shed().is_cancelled());
        // Another address is not affected.
        let (other, shed) = r.admit(ip(3), 3);
        assert!(!shed);
        // A connection that sent its request no longer counts.
        held[1].conn().busy();
        assert_eq!(
            r.counts().headerless,
            4,
            "held[0] counts until its task lets it go"
        );
        drop(held);
        let (_fifth, shed) = r.admit(ip(2), 3);
        assert!(!shed);
        assert_eq!(r.counts().shed_per_client, 1);
        drop((fourth, other, _fifth));
        assert_eq!(
            r.counts(),
            Counts {
                shed_per_client: 1,
                ..Counts::default()
            }
        );
        // 0: no bound.
        let many: Vec<_> = (0..100).map(|_| admit(&r, 4, 0)).collect();
        assert_eq!(many.len(), 100);
    }

    #[test]
    fn shedding_takes_the_oldest_connection_that_serves_no_request() {
        let r = Arc::new(Connections::default());
        let busy = admit(&r, 2, 0);
        busy.conn().busy();
        let idle = admit(&r, 2, 0);
        idle.conn().busy();
        idle.conn().idle();
        let headerless = admit(&r, 2, 0);
        // The busy one is older but serving, the header-less one is too young: the idle one
        // goes first.
        let gone = r.shed_oldest().unwrap();
        assert!(idle.shed().is_cancelled() && !busy.shed().is_cancelled());
        assert!(!gone.is_cancelled());
        drop(idle);
        assert!(gone.is_cancelled());
        assert!(
            r.shed_oldest().is_none(),
            "the header-less one is too young"
        );
        std::thread::sleep(MIN_HEADERLESS_AGE);
        let young_idle = admit(&r, 2, 0);
        young_idle.conn().busy();
        young_idle.conn().idle();
        // An old header-less connection goes before an idle one.
        assert!(r.shed_oldest().is_some());
        assert!(!young_idle.shed().is_cancelled());
        drop(young_idle);
        // A shed connection's late request does not revive it.
        assert!(headerless.shed().is_cancelled());
        headerless.conn().busy();
        drop(headerless);
        assert!(r.shed_oldest().is_none(), "only the busy one is left");
        assert_eq!(r.counts().shed_fd_limit, 2);
        assert_eq!(r.counts().open, 1);
    }

    #[test]
    fn the_no_room_answer_is_well_formed() {
        let text = std::str::from_utf8(NO_ROOM_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"].is_string());
    }
}
