//! Ollama's model-management routes on vllama's store: `/api/pull` (Ollama's progress
//! stream: pulling manifest, pulling <digest> with total/completed, verifying sha256 digest,
//! writing manifest, success), `/api/delete` and `/api/copy`.

use std::collections::HashMap;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};
use vllama_proto::{PullPhase, PullProgress};

use super::{bool_of, model_of, object, str_of};
use crate::http::{self, Body, Reject};
use crate::state::Daemon;
use crate::store::StoreError;
use crate::store_ops as ops;

fn store_reject(e: StoreError) -> Reject {
    Reject(e.status(), e.to_string())
}

pub async fn pull(daemon: &Daemon, body: &[u8]) -> Result<Response<Body>, Reject> {
    if !daemon.config().config.api.allow_pull {
        return Err(Reject(
            StatusCode::FORBIDDEN,
            "pulling through the API is switched off (api.allow_pull); ask an administrator to run `vllamactl pull`".into(),
        ));
    }
    let req = object(body)?;
    let (raw, _) = model_of(&req)?;
    let stream = bool_of(&req, "stream", true)?;
    let mut rx = match ops::pull(daemon, &raw).await {
        Ok(rx) => rx,
        // Served from a local folder: already here, as a pulled model would be.
        Err(StoreError::LocalFolder { .. }) => {
            let mut resp = http::json(StatusCode::OK, &json!({"status": "success"}));
            if stream {
                let body = b"{\"status\":\"success\"}\n".to_vec();
                resp = Response::new(http::full(body));
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/x-ndjson"),
                );
            }
            return Ok(resp);
        }
        Err(e) => return Err(store_reject(e)),
    };
    if !stream {
        let last = ops::finished(rx).await;
        return match last.error {
            None => Ok(http::json(StatusCode::OK, &json!({"status": "success"}))),
            Some(e) => Err(Reject(StatusCode::INTERNAL_SERVER_ERROR, e)),
        };
    }
    let (tx, resp) = http::channel(StatusCode::OK, "application/x-ndjson");
    crate::tasks::spawn(&daemon.tasks, "pull progress", async move {
        let mut shown = Shown::default();
        loop {
            let progress = rx.borrow_and_update().clone();
            for line in shown.lines(&progress) {
                let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                bytes.push(b'\n');
                if tx.send(Bytes::from(bytes)).await.is_err() {
                    return; // the client left; the pull goes on
                }
            }
            if progress.phase.finished() || rx.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(resp)
}

/// What a client was already told, so each change becomes only the lines it adds.
#[derive(Default)]
struct Shown {
    manifest: bool,
    files: HashMap<String, u64>,
    verifying: bool,
    end: bool,
}

impl Shown {
    fn lines(&mut self, p: &PullProgress) -> Vec<Map<String, Value>> {
        let mut out = Vec::new();
        let status = |s: &str| {
            let mut m = Map::new();
            m.insert("status".into(), json!(s));
            m
        };
        if !self.manifest {
            self.manifest = true;
            out.push(status("pulling manifest"));
        }
        for f in &p.files {
            if self.files.get(&f.path) == Some(&f.done) {
                continue;
            }
            self.files.insert(f.path.clone(), f.done);
            let algo = if f.lfs { "sha256" } else { "sha1" };
            let mut m = status(&format!(
                "pulling {}",
                f.digest.get(..12).unwrap_or(&f.digest)
            ));
            m.insert("digest".into(), json!(format!("{algo}:{}", f.digest)));
            m.insert("total".into(), json!(f.size));
            m.insert("completed".into(), json!(f.done));
            out.push(m);
        }
        let linking = matches!(p.phase, PullPhase::Linking | PullPhase::Done);
        if linking && !self.verifying {
            self.verifying = true;
            out.push(status("verifying sha256 digest"));
            out.push(status("writing manifest"));
        }
        if p.phase.finished() && !self.end {
            self.end = true;
            match &p.error {
                None => out.push(status("success")),
                Some(e) => {
                    let mut m = Map::new();
                    m.insert("error".into(), json!(e));
                    out.push(m);
                }
            }
        }
        out
    }
}

pub async fn delete(daemon: &Daemon, body: &[u8]) -> Result<Response<Body>, Reject> {
    if !daemon.config().config.api.allow_delete {
        return Err(Reject(
            StatusCode::FORBIDDEN,
            "deleting models through the API is switched off (api.allow_delete); run `vllamactl rm MODEL` on the server".into(),
        ));
    }
    let req = object(body)?;
    let (raw, _) = model_of(&req)?;
    // The operator allowed deletes: a loaded model is stopped first, as Ollama does.
    ops::remove(daemon, &raw, true)
        .await
        .map_err(store_reject)?;
    Ok(http::empty_ok())
}

pub async fn copy(daemon: &Daemon, body: &[u8]) -> Result<Response<Body>, Reject> {
    let req = object(body)?;
    let field = |key: &str| -> Result<String, Reject> {
        str_of(&req, key)?
            .map(str::to_string)
            .ok_or_else(|| Reject(StatusCode::BAD_REQUEST, format!("{key} is required")))
    };
    let (source, destination) = (field("source")?, field("destination")?);
    ops::copy(daemon, &source, &destination)
        .await
        .map_err(store_reject)?;
    Ok(http::empty_ok())
}
