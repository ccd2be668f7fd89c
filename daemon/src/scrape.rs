//! `GET /metrics` (on the public listener, or its own): vllamad's registry rendered with the
//! scheduler's view of the engines and the connection counts, then each ready engine's own
//! metrics fetched with a timeout. Above the metrics registry and the daemon's state.

use crate::state::Daemon;

/// `GET /metrics`: ours, then the engines.
pub async fn respond(daemon: &Daemon) -> hyper::Response<crate::http::Body> {
    let timeout = daemon.config().config.metrics.engine_timeout.0;
    let theirs = crate::metrics::engines::scrape(daemon.scheduler.engine_handles(), timeout);
    let mut text = daemon.metrics.render(
        &daemon.scheduler.engines(),
        daemon.connections.counts(),
        daemon.started.elapsed(),
    );
    text.push_str(&theirs.await);
    let mut resp = hyper::Response::new(crate::http::full(text));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
