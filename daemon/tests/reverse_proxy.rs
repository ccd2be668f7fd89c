//! The reverse-proxy recipes of docs/DEPLOYING.md, run as they are written there: each proxy
//! (nginx, Caddy) is started on loopback with TLS (a self-signed certificate) in front of a
//! vllamad with an API key, and the official clients stream through it
//! (tests/clients/proxy_check.py). The proxies' binaries come from Debian's packages, which
//! `tests/run` unpacks (`VLLAMA_NGINX`, `VLLAMA_CADDY`); without them the tests say they were
//! skipped, unless `VLLAMA_REQUIRE_PROXIES` is set (CI).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use vllama_testkit::{
    clients_python, free_port, run_client_script, wait_until, workspace_bin, Daemon, DaemonOptions,
};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");
const LLAMA_CONFIG: &str =
    r#"{"model_type":"llama","architectures":["LlamaForCausalLM"],"max_position_embeddings":2048}"#;

/// The fenced block after `<!-- recipe: NAME -->` in docs/DEPLOYING.md.
fn recipe(name: &str) -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/DEPLOYING.md"))
            .unwrap();
    let marker = format!("<!-- recipe: {name} -->");
    let after = &doc[doc.find(&marker).unwrap_or_else(|| panic!("no {marker}")) + marker.len()..];
    let open = after.find("```").unwrap();
    let body = &after[open..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_string()
}

fn binary(var: &str) -> Option<PathBuf> {
    let found = std::env::var_os(var).map(PathBuf::from);
    assert!(
        found.is_some() || std::env::var_os("VLLAMA_REQUIRE_PROXIES").is_none(),
        "VLLAMA_REQUIRE_PROXIES is set but {var} is not"
    );
    found
}

/// The public name of the recipes; the client script resolves it to 127.0.0.1.
const NAME: &str = "llm.example.org";

/// A self-signed certificate for [`NAME`]: (certificate, key).
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .arg("-subj")
        .arg(format!("/CN={NAME}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{NAME}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    (cert, key)
}

/// vllamad with a chat model whose tokens come 50 ms apart, and its API key.
fn daemon() -> (Daemon, String) {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .fake_model(
                &workspace_bin(BIN, "fake-vllm"),
                "tiny",
                &["env = { FAKE_VLLM_TOKEN_MS = \"50\", FAKE_VLLM_STARTUP_MS = \"50\" }"],
            )
            .model_file("tiny", "config.json", LLAMA_CONFIG),
    );
    let r = d.admin("POST", "/v1/keys", r#"{"name": "proxy"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    (d, v["key"].as_str().unwrap().to_string())
}

/// The recipe with this run's addresses and certificate in place of the documented ones.
fn localize(text: &str, d: &Daemon, cert: &Path, key: &Path) -> String {
    text.replace("127.0.0.1:11434", &d.api.to_string())
        .replace("/etc/ssl/vllama/fullchain.pem", &cert.display().to_string())
        .replace("/etc/ssl/vllama/privkey.pem", &key.display().to_string())
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn through(
    proxy: &Proxy,
    port: u16,
    d: &Daemon,
    python: &Path,
    cert: &Path,
    key: &str,
    log: &Path,
) {
    let _ = proxy;
    let up = wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(
        up,
        "the proxy did not listen: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    run_client_script(
        python,
        "proxy_check.py",
        d,
        &[
            ("VLLAMA_URL", &format!("https://{NAME}:{port}")),
            ("VLLAMA_CA", &cert.display().to_string()),
            ("VLLAMA_KEY", key),
        ],
    );
}

#[test]
fn the_nginx_recipe_streams_the_official_clients_over_tls() {
    let (Some(nginx), Some(python)) = (binary("VLLAMA_NGINX"), clients_python()) else {
        eprintln!(
            "skipped: VLLAMA_NGINX or VLLAMA_CLIENTS_PYTHON not set (tests/run prepares them)"
        );
        return;
    };
    let (d, api_key) = daemon();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let port = free_port();
    let site = localize(&recipe("nginx"), &d, &cert, &key)
        .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{port} ssl;"));
    let p = dir.path().display();
    std::fs::write(dir.path().join("vllama.conf"), site).unwrap();
    // Around the recipe, what nginx.conf has on a Debian machine, kept in this folder; one
    // process (no master and workers), so that stopping it leaves nothing behind.
    let user = if nix::unistd::geteuid().is_root() {
        "user root;\n"
    } else {
        ""
    };
    std::fs::write(
        dir.path().join("nginx.conf"),
        format!(
            "{user}daemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\nevents {{}}\nhttp {{\n  access_log {p}/access.log;\n  \
             client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  \
             scgi_temp_path {p}/scgi;\n  include {p}/vllama.conf;\n}}\n"
        ),
    )
    .unwrap();
    let proxy = Proxy(
        Command::new(&nginx)
            .arg("-e")
            .arg(dir.path().join("early.log"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    through(
        &proxy,
        port,
        &d,
        &python,
        &cert,
        &api_key,
        &dir.path().join("error.log"),
    );
}

#[test]
fn the_caddy_recipe_streams_the_official_clients_over_tls() {
    let (Some(caddy), Some(python)) = (binary("VLLAMA_CADDY"), clients_python()) else {
        eprintln!(
            "skipped: VLLAMA_CADDY or VLLAMA_CLIENTS_PYTHON not set (tests/run prepares them)"
        );
        return;
    };
    let (d, api_key) = daemon();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let port = free_port();
    let site = localize(&recipe("caddy"), &d, &cert, &key)
        .replace(&format!("{NAME} {{"), &format!("https://{NAME}:{port} {{"));
    // No admin endpoint, no redirect listener on :80, state in this folder.
    let global = format!(
        "{{\n  admin off\n  auto_https disable_redirects\n  storage file_system {}/data\n}}\n\n",
        dir.path().display()
    );
    let caddyfile = dir.path().join("Caddyfile");
    std::fs::write(&caddyfile, global + &site).unwrap();
    let log = dir.path().join("caddy.log");
    let proxy = Proxy(
        Command::new(&caddy)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&caddyfile)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    through(&proxy, port, &d, &python, &cert, &api_key, &log);
}
