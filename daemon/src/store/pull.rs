//! Pulls: a repository revision from the hub into the store, in Hugging Face's cache layout,
//! so that vLLM (and every HF tool) finds it offline.
//!
//! Order of writes, so that an engine never sees a half-written model: each file downloads
//! to `blobs/<etag>.incomplete` (resumed with `Range` after an interruption), is verified
//! (LFS files by sha256, others by git blob sha1), renamed to `blobs/<etag>`; then the
//! `snapshots/<commit>/<path>` symlinks; `refs/<revision>` last.
//!
//! One pull per repository revision at a time: a second request for it watches the first
//! ([`Pulls::start`]); watchers come and go (a client that leaves does not stop the pull).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::StatusCode;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vllama_proto::{PullFile, PullPhase, PullProgress};

use super::hub::{Hub, HubError, TreeEntry};
use super::layout::RepoDir;

/// Files downloaded at once.
const CONCURRENCY: usize = 4;
/// Attempts per request before a transient error is final.
const ATTEMPTS: u32 = 6;
/// A download that receives nothing for this long is retried.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often watchers are sent the progress.
const TICK: Duration = Duration::from_millis(200);
/// Written to disk in pieces of this size (also the most a SIGKILL can lose).
const WRITE_BUFFER: usize = 1 << 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("{path}: checksum mismatch (expected {expected}, got {got}); the download was deleted, pull again")]
    Checksum {
        path: String,
        expected: String,
        got: String,
    },
    #[error("not enough disk space in {dir}: the pull needs {need} more, {free} are free")]
    NoSpace {
        dir: String,
        need: crate::units::ByteSize,
        free: crate::units::ByteSize,
    },
    #[error("{repo}@{commit} has no weights vLLM can load (no safetensors or .bin files)")]
    NoWeights { repo: String, commit: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("the pull was cancelled (vllamad is stopping)")]
    Cancelled,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PullError + '_ {
    move |e| PullError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// One file to fetch.
#[derive(Debug, Clone)]
struct Wanted {
    path: String,
    size: u64,
    /// The blob's name: the sha256 for LFS files, else the git blob sha1.
    etag: String,
    lfs: bool,
}

/// The pulls in progress, by `repo@revision`.
#[derive(Debug, Clone)]
pub struct Pulls {
    running: Arc<Mutex<HashMap<String, watch::Receiver<PullProgress>>>>,
    tasks: crate::tasks::Background,
    cancel: CancellationToken,
}

impl Pulls {
    pub fn new(tracker: TaskTracker, cancel: CancellationToken) -> Pulls {
        Pulls {
            running: Arc::default(),
            tasks: crate::tasks::Background::here(tracker),
            cancel,
        }
    }

    /// Starts pulling `repo@revision` into `hub_dir`, or joins the pull already doing it.
    /// The receiver sees the progress until `Done` or `Failed`.
    pub fn start(
        &self,
        hub: Hub,
        hub_dir: PathBuf,
        repo: &str,
        revision: &str,
    ) -> watch::Receiver<PullProgress> {
        let key = format!("{repo}@{revision}");
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = running.get(&key) {
            if !rx.borrow().phase.finished() {
                tracing::info!(repo, revision, "joining the pull in progress");
                return rx.clone();
            }
        }
        let (tx, rx) = watch::channel(PullProgress::new(repo, revision));
        running.insert(key.clone(), rx.clone());
        drop(running);
        let (repo, revision) = (repo.to_string(), revision.to_string());
        let me = self.clone();
        self.tasks.spawn(async move {
            let started = Instant::now();
            tracing::info!(repo, revision, endpoint = hub.endpoint(), "pull started");
            let result = tokio::select! {
                r = pull(&hub, &hub_dir, &repo, &revision, &tx) => r,
                _ = me.cancel.cancelled() => Err(PullError::Cancelled),
            };
            match result {
                Ok(()) => {
                    let p = tx.borrow().clone();
                    tracing::info!(
                        repo,
                        revision,
                        commit = p.commit.as_deref().unwrap_or(""),
                        bytes = p.bytes_total,
                        seconds = started.elapsed().as_secs_f64(),
                        "pull done"
                    );
                    tx.send_modify(|p| p.phase = PullPhase::Done);
                }
                Err(e) => {
                    tracing::error!(repo, revision, error = %e, "pull failed");
                    tx.send_modify(|p| {
                        p.phase = PullPhase::Failed;
                        p.error = Some(e.to_string());
                    });
                }
            }
            me.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        });
        rx
    }
}

/// Which files an engine needs: configuration, tokenizer, templates and processors anywhere
/// but in other formats' folders; safetensors weights (with their index), or `.bin` weights
/// when the repository has no safetensors.
fn choose(entries: &[TreeEntry]) -> Vec<&TreeEntry> {
    const SKIP_DIRS: &[&str] = &[
        "original/",
        "onnx/",
        "openvino/",
        "gguf/",
        "coreml/",
        "flax/",
    ];
    const SMALL: &[&str] = &[".json", ".jinja", ".txt", ".model", ".tiktoken", ".py"];
    let top = |e: &TreeEntry| !e.path.contains('/');
    let has_safetensors = entries
        .iter()
        .any(|e| top(e) && e.path.ends_with(".safetensors"));
    entries
        .iter()
        .filter(|e| !SKIP_DIRS.iter().any(|d| e.path.starts_with(d)))
        .filter(|e| {
            let p = e.path.as_str();
            if SMALL.iter().any(|ext| p.ends_with(ext)) {
                return !p.ends_with("pytorch_model.bin.index.json") || !has_safetensors;
            }
            if !top(e) {
                return false;
            }
            if has_safetensors {
                p.ends_with(".safetensors")
            } else {
                p.ends_with(".bin") || p.ends_with(".pt")
            }
        })
        .collect()
}

fn wanted(e: &TreeEntry) -> Wanted {
    match &e.lfs {
        Some(lfs) => Wanted {
            path: e.path.clone(),
            size: lfs.size,
            etag: lfs.oid.clone(),
            lfs: true,
        },
        None => Wanted {
            path: e.path.clone(),
            size: e.size,
            etag: e.oid.clone(),
            lfs: false,
        },
    }
}

/// Retries `f` on transient hub errors, backing off 0.5 s doubling.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T, PullError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PullError>>,
{
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match f().await {
            Err(PullError::Hub(e)) if e.transient() && attempt < ATTEMPTS => {
                tracing::warn!(what, attempt, error = %e, retry_in = ?delay, "transient hub error; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn pull(
    hub: &Hub,
    hub_dir: &Path,
    repo: &str,
    revision: &str,
    tx: &watch::Sender<PullProgress>,
) -> Result<(), PullError> {
    let commit = retry("revision", || async {
        Ok(hub.revision(repo, revision).await?)
    })
    .await?;
    tx.send_modify(|p| p.commit = Some(commit.clone()));
    let entries = retry("tree", || async { Ok(hub.tree(repo, &commit).await?) }).await?;
    let files: Vec<Wanted> = choose(&entries).into_iter().map(wanted).collect();
    if !files.iter().any(|f| {
        f.path.ends_with(".safetensors") || f.path.ends_with(".bin") || f.path.ends_with(".pt")
    }) {
        return Err(PullError::NoWeights {
            repo: repo.into(),
            commit,
        });
    }
    let dir = RepoDir::new(hub_dir, repo);
    let blobs = dir.blobs();
    tokio::fs::create_dir_all(&blobs)
        .await
        .map_err(io(&blobs))?;

    // What is already there counts as done; the rest must fit on the disk.
    let mut need = 0;
    let mut progress_files = Vec::new();
    for f in &files {
        let have = if blobs.join(&f.etag).is_file() {
            f.size
        } else {
            0
        };
        let partial = std::fs::metadata(blobs.join(format!("{}.incomplete", f.etag)))
            .map_or(0, |m| m.len().min(f.size));
        need += f.size - have.max(partial);
        progress_files.push(PullFile {
            path: f.path.clone(),
            digest: f.etag.clone(),
            lfs: f.lfs,
            size: f.size,
            done: have,
        });
    }
    let free = free_space(&blobs).map_err(io(&blobs))?;
    if need > free {
        return Err(PullError::NoSpace {
            dir: blobs.display().to_string(),
            need: crate::units::ByteSize(need),
            free: crate::units::ByteSize(free),
        });
    }
    tx.send_modify(|p| {
        p.phase = PullPhase::Downloading;
        p.bytes_total = files.iter().map(|f| f.size).sum();
        p.files = progress_files;
    });

    // Byte counters the downloads bump; a ticker publishes them to watchers.
    let counters: Arc<Vec<AtomicU64>> = Arc::new(
        tx.borrow()
            .files
            .iter()
            .map(|f| AtomicU64::new(f.done))
            .collect(),
    );
    let started = Instant::now();
    let base: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    let publish = |tx: &watch::Sender<PullProgress>| {
        tx.send_modify(|p| {
            for (f, c) in p.files.iter_mut().zip(counters.iter()) {
                f.done = c.load(Ordering::Relaxed);
            }
            p.bytes_done = p.files.iter().map(|f| f.done).sum();
            let secs = started.elapsed().as_secs_f64();
            p.rate_bytes_per_second = if secs > 0.0 {
                (p.bytes_done.saturating_sub(base) as f64 / secs) as u64
            } else {
                0
            };
        })
    };

    let mut downloads = tokio::task::JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    for (i, f) in files.iter().enumerate() {
        if blobs.join(&f.etag).is_file() {
            continue;
        }
        let (hub, repo, commit, f, blobs) = (
            hub.clone(),
            repo.to_string(),
            commit.clone(),
            f.clone(),
            blobs.clone(),
        );
        let (gate, counters) = (gate.clone(), counters.clone());
        downloads.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let unused = AtomicU64::new(0);
            let counter = counters.get(i).unwrap_or(&unused);
            download(&hub, &repo, &commit, &f, &blobs, counter).await
        });
    }
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            done = downloads.join_next() => match done {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => { downloads.abort_all(); return Err(e) }
                Some(Err(e)) => { downloads.abort_all(); return Err(PullError::Io { path: repo.into(), message: e.to_string() }) }
            },
            _ = ticker.tick() => publish(tx),
        }
    }
    publish(tx);

    tx.send_modify(|p| p.phase = PullPhase::Linking);
    let (dir2, files2, commit2, revision2) = (
        dir.clone(),
        files.clone(),
        commit.clone(),
        revision.to_string(),
    );
    tokio::task::spawn_blocking(move || link(&dir2, &files2, &commit2, &revision2))
        .await
        .map_err(|e| PullError::Io {
            path: repo.into(),
            message: e.to_string(),
        })??;
    Ok(())
}

/// Snapshot symlinks, then the ref.
fn link(dir: &RepoDir, files: &[Wanted], commit: &str, revision: &str) -> Result<(), PullError> {
    let snapshot = dir.snapshot(commit);
    for f in files {
        let at = snapshot.join(&f.path);
        let parent = at.parent().unwrap_or(&snapshot);
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        // snapshots/<commit>/a/b → ../../../blobs/<etag>: one `..` per folder below the repo.
        let depth = f.path.matches('/').count() + 2;
        let target = PathBuf::from("../".repeat(depth))
            .join("blobs")
            .join(&f.etag);
        match std::fs::read_link(&at) {
            Ok(existing) if existing == target => continue,
            Ok(_) => std::fs::remove_file(&at).map_err(io(&at))?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&target, &at).map_err(io(&at))?;
    }
    if revision != commit {
        let refs = dir.refs();
        std::fs::create_dir_all(&refs).map_err(io(&refs))?;
        let tmp = refs.join(format!(".{revision}.tmp"));
        std::fs::write(&tmp, commit).map_err(io(&tmp))?;
        let at = refs.join(revision);
        std::fs::rename(&tmp, &at).map_err(io(&at))?;
    }
    Ok(())
}

/// The digest a file is checked against.
enum Hasher {
    Sha256(Sha256),
    /// git's blob hash: sha1 of `blob <size>\0` and the content.
    GitSha1(Sha1),
}

impl Hasher {
    fn new(f: &Wanted) -> Hasher {
        if f.lfs {
            Hasher::Sha256(Sha256::new())
        } else {
            let mut h = Sha1::new();
            h.update(format!("blob {}\0", f.size).as_bytes());
            Hasher::GitSha1(h)
        }
    }
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::GitSha1(h) => h.update(data),
        }
    }
    fn hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::GitSha1(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Downloads one file into `blobs/<etag>`, resuming a `.incomplete` left by an earlier try.
async fn download(
    hub: &Hub,
    repo: &str,
    commit: &str,
    f: &Wanted,
    blobs: &Path,
    done: &AtomicU64,
) -> Result<(), PullError> {
    let partial = blobs.join(format!("{}.incomplete", f.etag));
    let mut attempt = 1;
    let mut delay = Duration::from_millis(500);
    loop {
        match fetch(hub, repo, commit, f, &partial, done).await {
            Err(PullError::Hub(e)) if e.transient() && attempt < ATTEMPTS => {
                tracing::warn!(repo, path = f.path, attempt, error = %e, retry_in = ?delay, "download interrupted; resuming");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                attempt += 1;
            }
            Err(e) => return Err(e),
            Ok(()) => break,
        }
    }
    // Verify everything on disk, then publish the blob.
    let (path, expect, item) = (partial.clone(), f.etag.clone(), f.clone());
    let got = tokio::task::spawn_blocking(move || hash_file(&path, &item))
        .await
        .map_err(|e| PullError::Io {
            path: f.path.clone(),
            message: e.to_string(),
        })?
        .map_err(io(&partial))?;
    if got != expect {
        let _ = std::fs::remove_file(&partial);
        done.store(0, Ordering::Relaxed);
        return Err(PullError::Checksum {
            path: f.path.clone(),
            expected: expect,
            got,
        });
    }
    let blob = blobs.join(&f.etag);
    tokio::fs::rename(&partial, &blob)
        .await
        .map_err(io(&blob))?;
    Ok(())
}

fn hash_file(path: &Path, f: &Wanted) -> std::io::Result<String> {
    let mut hasher = Hasher::new(f);
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; WRITE_BUFFER];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.hex());
        }
        hasher.update(buf.get(..n).unwrap_or(&buf));
    }
}

/// One attempt: appends to the `.incomplete` from where it ends.
async fn fetch(
    hub: &Hub,
    repo: &str,
    commit: &str,
    f: &Wanted,
    partial: &Path,
    done: &AtomicU64,
) -> Result<(), PullError> {
    let have = tokio::fs::metadata(partial).await.map_or(0, |m| m.len());
    if have == f.size && f.size > 0 {
        done.store(have, Ordering::Relaxed);
        return Ok(());
    }
    let from = if have > f.size { 0 } else { have };
    let resp = hub.download(repo, commit, &f.path, from).await?;
    let (append, mut written) = match resp.status() {
        StatusCode::PARTIAL_CONTENT => (true, from),
        StatusCode::RANGE_NOT_SATISFIABLE => {
            // What we have is all there is (or garbage): start over.
            let _ = tokio::fs::remove_file(partial).await;
            return Err(PullError::Hub(HubError::Transport {
                url: f.path.clone(),
                message: "range not satisfiable; restarting the file".into(),
            }));
        }
        _ => (false, 0),
    };
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(partial)
        .await
        .map_err(io(partial))?;
    let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    done.store(written, Ordering::Relaxed);
    let mut body = resp.into_body();
    let result = loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await {
            Err(_) => {
                break Err(PullError::Hub(HubError::Transport {
                    url: f.path.clone(),
                    message: format!("nothing received for {IDLE_TIMEOUT:?}"),
                }))
            }
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => {
                break Err(PullError::Hub(HubError::Transport {
                    url: f.path.clone(),
                    message: format!("the download broke off: {e}"),
                }))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if written + data.len() as u64 > f.size {
            break Err(PullError::Hub(HubError::Protocol {
                url: f.path.clone(),
                message: format!("more than the {} bytes the tree listing announced", f.size),
            }));
        }
        if let Err(e) = out.write_all(&data).await {
            break Err(io(partial)(e));
        }
        written += data.len() as u64;
        done.store(written, Ordering::Relaxed);
    };
    // Keep what arrived: the next attempt resumes after it.
    out.flush().await.map_err(io(partial))?;
    result?;
    if written < f.size {
        return Err(PullError::Hub(HubError::Transport {
            url: f.path.clone(),
            message: format!("the download ended at {written} of {} bytes", f.size),
        }));
    }
    Ok(())
}

/// Free bytes for an unprivileged writer on the file system holding `dir`.
fn free_space(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, lfs: bool) -> TreeEntry {
        TreeEntry {
            kind: "file".into(),
            path: path.into(),
            oid: "a".repeat(40),
            size: 10,
            lfs: lfs.then(|| super::super::hub::Lfs {
                oid: "b".repeat(64),
                size: 100,
            }),
        }
    }

    #[test]
    fn chooses_what_an_engine_needs() {
        let tree = [
            e("config.json", false),
            e("tokenizer.json", false),
            e("tokenizer.model", true),
            e("model-00001-of-00002.safetensors", true),
            e("model.safetensors.index.json", false),
            e("pytorch_model.bin", true),
            e("pytorch_model.bin.index.json", false),
            e("original/consolidated.00.pth", true),
            e("original/params.json", false),
            e("onnx/model.onnx", true),
            e("1_Pooling/config.json", false),
            e("model.gguf", true),
            e("README.md", false),
        ];
        let chosen: Vec<&str> = choose(&tree).iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            chosen,
            [
                "config.json",
                "tokenizer.json",
                "tokenizer.model",
                "model-00001-of-00002.safetensors",
                "model.safetensors.index.json",
                "1_Pooling/config.json"
            ]
        );
        let bin_only = [e("config.json", false), e("pytorch_model.bin", true)];
        assert_eq!(choose(&bin_only).len(), 2);
    }

    #[test]
    fn git_blob_sha1_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        let f = Wanted {
            path: "x".into(),
            size: 6,
            etag: String::new(),
            lfs: false,
        };
        let mut h = Hasher::new(&f);
        h.update(b"hello\n");
        assert_eq!(h.hex(), "ce013625030ba8dba906f756967f9e9ca394464a");
    }
}
