//! Limits per client address, for a server with no API keys (`api.client_limits`): the
//! same allowances a key can carry ([`crate::limits`]), counted against the address a
//! request comes from (the proxy's client when `api.trusted_proxies` names the proxy).
//!
//! Addresses are forgotten once nothing of theirs runs and their minute has passed, so a
//! scan from many addresses does not grow vllamad for long.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::limits::{now_seconds, Admitted, Holder, Limited, Limits, Usage};

/// Fewer addresses than this are never swept.
const SWEEP_FLOOR: usize = 4096;

#[derive(Debug)]
struct Seen {
    by_address: HashMap<IpAddr, Arc<Usage>>,
    /// The size at which settled addresses are next swept out.
    sweep_at: usize,
    /// When they last were (seconds since the epoch).
    swept: u64,
}

/// The client addresses seen lately, with what each has used.
#[derive(Debug)]
pub struct Clients {
    seen: Mutex<Seen>,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            seen: Mutex::new(Seen {
                by_address: HashMap::new(),
                sweep_at: SWEEP_FLOOR,
                swept: 0,
            }),
        }
    }
}

impl Clients {
    /// Lets a request from `client` in under `limits`, or says which it meets.
    pub fn admit(&self, client: IpAddr, limits: Limits) -> Result<Admitted, Limited> {
        self.admit_at(client, limits, now_seconds())
    }

    /// [`Clients::admit`] with the clock read (seconds since the epoch) given.
    fn admit_at(&self, client: IpAddr, limits: Limits, now: u64) -> Result<Admitted, Limited> {
        let usage = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let len = seen.by_address.len();
            if len >= seen.sweep_at || (len >= SWEEP_FLOOR && now > seen.swept + 60) {
                seen.by_address.retain(|_, usage| !usage.settled(now));
                // Sweeping again only when the map has doubled (or a minute on) keeps the
                // work per request constant however many addresses are busy at once.
                seen.sweep_at = (seen.by_address.len() * 2).max(SWEEP_FLOOR);
                seen.swept = now;
            }
            seen.by_address.entry(client).or_default().clone()
        };
        usage.touch();
        usage.admit(limits, Holder::Client)
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.seen.lock().map_or(0, |seen| seen.by_address.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn each_address_has_its_own_allowance() {
        let clients = Clients::default();
        let limits = Limits {
            rpm: Some(1),
            ..Limits::default()
        };
        assert!(clients.admit(ip(1), limits).is_ok());
        let over = clients.admit(ip(1), limits).unwrap_err();
        assert_eq!(over.reason(), "client_rpm");
        assert!(clients.admit(ip(2), limits).is_ok(), "another address");
    }

    #[test]
    fn addresses_are_forgotten_once_settled_but_not_while_busy() {
        let clients = Clients::default();
        let limits = Limits {
            concurrency: Some(1),
            ..Limits::default()
        };
        let busy = clients.admit(ip(0), limits).unwrap();
        for n in 1..5000 {
            drop(clients.admit(ip(n), limits));
        }
        assert_eq!(clients.len(), 5000, "all within their minute");
        // Two minutes on, the next request sweeps: the idle ones go, the busy one stays
        // (and still holds its slot).
        let later = now_seconds() + 120;
        drop(clients.admit_at(ip(9999), limits, later));
        assert_eq!(clients.len(), 2);
        let again = clients.admit_at(ip(0), limits, later).unwrap_err();
        assert_eq!(again.reason(), "client_concurrency");
        drop(busy);
        assert!(clients.admit_at(ip(0), limits, later).is_ok());
    }
}
