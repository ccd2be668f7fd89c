//! Who may call the public API from a browser, as Ollama decides it: CORS for allowed
//! origins (Ollama's defaults plus `api.origins`), and a DNS-rebinding guard that refuses a
//! `Host` that is not this machine when the listener is on loopback.

use std::net::IpAddr;
use std::sync::OnceLock;

/// Ollama's default origins; `*` matches anything.
const DEFAULT_ORIGINS: &[&str] = &[
    "http://localhost",
    "https://localhost",
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://0.0.0.0",
    "https://0.0.0.0",
    "http://0.0.0.0:*",
    "https://0.0.0.0:*",
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
];

/// Glob with `*` only.
fn matches(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            tail.is_empty()
                || (0..=rest.len()).any(|i| rest.get(i..).is_some_and(|r| matches(tail, r)))
        }
    }
}

pub fn origin_allowed(origin: &str, extra: &[String]) -> bool {
    DEFAULT_ORIGINS
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .any(|p| matches(p, origin))
}

fn machine_hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    })
}

/// Whether a request's `Host` may reach a loopback listener.
pub fn host_allowed(host: Option<&str>) -> bool {
    let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) else {
        return true;
    };
    // Strip the port: "[::1]:11434", "127.0.0.1:11434", "localhost:11434".
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    let name = name.to_ascii_lowercase();
    if let Ok(ip) = name.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(v4) => {
                v4.is_loopback() || v4.is_private() || v4.is_unspecified() || v4.is_link_local()
            }
            IpAddr::V6(v6) => {
                v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00
            }
        };
    }
    name == "localhost"
        || name.ends_with(".localhost")
        || name.ends_with(".local")
        || name.ends_with(".internal")
        || (!machine_hostname().is_empty() && name == machine_hostname())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_default_origins() {
        for ok in [
            "http://localhost",
            "http://localhost:3000",
            "https://127.0.0.1:8080",
            "app://obsidian.md",
            "tauri://localhost",
            "vscode-webview://abc",
            "file://",
        ] {
            assert!(origin_allowed(ok, &[]), "{ok}");
        }
        for no in [
            "http://evil.com",
            "http://localhost.evil.com",
            "https://example.org:3000",
            "null",
        ] {
            assert!(!origin_allowed(no, &[]), "{no}");
        }
        assert!(origin_allowed(
            "https://chat.example.org",
            &["https://*.example.org".into()]
        ));
        assert!(origin_allowed("http://anything", &["*".into()]));
    }

    #[test]
    fn dns_rebinding_guard() {
        for ok in [
            None,
            Some("localhost:11434"),
            Some("127.0.0.1:11434"),
            Some("[::1]:11434"),
            Some("10.0.0.5"),
            Some("myhost.local"),
            Some("LOCALHOST"),
        ] {
            assert!(host_allowed(ok), "{ok:?}");
        }
        for no in [
            "evil.com",
            "evil.com:11434",
            "8.8.8.8:11434",
            "attacker.example",
        ] {
            assert!(!host_allowed(Some(no)), "{no}");
        }
        let me = machine_hostname().to_string();
        if !me.is_empty() {
            assert!(host_allowed(Some(&format!("{me}:11434"))));
        }
    }
}
