//! One public request, observed: its id, route and span, the model that served it, its first
//! token and token counts. When the last holder lets go (the handler, or the task streaming
//! the response), the request is over: its access-log line is written and its metrics
//! counted, so streams are logged with their whole duration, as nginx logs them.
//!
//! Handlers reach the record of the request they serve through a task-local ([`current`]);
//! a task that streams the response takes a clone along.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::access_line::Access;
use crate::metrics::Metrics;
use crate::names::ModelName;

tokio::task_local! {
    static CURRENT: Arc<Request>;
}

/// Where a request came from and what it asked: its span's fields, kept for the access line.
#[derive(Debug)]
pub struct Origin {
    /// The client's address as text (`ip_text`): written once, read by the span, the
    /// tenant and the access line.
    pub client: String,
    pub method: hyper::Method,
    pub uri: hyper::Uri,
}

/// A request in flight.
#[derive(Debug)]
pub struct Request {
    pub id: String,
    origin: Origin,
    route: &'static str,
    started: Instant,
    span: tracing::Span,
    /// None when metrics are off (`metrics.enabled = false`).
    metrics: Option<Arc<Metrics>>,
    access_log: bool,
    status: AtomicU16,
    /// The canonical name of the model that served it (set once a model is leased, so the
    /// label's values are bounded by the models configured or stored).
    model: OnceLock<ModelName>,
    /// The model name the client asked for, once it parsed.
    requested: OnceLock<ModelName>,
    /// The API key it presented.
    key: OnceLock<Arc<crate::keys::Key>>,
    first_token: OnceLock<Duration>,
    tokens: Mutex<Option<(u64, u64)>>,
    /// Time to the response head.
    head: AtomicU64,
    /// The API key's (or client address's) share this request holds: its limits count it
    /// until it ends.
    admitted: Mutex<Option<crate::limits::Admitted>>,
    /// Whom the request counts as for fair turns at the engine.
    tenant: OnceLock<crate::fair::Tenant>,
}

impl Request {
    pub fn new(
        id: String,
        origin: Origin,
        span: tracing::Span,
        metrics: Option<Arc<Metrics>>,
        access_log: bool,
    ) -> Arc<Request> {
        Arc::new(Request {
            id,
            route: crate::metrics::route_label(origin.uri.path()),
            origin,
            started: Instant::now(),
            span,
            metrics,
            access_log,
            status: AtomicU16::new(0),
            model: OnceLock::new(),
            requested: OnceLock::new(),
            key: OnceLock::new(),
            first_token: OnceLock::new(),
            tokens: Mutex::new(None),
            head: AtomicU64::new(0),
            admitted: Mutex::new(None),
            tenant: OnceLock::new(),
        })
    }

    /// Runs the handler with this request as [`current`].
    pub async fn scope<F: std::future::Future>(self: &Arc<Self>, f: F) -> F::Output {
        CURRENT.scope(self.clone(), f).await
    }

    /// The response head is out with this status.
    pub fn responded(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
        let micros = self.started.elapsed().as_micros();
        self.head
            .store(u64::try_from(micros).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let status = self.status.load(Ordering::Relaxed);
        let model = self.model.get().map_or("", ModelName::as_str);
        let tokens = *self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let admitted = self
            .admitted
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut admitted) = admitted {
            admitted.tokens(tokens.map_or(0, |(p, g)| p + g));
        }
        if let Some(metrics) = &self.metrics {
            metrics.request_done(self.route, model, status, elapsed);
            if let Some(ttft) = self.first_token.get() {
                metrics.first_token(self.route, model, *ttft);
            }
            if let Some((prompt, generated)) = tokens {
                metrics.tokens(model, prompt, generated);
            }
        }
        if self.access_log {
            let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            let access = Access {
                request_id: &self.id,
                client: &self.origin.client,
                method: self.origin.method.as_str(),
                path: self.origin.uri.path(),
                key: self
                    .key
                    .get()
                    .map(|k| (k.record.id.as_str(), k.record.name.as_str())),
                requested: self.requested.get().map(ModelName::as_str),
                model: self.model.get().map(ModelName::as_str),
                status,
                head_us: self.head.load(Ordering::Relaxed),
                duration_us: micros(elapsed),
                ttft_us: self.first_token.get().copied().map(micros),
                tokens,
            };
            crate::access_line::write(&access, &self.span);
        }
    }
}

/// The request this task serves, if any.
pub fn current() -> Option<Arc<Request>> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The id of the request this task serves.
pub fn request_id() -> Option<String> {
    CURRENT.try_with(|r| r.id.clone()).ok()
}

impl Request {
    /// The model the client asked for (a valid name): the span's `model` from here on.
    pub fn requested(&self, name: &ModelName) {
        let _ = self.requested.set(name.clone());
        self.span.record("model", tracing::field::display(name));
    }

    /// The model that serves this request (its canonical name). The span gets it too when it
    /// differs from the name asked for (an alias); a field recorded twice is written twice.
    pub fn model(&self, name: &ModelName) {
        let _ = self.model.set(name.clone());
        if self.requested.get() != Some(name) {
            self.span.record("model", tracing::field::display(name));
        }
    }

    /// The API key the request presented: the span's `key` and `key_name`.
    pub fn key(&self, key: &Arc<crate::keys::Key>) {
        let _ = self.key.set(key.clone());
        self.span
            .record("key", tracing::field::display(&key.record.id));
        self.span
            .record("key_name", tracing::field::display(&key.record.name));
    }

    /// The first token is out (only the first call counts).
    pub fn first_token(&self) {
        self.first_token_at(Instant::now());
    }

    /// The first token was out at `at`.
    pub fn first_token_at(&self, at: Instant) {
        let _ = self
            .first_token
            .set(at.saturating_duration_since(self.started));
    }

    /// The client's address, as text.
    pub fn client(&self) -> &str {
        &self.origin.client
    }

    /// Whom the request counts as for fair turns: its key, or its client's address.
    pub fn tenant(&self, tenant: crate::fair::Tenant) {
        let _ = self.tenant.set(tenant);
    }

    /// The request runs under its API key's (or client address's) limits until it ends.
    pub fn admitted(&self, admitted: crate::limits::Admitted) {
        *self.admitted.lock().unwrap_or_else(|p| p.into_inner()) = Some(admitted);
    }

    pub fn tokens(&self, prompt: u64, generated: u64) {
        *self.tokens.lock().unwrap_or_else(|p| p.into_inner()) = Some((prompt, generated));
    }
}

/// [`Request::model`] on the current request.
pub fn model(name: &ModelName) {
    if let Some(r) = current() {
        r.model(name);
    }
}

/// Whom the current request counts as for fair turns (`None`: no request, or an
/// internal one).
pub fn tenant() -> Option<crate::fair::Tenant> {
    CURRENT.try_with(|r| r.tenant.get().cloned()).ok().flatten()
}

/// [`Request::requested`] on the current request.
pub fn requested(name: &ModelName) {
    if let Some(r) = current() {
        r.requested(name);
    }
}
