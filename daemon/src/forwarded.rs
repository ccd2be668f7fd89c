//! Who a request comes from when a reverse proxy stands in front: the connection's peer,
//! unless that peer is one of `api.trusted_proxies` — then the nearest address in
//! `X-Forwarded-For` that is not a trusted proxy itself (read from the right: the entries to
//! the left of it are whatever the client wrote, and cannot be believed).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// An address or a network (`10.0.0.0/8`, `::1`), as `api.trusted_proxies` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl TryFrom<String> for Network {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an IP address or network (10.0.0.0/8, ::1)");
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.as_str(), None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(bad)?,
            None => max,
        };
        Ok(Network { addr, prefix })
    }
}

impl From<Network> for String {
    fn from(n: Network) -> String {
        n.to_string()
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |a: IpAddr| -> (u128, u32) {
            match a {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let ((want, width), (have, other)) = (bits(self.addr), bits(ip));
        if width != other {
            return false;
        }
        let host_bits = width - u32::from(self.prefix);
        let mask = if host_bits >= 128 {
            0
        } else {
            !0u128 << host_bits
        };
        want & mask == have & mask
    }
}

/// The address a request is from: `peer`, or — when `peer` is a trusted proxy — the nearest
/// untrusted address its `X-Forwarded-For` names (all trusted: the leftmost).
pub fn client(peer: IpAddr, headers: &http::HeaderMap, trusted: &[Network]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut nearest = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // Garbage ends the chain: believe nothing beyond it.
            return nearest;
        };
        if !is_trusted(ip) {
            return ip;
        }
        nearest = ip;
    }
    nearest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Network {
        Network::try_from(s.to_string()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn networks_parse_and_contain() {
        assert!(net("10.0.0.0/8").contains(ip("10.1.2.3")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!net("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(net("::1").contains(ip("::1")));
        assert!(net("fd00::/8").contains(ip("fd12::1")));
        assert!(
            net("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")),
            "v4-mapped"
        );
        assert!(!net("::/0").contains(ip("10.0.0.1")), "families differ");
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", ""] {
            assert!(Network::try_from(bad.to_string()).is_err(), "{bad}");
        }
        assert_eq!(String::from(net("10.0.0.0/8")), "10.0.0.0/8");
    }

    #[test]
    fn only_a_trusted_peer_is_believed_and_only_up_to_the_first_untrusted_hop() {
        let trusted = [net("127.0.0.0/8"), net("10.0.0.0/8")];
        // Not trusted: the header is the client's own word.
        assert_eq!(
            client(ip("198.51.100.1"), &xff(&["203.0.113.7"]), &trusted),
            ip("198.51.100.1")
        );
        // Through the local proxy.
        assert_eq!(
            client(ip("127.0.0.1"), &xff(&["203.0.113.7"]), &trusted),
            ip("203.0.113.7")
        );
        // A forged entry on the left is not believed.
        let chain = xff(&["6.6.6.6, 203.0.113.7", "10.0.0.5"]);
        assert_eq!(client(ip("127.0.0.1"), &chain, &trusted), ip("203.0.113.7"));
        // No header, or garbage: the nearest trusted hop.
        assert_eq!(
            client(ip("127.0.0.1"), &xff(&[]), &trusted),
            ip("127.0.0.1")
        );
        assert_eq!(
            client(ip("127.0.0.1"), &xff(&["bogus, 10.0.0.5"]), &trusted),
            ip("10.0.0.5")
        );
        // Nothing trusted: never read.
        assert_eq!(
            client(ip("127.0.0.1"), &xff(&["203.0.113.7"]), &[]),
            ip("127.0.0.1")
        );
    }
}
