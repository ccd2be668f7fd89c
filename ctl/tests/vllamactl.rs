//! `vllamactl` against the real `vllamad`: output, exit codes, and who may do what.

use std::path::PathBuf;
use std::process::{Command, Output};

use vllama_testkit::{is_root, run_as, workspace_bin, Daemon, DaemonOptions};

const CTL: &str = env!("CARGO_BIN_EXE_vllamactl");

fn vllamad() -> PathBuf {
    workspace_bin(CTL, "vllamad")
}

fn start(options: DaemonOptions) -> Daemon {
    Daemon::start(vllamad().to_str().unwrap(), options)
}

fn ctl(d: &Daemon, args: &[&str]) -> Output {
    Command::new(CTL)
        .arg("--socket")
        .arg(&d.admin)
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn status_human_and_json() {
    let d = start(DaemonOptions::default().activated());
    let out = ctl(&d, &["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("(pid {})", d.pid())), "{stdout}");
    assert!(stdout.contains(&d.api.to_string()), "{stdout}");
    assert!(stdout.contains("socket activation"), "{stdout}");
    assert!(
        stdout.contains(&d.config_path.display().to_string()),
        "{stdout}"
    );

    let out = ctl(&d, &["status", "--json"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pid"], d.pid());
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["config"]["generation"], 1);
}

#[test]
fn reload_reports_success_and_refusal() {
    let d = start(DaemonOptions::default());
    let out = ctl(&d, &["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("generation 2"));

    std::fs::write(&d.config_path, "[daemon]\nshutdown_grace = \"never\"\n").unwrap();
    let out = ctl(&d, &["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("daemon.shutdown_grace"), "{stderr}");
    assert!(stderr.contains("generation 2 stays in force"), "{stderr}");
    // The daemon still answers, with the refusal on record.
    let status = text(&ctl(&d, &["status"]).stdout);
    assert!(status.contains("last reload refused"), "{status}");
}

#[test]
fn exit_codes_and_advice_when_the_daemon_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let out = Command::new(CTL)
        .args(["--socket", missing.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("systemctl enable --now vllamad.socket"));

    // A socket file nobody listens on.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = Command::new(CTL)
        .args(["--socket", stale.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("nothing is listening"));

    // A daemon that accepts but never answers.
    let hung = dir.path().join("hung.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&hung).unwrap();
    let out = Command::new(CTL)
        .args([
            "--socket",
            hung.to_str().unwrap(),
            "--timeout",
            "0.3",
            "status",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("did not answer"),
        "{}",
        text(&out.stderr)
    );

    let out = Command::new(CTL).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage error");
}

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;
/// A gid with no group name: membership in nothing.
const NO_GROUP_AT_ALL: u32 = 65533;

#[test]
fn unprivileged_users_are_refused_by_the_socket_mode() {
    if !is_root() {
        eprintln!("skipped: needs root to run vllamactl as another user");
        return;
    }
    let d = start(DaemonOptions::default().set("admin", "socket_mode = \"0660\""));
    let sock = d.admin.to_str().unwrap();
    let out = run_as(
        NOBODY,
        NO_GROUP_AT_ALL,
        CTL.as_ref(),
        &["--socket", sock, "status"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("join group `vllama`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_daemon_checks_peer_credentials_per_route() {
    if !is_root() {
        eprintln!("skipped: needs root to run vllamactl as another user");
        return;
    }
    // An open socket mode, so that the daemon's own check is what decides.
    let d = start(
        DaemonOptions::default()
            .set("admin", "socket_mode = \"0666\"")
            .set("admin", "status_group = \"nogroup\""),
    );
    let sock = d.admin.to_str().unwrap();

    // Not in any allowed group: 403 naming the groups, exit 1.
    let out = run_as(
        NOBODY,
        NO_GROUP_AT_ALL,
        CTL.as_ref(),
        &["--socket", sock, "status"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("permission denied: uid 65534"), "{stderr}");
    assert!(stderr.contains("join group `nogroup`"), "{stderr}");

    // In the status group: may read, may not reload.
    let out = run_as(NOBODY, NOGROUP, CTL.as_ref(), &["--socket", sock, "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run_as(NOBODY, NOGROUP, CTL.as_ref(), &["--socket", sock, "reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("`vllama-admin`"),
        "{}",
        text(&out.stderr)
    );

    // Root may do everything.
    assert!(ctl(&d, &["reload"]).status.success());

    // Every admin request is logged with the peer's uid and pid.
    let log = d.log();
    assert!(log.contains("uid=65534"), "{log}");
    assert!(log.contains("status=403"), "{log}");
    assert!(log.contains("uid=0"), "{log}");
}

#[test]
fn preload_ps_unload() {
    let fake = workspace_bin(CTL, "fake-vllm");
    let d = start(
        DaemonOptions::default()
            .fake_model(&fake, "tiny", &["env = { FAKE_VLLM_STARTUP_MS = \"700\" }"])
            .fake_model(
                &fake,
                "broken",
                &["env = { FAKE_VLLM_FAIL_STARTUP = \"no kernel image is available (fake)\" }"],
            ),
    );
    let out = ctl(&d, &["ps"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), "no engines loaded");

    let out = ctl(&d, &["preload", "tiny", "--keep-alive", "-1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("tiny:latest is ready"),
        "{}",
        text(&out.stdout)
    );
    // Not a terminal: one progress line per state.
    let progress = text(&out.stderr);
    assert!(progress.contains("tiny:latest starting"), "{progress}");

    let out = ctl(&d, &["ps"]);
    let table = text(&out.stdout);
    assert!(table.starts_with("MODEL"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("tiny:latest"))
        .unwrap();
    assert!(
        row.contains("ready") && row.contains("forever") && row.contains("cpu"),
        "{row}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&ctl(&d, &["ps", "--json"]).stdout).unwrap();
    assert_eq!(json[0]["keep_alive"], "-1");
    assert!(text(&ctl(&d, &["status"]).stdout).contains("tiny:latest"));

    let out = ctl(&d, &["unload", "tiny"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&ctl(&d, &["ps"]).stdout).trim(), "no engines loaded");
    let out = ctl(&d, &["unload", "tiny"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is not loaded"));

    let out = ctl(&d, &["preload", "broken"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no kernel image is available (fake)"),
        "{}",
        text(&out.stderr)
    );

    let out = ctl(&d, &["preload", "../etc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("invalid model name"));
}
