//! `vllamactl doctor`: one screen of checks, each failure with the command that fixes it.
//! The daemon checks what it alone can see (`GET /v1/doctor`); this adds what the caller
//! sees: whether the daemon answers, the caller's access, and who holds the public port.

use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use hyper::Method;
use vllama_proto::{Check, CheckOutcome, Status, DOCTOR_PATH, STATUS_PATH};

use crate::client::{AdminClient, ClientError};

/// Ollama's (and vllama's) default public address.
const DEFAULT_API: &str = "127.0.0.1:11434";

pub async fn doctor(client: &AdminClient, json: bool) -> Result<ExitCode, ClientError> {
    let mut checks = Vec::new();
    let status = client
        .request(Method::GET, STATUS_PATH)
        .await
        .and_then(|a| a.ok())
        .and_then(|a| a.json::<Status>());
    let api = match &status {
        Ok(s) => {
            checks.push(Check::pass(
                "daemon",
                format!(
                    "vllamad {} answers (pid {}, up {:.0}s): {}",
                    s.version, s.pid, s.uptime_seconds, s.state
                ),
            ));
            s.listeners
                .iter()
                .find(|l| l.name == "api")
                .map(|l| l.address.clone())
        }
        Err(e) => {
            checks.push(Check::fail(
                "daemon",
                first_line(&e.to_string()),
                daemon_fix(e),
            ));
            None
        }
    };
    checks.push(access());
    match client
        .request(Method::GET, DOCTOR_PATH)
        .await
        .and_then(|a| a.ok())
    {
        Ok(answer) => checks.extend(answer.json::<Vec<Check>>()?),
        Err(_) if status.is_err() => checks.push(Check::skip(
            "daemon checks",
            "engine, GPU, disk, hub and configuration are checked by the daemon: start it first",
        )),
        Err(e) => checks.push(Check::fail(
            "daemon checks",
            e.to_string(),
            "journalctl -u vllamad",
        )),
    }
    checks.push(port(api.as_deref().unwrap_or(DEFAULT_API)));
    let ok = checks.iter().all(|c| c.outcome != CheckOutcome::Fail);
    if json {
        let text = serde_json::json!({"ok": ok, "checks": checks});
        println!("{text}");
    } else {
        let color = std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        print!("{}", render(&checks, color));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

fn daemon_fix(e: &ClientError) -> String {
    match e {
        ClientError::NoSocket { .. } => "sudo systemctl enable --now vllamad.socket vllamad-admin.socket".into(),
        ClientError::Refused { .. } => "sudo systemctl restart vllamad-admin.socket vllamad.socket; journalctl -u vllamad".into(),
        ClientError::PermissionDenied { .. } => "sudo usermod -aG vllama $USER (read) or vllama-admin (change), log in again; or use sudo".into(),
        ClientError::Timeout(_) => "systemctl status vllamad; journalctl -u vllamad".into(),
        _ => "journalctl -u vllamad".into(),
    }
}

/// The caller's uid and groups (from /proc, names from /etc/group): what it may do.
fn access() -> Check {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let uid = field("Uid:").into_iter().nth(1).unwrap_or_default();
    let gids = field("Groups:");
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let gid_of = |name: &str| {
        groups.lines().find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(name)).then(|| f.nth(1).unwrap_or("").to_string())
        })
    };
    let member = |name: &str| gid_of(name).is_some_and(|g| gids.contains(&g));
    if uid == "0" {
        Check::pass("access", "root: every command")
    } else if member("vllama-admin") {
        Check::pass(
            "access",
            format!("uid {uid}, group vllama-admin: every command"),
        )
    } else if member("vllama") {
        Check::pass(
            "access",
            format!("uid {uid}, group vllama: status and listings; preload, pull, engine install need sudo or group vllama-admin"),
        )
    } else {
        Check::pass(
            "access",
            format!("uid {uid}, in neither group vllama nor vllama-admin: use sudo, or `sudo usermod -aG vllama $USER`"),
        )
    }
}

/// The public port: answering as vllama, held by another program, or free.
fn port(address: &str) -> Check {
    const NAME: &str = "public port";
    let Ok(addr) = address.parse::<SocketAddr>() else {
        return Check::skip(NAME, format!("{address} is not a TCP address"));
    };
    // 0.0.0.0 / [::] listen everywhere: ask on loopback.
    let target = if addr.ip().is_unspecified() {
        SocketAddr::new(
            if addr.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        )
    } else {
        addr
    };
    let owner =
        owner_of(addr.port()).unwrap_or_else(|| "its owner is not visible (root sees it)".into());
    match ask_version(target) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Check::fail(
            NAME,
            format!("nothing listens on {address}"),
            "sudo systemctl enable --now vllamad.socket",
        ),
        Err(e) => Check::fail(NAME, format!("{address}: {e} ({owner})"), "ss -ltnp; journalctl -u vllamad"),
        Ok(head) if head.to_ascii_lowercase().contains("x-vllama-version:") => {
            Check::pass(NAME, format!("{address} answers as vllama; held by {owner}"))
        }
        Ok(_) => Check::fail(
            NAME,
            format!("{address} is held by another program, not vllama: {owner}"),
            "stop it (Ollama: sudo systemctl disable --now ollama), or move vllama (ListenStream= in `sudo systemctl edit vllamad.socket`)",
        ),
    }
}

/// `GET /api/version`, returning the answer's head.
fn ask_version(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    let _ = s.take(64 * 1024).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    Ok(text.split("\r\n\r\n").next().unwrap_or("").to_string())
}

/// The process listening on TCP `port`: /proc/net/tcp{,6} for the socket's inode, then the
/// process holding it (other users' processes need root).
fn owner_of(port: u16) -> Option<String> {
    let hex = format!(":{port:04X}");
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let listening = f.get(3) == Some(&"0A");
                (listening && f.get(1).is_some_and(|local| local.ends_with(&hex)))
                    .then(|| f.get(9).map(|s| s.to_string()))
                    .flatten()
            })
        })?;
    let needle = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == needle))
        {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let comm = comm.trim();
            return Some(if pid == "1" {
                "systemd (socket activation: vllamad.socket)".into()
            } else {
                format!("{comm} (pid {pid})")
            });
        }
    }
    None
}

pub fn render(checks: &[Check], color: bool) -> String {
    let paint = |code: &str, s: &str| {
        if color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let width = checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let mark = match c.outcome {
            CheckOutcome::Pass => paint("32", "✓"),
            CheckOutcome::Fail => paint("31", "✗"),
            CheckOutcome::Skip => paint("2", "–"),
        };
        out.push_str(&format!("{mark} {:<width$}  {}\n", c.name, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("  {:<width$}  {} {fix}\n", "", paint("1", "fix:")));
        }
    }
    let count = |o: CheckOutcome| checks.iter().filter(|c| c.outcome == o).count();
    let failed = count(CheckOutcome::Fail);
    let summary = if failed == 0 {
        format!(
            "all good ({} checks passed, {} not applicable)",
            count(CheckOutcome::Pass),
            count(CheckOutcome::Skip)
        )
    } else {
        format!(
            "{failed} problem{} to fix ({} checks passed, {} not applicable)",
            if failed == 1 { "" } else { "s" },
            count(CheckOutcome::Pass),
            count(CheckOutcome::Skip)
        )
    };
    out.push_str(&format!("\n{summary}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_marks_and_fixes_without_colour() {
        let checks = vec![
            Check::pass("daemon", "answers"),
            Check::fail("engine", "no vLLM", "sudo vllamactl engine install"),
            Check::skip("cuda", "no GPU"),
        ];
        let text = render(&checks, false);
        assert!(text.contains("✓ daemon  answers"), "{text}");
        assert!(
            text.contains("✗ engine  no vLLM\n          fix: sudo vllamactl engine install"),
            "{text}"
        );
        assert!(
            text.contains("1 problem to fix (1 checks passed, 1 not applicable)"),
            "{text}"
        );
        assert!(!text.contains('\x1b'));
        assert!(render(&checks, true).contains("\x1b[31m✗"));
    }

    #[test]
    fn a_free_port_fails_with_the_socket_to_enable() {
        let free = vllama_testkit::free_port();
        let c = port(&format!("127.0.0.1:{free}"));
        assert_eq!(c.outcome, CheckOutcome::Fail, "{c:?}");
        assert!(c.fix.as_deref().unwrap_or("").contains("vllamad.socket"));
    }

    #[test]
    fn another_program_on_the_port_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{\"version\":\"0.13.0\"}",
                );
            }
        });
        let c = port(&addr.to_string());
        server.join().expect("server");
        assert_eq!(c.outcome, CheckOutcome::Fail, "{c:?}");
        assert!(c.detail.contains("another program"), "{}", c.detail);
        assert!(
            c.detail.contains(&format!("pid {}", std::process::id())),
            "the owner is named: {}",
            c.detail
        );
    }
}
