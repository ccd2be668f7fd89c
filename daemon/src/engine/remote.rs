//! The remote engine kind: an OpenAI-compatible server that already runs elsewhere (a vLLM,
//! another vllamad, any server with `/v1/models`) served under an Ollama name. vllamad starts
//! nothing: a start is a readiness question (`GET /v1/models`, which also proves the token),
//! a run is a watch that asks again every few seconds, and a stop ends the watch. It uses no
//! GPU or memory here. Reading the token and CA files blocks: call [`target`] off the async
//! workers.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::http::uri::Scheme;
use hyper::{Method, StatusCode};
use serde::Deserialize;

use super::client::{EngineClient, Target};
use super::kind::{BoxFuture, Ended, EngineKind, Probe, Run};
use super::process::Output;
use crate::config::RemoteUrl;

/// How often a serving remote is asked whether it is still there.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered watches in a row that make it down.
const MISSES: u32 = 2;
/// The time one question may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RemoteError {
    #[error("`{url}` is not a remote engine's URL: {why}")]
    Url { url: String, why: String },
    #[error("cannot read the token file {path}: {why}")]
    Token { path: String, why: String },
    #[error("cannot read the CA file {path}: {why}")]
    Ca { path: String, why: String },
}

/// The remote's address with its token (the first line of `token_file`) and TLS roots (the
/// system's, plus the certificates of `ca_file`). Blocking.
pub fn target(
    url: &str,
    token_file: Option<&Path>,
    ca_file: Option<&Path>,
) -> Result<Target, RemoteError> {
    let RemoteUrl {
        scheme,
        authority,
        host,
        port,
        prefix,
    } = RemoteUrl::parse(url).map_err(|why| RemoteError::Url {
        url: url.to_string(),
        why,
    })?;
    let token = match token_file {
        None => None,
        Some(path) => {
            let fail = |why: String| RemoteError::Token {
                path: path.display().to_string(),
                why,
            };
            let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
            let token = text.lines().next().unwrap_or("").trim();
            if token.is_empty() {
                return Err(fail("it is empty".into()));
            }
            let mut value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| fail("the token is not printable text".into()))?;
            value.set_sensitive(true);
            Some(value)
        }
    };
    let tls = (scheme == Scheme::HTTPS)
        .then(|| tls_config(ca_file))
        .transpose()?;
    Ok(Target {
        url: url.trim_end_matches('/').to_string(),
        authority,
        host,
        port,
        prefix,
        token,
        tls,
    })
}

fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, RemoteError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        use rustls::pki_types::pem::PemObject;
        let fail = |why: String| RemoteError::Ca {
            path: path.display().to_string(),
            why,
        };
        let mut added = 0;
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| fail(e.to_string()))?
        {
            let cert = cert.map_err(|e| fail(e.to_string()))?;
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(fail("it holds no PEM certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RemoteError::Ca {
            path: String::new(),
            why: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An engine that runs elsewhere.
#[derive(Debug)]
pub struct Remote {
    url: String,
    /// The model name to ask it for, when configured (`served_name`).
    configured: Option<Arc<str>>,
    /// The one model it serves, when none was configured: learnt from `/v1/models`.
    learnt: Mutex<Option<Arc<str>>>,
}

impl Remote {
    pub fn new(url: &str, served_name: Option<String>) -> Remote {
        Remote {
            url: url.trim_end_matches('/').to_string(),
            configured: served_name.map(Arc::from),
            learnt: Mutex::new(None),
        }
    }

    /// What `/v1/models` says, against the name configured.
    fn judge(&self, status: StatusCode, body: &[u8]) -> Probe {
        let url = &self.url;
        match status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Probe::Refused(format!(
                    "the remote engine at {url} refused vllamad's token ({status}): set the model's token_file to a key it accepts"
                ))
            }
            other => return Probe::NotYet(format!("{url} answered {other}")),
        }
        #[derive(Deserialize)]
        struct Models {
            data: Vec<Model>,
        }
        #[derive(Deserialize)]
        struct Model {
            id: String,
        }
        let ids: Vec<String> = match serde_json::from_slice::<Models>(body) {
            Ok(m) => m.data.into_iter().map(|m| m.id).collect(),
            Err(e) => {
                return Probe::Refused(format!(
                    "the remote engine at {url} answered /v1/models with no model list ({e}): is it an OpenAI-compatible server?"
                ))
            }
        };
        match &self.configured {
            Some(name) if ids.iter().any(|id| **id == **name) => Probe::Ready,
            Some(name) => Probe::Refused(format!(
                "the remote engine at {url} does not serve \"{name}\" (served_name); it serves: {}",
                ids.join(", ")
            )),
            None => match ids.as_slice() {
                [only] => {
                    *self.learnt.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Arc::from(only.as_str()));
                    Probe::Ready
                }
                [] => Probe::NotYet(format!("the remote engine at {url} serves no model yet")),
                many => Probe::Refused(format!(
                    "the remote engine at {url} serves {}: set served_name to the one to use",
                    many.join(", ")
                )),
            },
        }
    }
}

impl EngineKind for Remote {
    fn name(&self) -> &'static str {
        "remote"
    }

    fn start<'a>(
        &'a self,
        client: &'a EngineClient,
        _output: &'a Output,
    ) -> BoxFuture<'a, Result<Box<dyn Run>, String>> {
        let watch: Box<dyn Run> = Box::new(Watch {
            client: client.clone(),
            url: self.url.clone(),
            stopped: false,
        });
        Box::pin(async move { Ok(watch) })
    }

    fn probe<'a>(&'a self, client: &'a EngineClient, timeout: Duration) -> BoxFuture<'a, Probe> {
        Box::pin(async move {
            match client.call(Method::GET, "/v1/models", timeout).await {
                Ok((status, body)) => self.judge(status, &body),
                Err(e) => Probe::NotYet(e.to_string()),
            }
        })
    }

    fn local(&self) -> bool {
        false
    }

    fn served_name(&self) -> Option<Arc<str>> {
        self.configured.clone().or_else(|| {
            self.learnt
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }
}

/// A serving remote, asked every [`WATCH_INTERVAL`] whether it is still there.
struct Watch {
    client: EngineClient,
    url: String,
    stopped: bool,
}

impl Run for Watch {
    fn pid(&self) -> Option<u32> {
        None
    }

    fn ended(&mut self) -> BoxFuture<'_, Ended> {
        Box::pin(async move {
            if self.stopped {
                return std::future::pending().await;
            }
            let mut misses = 0;
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                let why = match self
                    .client
                    .call(Method::GET, "/v1/models", PROBE_TIMEOUT)
                    .await
                {
                    Ok((status, _)) if status.is_success() => {
                        misses = 0;
                        continue;
                    }
                    Ok((status, _)) => format!("{} answered {status}", self.url),
                    Err(e) => e.to_string(),
                };
                misses += 1;
                if misses >= MISSES {
                    return Ended {
                        verb: "stopped answering",
                        detail: why,
                    };
                }
            }
        })
    }

    fn stop(&mut self, _grace: Duration) -> BoxFuture<'_, bool> {
        self.stopped = true;
        Box::pin(std::future::ready(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_list_decides_readiness_and_the_name() {
        let list = br#"{"object":"list","data":[{"id":"qwen3:0.6b","object":"model"}]}"#;
        let r = Remote::new("http://b:11434", None);
        assert_eq!(r.judge(StatusCode::OK, list), Probe::Ready);
        assert_eq!(r.served_name().as_deref(), Some("qwen3:0.6b"));
        let r = Remote::new("http://b:11434", Some("other".into()));
        match r.judge(StatusCode::OK, list) {
            Probe::Refused(m) => assert!(
                m.contains("does not serve \"other\"") && m.contains("qwen3:0.6b"),
                "{m}"
            ),
            p => panic!("{p:?}"),
        }
        match r.judge(StatusCode::UNAUTHORIZED, b"") {
            Probe::Refused(m) => {
                assert!(m.contains("http://b:11434") && m.contains("token"), "{m}")
            }
            p => panic!("{p:?}"),
        }
        assert!(matches!(
            r.judge(StatusCode::BAD_GATEWAY, b""),
            Probe::NotYet(_)
        ));
        let two = br#"{"data":[{"id":"a"},{"id":"b"}]}"#;
        assert!(
            matches!(Remote::new("http://b", None).judge(StatusCode::OK, two), Probe::Refused(m) if m.contains("a, b"))
        );
        assert!(matches!(
            Remote::new("http://b", None).judge(StatusCode::OK, b"<html>"),
            Probe::Refused(_)
        ));
    }

    #[test]
    fn the_token_is_the_first_line_and_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "sk-abc\n").unwrap();
        let t = target("http://b:8000/", Some(&path), None).unwrap();
        assert_eq!(t.token.as_ref().unwrap(), "Bearer sk-abc");
        assert!(t.token.as_ref().unwrap().is_sensitive());
        assert!(!format!("{t:?}").contains("sk-abc"));
        assert_eq!(t.url, "http://b:8000");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            target("http://b", Some(&path), None),
            Err(RemoteError::Token { .. })
        ));
        std::fs::write(&path, "not a certificate").unwrap();
        assert!(matches!(
            target("https://b", None, Some(&path)),
            Err(RemoteError::Ca { .. })
        ));
    }
}
