//! A fake Hugging Face Hub on loopback, for the puller's tests: the revision and tree APIs
//! (paginated), file downloads with `Range`, `ETag`/`X-Linked-Etag`, gated repositories, and
//! faults: 500s, connections cut mid-file, relative and absolute redirects to a "CDN",
//! corrupted content, and a bandwidth limit. Every download is recorded.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use sha1::Sha1;
use sha2::{Digest, Sha256};

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// One file of a fake repository.
#[derive(Clone)]
pub struct HubFile {
    pub path: String,
    pub content: Bytes,
    pub lfs: bool,
    sha256: String,
    git_sha1: String,
}

impl HubFile {
    pub fn new(path: &str, content: Vec<u8>, lfs: bool) -> HubFile {
        let mut h = Sha1::new();
        h.update(format!("blob {}\0", content.len()).as_bytes());
        h.update(&content);
        HubFile {
            path: path.into(),
            sha256: hex(&Sha256::digest(&content)),
            git_sha1: hex(&h.finalize()),
            content: Bytes::from(content),
            lfs,
        }
    }
    pub fn sha256(&self) -> String {
        self.sha256.clone()
    }
    pub fn git_sha1(&self) -> String {
        self.git_sha1.clone()
    }
    /// Its blob's name in the HF cache.
    pub fn etag(&self) -> String {
        if self.lfs {
            self.sha256()
        } else {
            self.git_sha1()
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A repository: its files at one commit, reachable as `main`.
#[derive(Clone)]
pub struct HubRepo {
    pub commit: String,
    pub files: Vec<HubFile>,
    /// Needs `Authorization: Bearer <token>`.
    pub gated: bool,
}

/// A small model vLLM's loaders would accept the layout of: config, tokenizer files, a
/// safetensors weight file of `weights` bytes (a valid header, then data), its index.
pub fn tiny_model(commit: &str, weights: usize) -> HubRepo {
    let config = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":64,"num_hidden_layers":2,"num_attention_heads":1,"max_position_embeddings":2048,"torch_dtype":"bfloat16","vocab_size":256}"#;
    HubRepo {
        commit: commit.into(),
        gated: false,
        files: vec![
            HubFile::new("config.json", config.as_bytes().to_vec(), false),
            HubFile::new(
                "generation_config.json",
                b"{\"max_new_tokens\": 16}".to_vec(),
                false,
            ),
            HubFile::new(
                "tokenizer_config.json",
                br#"{"chat_template":"{% for m in messages %}{{ m.content }}{% endfor %}"}"#
                    .to_vec(),
                false,
            ),
            HubFile::new("tokenizer.json", b"{\"version\":\"1.0\"}".to_vec(), false),
            HubFile::new("model.safetensors", safetensors(weights), true),
            HubFile::new("README.md", b"# tiny\n".to_vec(), false),
            HubFile::new("original/consolidated.00.pth", vec![7; 1000], true),
            HubFile::new("onnx/model.onnx", vec![9; 1000], true),
        ],
    }
}

/// A valid safetensors file: one BF16 tensor filling `size` bytes (rounded to 2).
pub fn safetensors(size: usize) -> Vec<u8> {
    let n = size / 2;
    let header = format!(
        r#"{{"model.embed.weight":{{"dtype":"BF16","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        n * 2
    );
    let mut out = Vec::with_capacity(8 + header.len() + n * 2);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    // Deterministic, incompressible-looking data.
    let mut x: u32 = 0x1234_5678;
    for _ in 0..n * 2 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    out
}

/// Faults and settings, changeable while the hub runs.
#[derive(Default, Clone)]
pub struct Faults {
    /// Tree pages of this many entries (`Link: <…>; rel="next"`).
    pub page_size: Option<usize>,
    /// Answer 500 to the first N downloads of a path.
    pub fail_first: HashMap<String, u32>,
    /// Cut the connection after this many bytes, on the first download of a path.
    pub cut_after: HashMap<String, usize>,
    /// Serve these paths with one byte changed.
    pub corrupt: Vec<String>,
    /// Downloads answer with a redirect to the CDN path: "relative" (same host) or
    /// "absolute" (`localhost` instead of `127.0.0.1`: another host to a client).
    pub redirect: Option<&'static str>,
    /// Bytes per second per download (None: as fast as it goes).
    pub rate: Option<u64>,
    /// Listed in the tree, but 404 when downloaded.
    pub missing: Vec<String>,
}

/// A download the hub served.
#[derive(Debug, Clone)]
pub struct Served {
    pub path: String,
    pub range_from: u64,
    pub bytes: usize,
    pub status: u16,
    pub authorization: Option<String>,
}

struct State {
    repos: BTreeMap<String, HubRepo>,
    token: Option<String>,
    faults: Faults,
    served: Vec<Served>,
    seen: HashMap<String, u32>,
    addr: SocketAddr,
}

/// The running hub; stops when dropped.
pub struct FakeHub {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeHub {
    pub fn start(repos: BTreeMap<String, HubRepo>, token: Option<&str>) -> FakeHub {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            repos,
            token: token.map(str::to_string),
            faults: Faults::default(),
            served: Vec::new(),
            seen: HashMap::new(),
            addr,
        }));
        let s = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(req, &s).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeHub {
            addr,
            state,
            _runtime: runtime,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_faults(&self, faults: Faults) {
        let mut s = self.state.lock().unwrap();
        s.faults = faults;
        s.seen.clear();
    }

    /// Downloads served so far (file content requests, not API calls).
    pub fn served(&self) -> Vec<Served> {
        self.state.lock().unwrap().served.clone()
    }

    pub fn clear_served(&self) {
        self.state.lock().unwrap().served.clear();
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(v.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// The hub's error answer: `{"error": message}`.
fn hub_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, serde_json::json!({ "error": message }))
}

fn split_repo(rest: &str) -> Option<(String, &str)> {
    let mut parts = rest.splitn(3, '/');
    let (org, name, tail) = (parts.next()?, parts.next()?, parts.next().unwrap_or(""));
    Some((format!("{org}/{name}"), tail))
}

async fn handle(req: Request<hyper::body::Incoming>, state: &Mutex<State>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let range_from = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse::<u64>().ok())
        .unwrap_or(0);
    let mut s = state.lock().unwrap();
    let authorized = |s: &State, repo: &HubRepo| {
        !repo.gated
            || (s.token.is_some() && auth == s.token.as_ref().map(|t| format!("Bearer {t}")))
    };

    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo_name, tail)) = split_repo(rest) else {
            return hub_error(StatusCode::NOT_FOUND, "Not Found");
        };
        let Some(repo) = s.repos.get(&repo_name).cloned() else {
            return hub_error(StatusCode::NOT_FOUND, "Repository not found");
        };
        if !authorized(&s, &repo) {
            return hub_error(StatusCode::UNAUTHORIZED, "Access to model is restricted");
        }
        if let Some(rev) = tail.strip_prefix("revision/") {
            if rev != "main" && rev != repo.commit {
                return json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": "Invalid rev id", "error_code": "RevisionNotFound"}),
                );
            }
            let siblings: Vec<_> = repo
                .files
                .iter()
                .map(|f| serde_json::json!({"rfilename": f.path}))
                .collect();
            return json(
                StatusCode::OK,
                serde_json::json!({"id": repo_name, "sha": repo.commit, "siblings": siblings}),
            );
        }
        if tail.starts_with("tree/") {
            let entries: Vec<serde_json::Value> = repo
                .files
                .iter()
                .map(|f| {
                    let mut e = serde_json::json!({"type": "file", "oid": f.git_sha1(), "size": f.content.len(), "path": f.path});
                    if f.lfs {
                        e["lfs"] = serde_json::json!({"oid": f.sha256(), "size": f.content.len(), "pointerSize": 134});
                    }
                    e
                })
                .collect();
            let cursor: usize = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("cursor="))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let size = s.faults.page_size.unwrap_or(usize::MAX);
            let page: Vec<_> = entries.iter().skip(cursor).take(size).cloned().collect();
            let mut r = json(StatusCode::OK, serde_json::Value::Array(page));
            if cursor + size < entries.len() {
                let next = format!(
                    "<http://{}/api/models/{repo_name}/{tail}?recursive=true&cursor={}>; rel=\"next\"",
                    s.addr,
                    cursor + size
                );
                r.headers_mut().insert("link", next.parse().unwrap());
            }
            return r;
        }
        return hub_error(StatusCode::NOT_FOUND, "Not Found");
    }

    // /{org}/{name}/resolve/{rev}/{path} and the CDN's /cdn/{org}/{name}/{path}
    let (cdn, rest) = match path.strip_prefix("/cdn/") {
        Some(r) => (true, r),
        None => (false, path.trim_start_matches('/')),
    };
    let Some((repo_name, tail)) = split_repo(rest) else {
        return hub_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let Some(repo) = s.repos.get(&repo_name).cloned() else {
        return hub_error(StatusCode::NOT_FOUND, "Repository not found");
    };
    let file_path = if cdn {
        tail.to_string()
    } else {
        match tail
            .strip_prefix("resolve/")
            .and_then(|t| t.split_once('/'))
        {
            Some((_rev, p)) => p.to_string(),
            None => return hub_error(StatusCode::NOT_FOUND, "Not Found"),
        }
    };
    if !cdn && !authorized(&s, &repo) {
        return hub_error(StatusCode::UNAUTHORIZED, "Access to model is restricted");
    }
    if s.faults.missing.contains(&file_path) {
        return hub_error(StatusCode::NOT_FOUND, "Entry not found");
    }
    let Some(file) = repo.files.iter().find(|f| f.path == file_path).cloned() else {
        return hub_error(StatusCode::NOT_FOUND, "Entry not found");
    };
    if !cdn {
        if let Some(mode) = s.faults.redirect {
            let location = match mode {
                "relative" => format!("/cdn/{repo_name}/{file_path}"),
                // Another host name for the same server: a CDN, as far as a client can tell.
                _ => format!(
                    "http://localhost:{}/cdn/{repo_name}/{file_path}",
                    s.addr.port()
                ),
            };
            let mut r = json(StatusCode::FOUND, serde_json::json!({}));
            r.headers_mut()
                .insert("location", location.parse().unwrap());
            return r;
        }
    }
    let seen = {
        let n = s.seen.entry(file_path.clone()).or_insert(0);
        *n += 1;
        *n
    };
    if s.faults
        .fail_first
        .get(&file_path)
        .is_some_and(|n| seen <= *n)
    {
        s.served.push(Served {
            path: file_path,
            range_from,
            bytes: 0,
            status: 500,
            authorization: auth,
        });
        return hub_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Error");
    }
    let content = if s.faults.corrupt.contains(&file_path) {
        let mut changed = file.content.to_vec();
        if let Some(b) = changed.last_mut() {
            *b ^= 0xff;
        }
        Bytes::from(changed)
    } else {
        file.content.clone()
    };
    let from = (range_from as usize).min(content.len());
    let body_bytes = content.slice(from..);
    let cut = (seen == 1)
        .then(|| s.faults.cut_after.get(&file_path).copied())
        .flatten();
    let sent = cut.map_or(body_bytes.len(), |c| c.min(body_bytes.len()));
    let status = if from > 0 {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    s.served.push(Served {
        path: file_path,
        range_from,
        bytes: sent,
        status: status.as_u16(),
        authorization: auth,
    });
    let rate = s.faults.rate;
    drop(s);

    let total = file.content.len();
    let len = body_bytes.len();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        let chunk = 64 * 1024;
        let mut at = 0;
        while at < sent {
            let end = (at + chunk).min(sent);
            if tx
                .send(Ok(Frame::data(body_bytes.slice(at..end))))
                .await
                .is_err()
            {
                return;
            }
            at = end;
            if let Some(r) = rate {
                tokio::time::sleep(Duration::from_secs_f64(chunk as f64 / r as f64)).await;
            }
        }
        if cut.is_some() {
            let _ = tx.send(Err(std::io::Error::other("cut"))).await;
        }
    });
    let stream = tokio_stream_from(rx);
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("content-length", len.to_string().parse().unwrap());
    h.insert("x-repo-commit", repo.commit.parse().unwrap());
    h.insert("etag", format!("\"{}\"", file.git_sha1()).parse().unwrap());
    if file.lfs {
        h.insert(
            "x-linked-etag",
            format!("\"{}\"", file.sha256()).parse().unwrap(),
        );
        h.insert("x-linked-size", total.to_string().parse().unwrap());
    }
    if from > 0 {
        h.insert(
            "content-range",
            format!("bytes {from}-{}/{total}", total.saturating_sub(1))
                .parse()
                .unwrap(),
        );
    }
    r
}

/// An mpsc receiver as a `Stream` of frames.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    struct S(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);
    impl futures_core::Stream for S {
        type Item = Result<Frame<Bytes>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
    let _ = &mut rx;
    S(rx)
}
