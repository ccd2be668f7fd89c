//! An IP address as text, byte for byte what `Display` writes, without `core::fmt` for IPv4
//! (the request path writes a client's address for its span, its tenant and its access
//! line: `Ipv4Addr`'s `Display` was ~1 200 instructions a time).

use std::io::Write;
use std::net::IpAddr;

/// Appends the address to `buf`.
pub fn push(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                buf.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
}

/// The address as a `String`, after `prefix`.
pub fn text(prefix: &str, ip: IpAddr) -> String {
    let mut buf = Vec::with_capacity(prefix.len() + 15);
    buf.extend_from_slice(prefix.as_bytes());
    push(&mut buf, ip);
    // Digits, dots, colons and hex: always UTF-8.
    String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.255",
            "255.255.255.255",
            "::1",
            "::ffff:192.168.0.1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(text("", ip), ip.to_string());
            assert_eq!(text("ip:", ip), format!("ip:{ip}"));
        }
    }
}
