//! A small HTTP/1.1 client for vllamad's admin socket, with errors that tell the operator
//! what to do next.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach vllamad: {path} does not exist.\nIs the admin socket enabled? `systemctl enable --now vllamad.socket vllamad-admin.socket`\n(or pass --socket PATH for a daemon started by hand)")]
    NoSocket { path: PathBuf },
    #[error("cannot reach vllamad: nothing is listening on {path}.\nCheck `systemctl status vllamad-admin.socket vllamad`")]
    Refused { path: PathBuf },
    #[error("permission denied on {path}: join group `vllama` (read-only) or `vllama-admin` (`sudo usermod -aG vllama $USER`, then log in again), or use sudo")]
    PermissionDenied { path: PathBuf },
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("vllamad did not answer within {0:?}: it may be starting up or hung; check `systemctl status vllamad` and `journalctl -u vllamad`")]
    Timeout(Duration),
    #[error("talking to vllamad failed: {0}")]
    Protocol(String),
    /// The daemon answered with an error status.
    #[error("{message}")]
    Daemon { status: StatusCode, message: String },
}

impl ClientError {
    /// Exit status: 3 when the daemon cannot be reached, 1 for an error it reported.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Daemon { .. } | ClientError::Protocol(_) => 1,
            _ => 3,
        }
    }
}

pub struct AdminClient {
    socket: PathBuf,
    timeout: Duration,
}

/// A decoded answer: status plus body (the body can be an error object).
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ClientError::Protocol(format!(
                "unexpected answer ({}): {e}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            ))
        })
    }

    /// The answer, or the daemon's `{"error": ...}` as a [`ClientError::Daemon`].
    pub fn ok(self) -> Result<Answer, ClientError> {
        if self.status.is_success() {
            return Ok(self);
        }
        let message = serde_json::from_slice::<vllama_proto::ErrorBody>(&self.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).into_owned());
        Err(ClientError::Daemon {
            status: self.status,
            message,
        })
    }
}

impl AdminClient {
    pub fn new(socket: PathBuf, timeout: Duration) -> Self {
        AdminClient { socket, timeout }
    }

    pub async fn request(&self, method: Method, path: &str) -> Result<Answer, ClientError> {
        self.request_with(method, path, Bytes::new()).await
    }

    pub async fn request_with(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Answer, ClientError> {
        tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    /// Sends `body` and calls `on_line` for each line of a streamed answer (NDJSON). The
    /// timeout applies to the answer's start only: a stream may run as long as it needs.
    pub async fn stream_lines(
        &self,
        path: &str,
        body: Bytes,
        mut on_line: impl FnMut(&str),
    ) -> Result<(), ClientError> {
        let resp = tokio::time::timeout(self.timeout, self.send(Method::POST, path, body))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))??;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?
                .to_bytes();
            return Answer {
                status,
                body: bytes,
            }
            .ok()
            .map(|_| ());
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Protocol(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                pending.extend_from_slice(data);
                while let Some(at) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=at).collect();
                    on_line(String::from_utf8_lossy(&line).trim_end());
                }
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| connect_error(&self.socket, e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "vllamad")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Answer, ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

fn connect_error(path: &Path, e: io::Error) -> ClientError {
    let path = path.to_path_buf();
    match e.kind() {
        io::ErrorKind::NotFound => ClientError::NoSocket { path },
        io::ErrorKind::ConnectionRefused => ClientError::Refused { path },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path },
        _ => ClientError::Connect { path, source: e },
    }
}
