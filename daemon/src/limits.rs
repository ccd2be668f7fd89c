//! Allowances: requests per minute, tokens per minute and requests at once, for whoever a
//! request is counted against — an API key ([`crate::keys`]) or, with no keys, a client
//! address ([`crate::clients`]).
//!
//! Each minute's allowance is a token bucket a minute deep that refills continuously, so a
//! client over its rate learns exactly when to come back (`Retry-After`). Tokens are counted
//! from the real usage of answers, when they end: a client may go over its minute by what
//! its last requests used, and then waits for the minute to refill.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The limits (none set: none), as the admin API, the keys file and `api.client_limits`
/// spell them.
pub use vllama_proto::KeyLimits as Limits;

/// Whom a limit belongs to, for the refusal's words and the metrics' label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Key,
    Client,
}

/// Which limit a request met, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub limit: &'static str,
    pub retry_after: Duration,
    pub holder: Holder,
}

impl Limited {
    /// The `reason` label of `vllama_requests_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match (self.holder, self.limit) {
            (Holder::Key, "rpm") => "key_rpm",
            (Holder::Key, "tpm") => "key_tpm",
            (Holder::Key, _) => "key_concurrency",
            (Holder::Client, "rpm") => "client_rpm",
            (Holder::Client, "tpm") => "client_tpm",
            (Holder::Client, _) => "client_concurrency",
        }
    }

    pub fn message(&self) -> String {
        let what = match self.limit {
            "rpm" => "requests per minute",
            "tpm" => "tokens per minute",
            _ => "requests at once",
        };
        let who = match self.holder {
            Holder::Key => "this API key",
            Holder::Client => "this client address (api.client_limits)",
        };
        format!(
            "{who} is over its limit of {what}; retry in {} s",
            self.retry_after.as_secs().max(1)
        )
    }
}

/// A minute's allowance that refills continuously (a token bucket of a minute's size).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn full(per_minute: f64, now: Instant) -> Bucket {
        Bucket {
            level: per_minute,
            at: now,
        }
    }

    fn refill(&mut self, per_minute: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * per_minute / 60.0).min(per_minute);
        self.at = now;
    }

    /// Time until the level is at least `need` (a whole second at least).
    fn wait_for(&self, need: f64, per_minute: f64) -> Duration {
        let short = (need - self.level).max(0.0);
        Duration::from_secs_f64((short * 60.0 / per_minute.max(1e-9)).ceil().max(1.0))
    }
}

/// What one holder has used: kept across changes of its limits (a key's successive
/// versions as the keys file changes, a client's across reloads).
#[derive(Debug, Default)]
pub struct Usage {
    /// Seconds since the epoch.
    last_used: AtomicU64,
    in_flight: AtomicU32,
    requests: Mutex<Option<Bucket>>,
    tokens: Mutex<Option<Bucket>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Seconds since the Unix epoch.
pub fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Held while an admitted request runs: dropping it ends the request's share of the
/// holder's concurrency and counts the tokens it was told ([`Admitted::tokens`]).
#[derive(Debug)]
pub struct Admitted {
    usage: Arc<Usage>,
    tpm: Option<u64>,
    tokens: u64,
}

impl Admitted {
    /// The request's usage (prompt and generated tokens), counted when it ends.
    pub fn tokens(&mut self, n: u64) {
        self.tokens = n;
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let usage = &self.usage;
        let _ = usage
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if let (Some(tpm), true) = (self.tpm, self.tokens > 0) {
            let (now, per_minute) = (Instant::now(), tpm as f64);
            let mut tokens = lock(&usage.tokens);
            let bucket = tokens.get_or_insert(Bucket::full(per_minute, now));
            bucket.refill(per_minute, now);
            bucket.level -= self.tokens as f64;
        }
    }
}

impl Usage {
    pub fn touch(&self) {
        self.last_used.store(now_seconds(), Ordering::Relaxed);
    }

    /// Seconds since the epoch of its last use (none since vllamad started: `None`).
    pub fn last_used(&self) -> Option<u64> {
        Some(self.last_used.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// Requests running now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Lets a request in under `limits`, or says which it meets and for how long.
    pub fn admit(self: &Arc<Self>, limits: Limits, holder: Holder) -> Result<Admitted, Limited> {
        let now = Instant::now();
        let refused = |limit, retry_after| Limited {
            limit,
            retry_after,
            holder,
        };
        let max = limits.concurrency.unwrap_or(u32::MAX);
        let taken = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(refused("concurrency", Duration::from_secs(1)));
        }
        // From here on a refusal gives the slot back (the guard's drop).
        let admitted = Admitted {
            usage: self.clone(),
            tpm: limits.tpm,
            tokens: 0,
        };
        if let Some(tpm) = limits.tpm {
            let per_minute = tpm as f64;
            let mut tokens = lock(&self.tokens);
            let bucket = tokens.get_or_insert(Bucket::full(per_minute, now));
            bucket.refill(per_minute, now);
            if bucket.level <= 0.0 {
                return Err(refused("tpm", bucket.wait_for(1.0, per_minute)));
            }
        }
        if let Some(rpm) = limits.rpm {
            let per_minute = f64::from(rpm);
            let mut requests = lock(&self.requests);
            let bucket = requests.get_or_insert(Bucket::full(per_minute, now));
            bucket.refill(per_minute, now);
            if bucket.level < 1.0 {
                return Err(refused("rpm", bucket.wait_for(1.0, per_minute)));
            }
            bucket.level -= 1.0;
        }
        Ok(admitted)
    }

    /// Nothing running and nothing owed: forgetting it changes no answer once its minute
    /// has passed (a fresh `Usage` starts with full buckets).
    pub fn settled(&self, now: u64) -> bool {
        self.in_flight() == 0 && now.saturating_sub(self.last_used.load(Ordering::Relaxed)) > 60
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_per_minute_refill_over_the_minute() {
        let usage = Arc::new(Usage::default());
        let limits = Limits {
            rpm: Some(2),
            ..Limits::default()
        };
        let (a, b) = (
            usage.admit(limits, Holder::Key).unwrap(),
            usage.admit(limits, Holder::Key).unwrap(),
        );
        let over = usage.admit(limits, Holder::Key).unwrap_err();
        assert_eq!(over.limit, "rpm");
        // One request comes back every 30 s at 2 a minute.
        assert!((29..=31).contains(&over.retry_after.as_secs()), "{over:?}");
        drop((a, b));
        assert_eq!(usage.in_flight(), 0, "a refusal holds no slot");
    }

    #[test]
    fn tokens_are_counted_when_requests_end() {
        let usage = Arc::new(Usage::default());
        let limits = Limits {
            tpm: Some(60),
            ..Limits::default()
        };
        let mut a = usage.admit(limits, Holder::Client).unwrap();
        a.tokens(100);
        drop(a);
        let over = usage.admit(limits, Holder::Client).unwrap_err();
        assert_eq!((over.limit, over.reason()), ("tpm", "client_tpm"));
        // 40 tokens short at a token a second.
        assert!((40..=42).contains(&over.retry_after.as_secs()), "{over:?}");
        assert!(over.message().contains("tokens per minute"));
        assert!(over.message().contains("client address"));
    }

    #[test]
    fn settled_only_when_idle_for_a_minute() {
        let usage = Arc::new(Usage::default());
        let held = usage.admit(Limits::default(), Holder::Key).unwrap();
        usage.touch();
        let now = now_seconds();
        assert!(!usage.settled(now + 120), "a request runs");
        drop(held);
        assert!(!usage.settled(now + 30));
        assert!(usage.settled(now + 120));
    }
}
