//! One engine's HTTP/1.1 connections, kept open between requests. A connection is driven by
//! the task of the request that holds it — hyper's connection future is polled beside the
//! request and then inside the response body — so an exchange with the engine has no task
//! of its own, no channel hop between tasks and no wake-up of another task. The connection
//! goes back to the pool when the response body has ended, and a pooled one is checked for
//! life (the engine may have closed it) before it is used again.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::client::Endpoint;
use crate::http::Body;

/// A connection idle this long is closed rather than used: under uvicorn's keep-alive
/// timeout (vLLM's `VLLM_HTTP_TIMEOUT_KEEP_ALIVE`, 5 s), so the engine seldom closes one
/// just as a request goes out on it.
const IDLE_FOR: Duration = Duration::from_secs(4);
/// Idle connections kept at most, per engine.
const MAX_IDLE: usize = 256;
/// How long a body's rest is read after its reader is done with it.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connecting to the engine failed")]
    Connect(#[source] io::Error),
    #[error("the engine exchange failed")]
    Exchange(#[source] hyper::Error),
}

/// An engine's idle connections, the most recently used last.
#[derive(Debug)]
pub struct Pool {
    endpoint: Endpoint,
    idle: Mutex<VecDeque<Idle>>,
}

#[derive(Debug)]
struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// One connection: hyper's request sender and the future that drives it.
struct Conn {
    send: http1::SendRequest<Body>,
    driver: http1::Connection<TokioIo<Stream>, Body>,
    /// The driver has finished (the connection is closed): never polled again.
    ended: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("ended", &self.ended).finish()
    }
}

impl Conn {
    /// Moves the connection on (reads, writes, keep-alive checks) in the calling task.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.ended && Pin::new(&mut self.driver).poll(cx).is_ready() {
            self.ended = true;
        }
    }

    /// Whether a request can go out on it now.
    fn ready(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx);
        !self.ended && matches!(self.send.poll_ready(cx), Poll::Ready(Ok(())))
    }
}

impl Pool {
    pub fn new(endpoint: Endpoint) -> Self {
        Pool {
            endpoint,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends `req` (origin-form URI, its `Host` set) on a pooled or a new connection. One
    /// the engine closed while it sat idle is replaced once when hyper hands the request
    /// back unsent.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
    ) -> Result<Response<EngineBody>, PoolError> {
        // A connection lives in a box of its own, so that moving it between the pool, the
        // request and its body moves a pointer; the cold paths (connecting, the retry) are
        // boxed futures, so that the hot path's future stays small: it is moved into each
        // caller's.
        let (conn, reused) = match poll_fn(|cx| Poll::Ready(self.checkout(cx))).await {
            Some(conn) => (conn, true),
            None => (Box::pin(self.connect()).await?, false),
        };
        let (resp, conn) = match exchange(conn, req).await {
            Ok(answer) => answer,
            Err((error, Some(unsent))) if reused => {
                tracing::debug!(%error, "a pooled engine connection had closed; a new one");
                Box::pin(async {
                    let conn = self.connect().await?;
                    exchange(conn, unsent)
                        .await
                        .map_err(|(e, _)| PoolError::Exchange(e))
                })
                .await?
            }
            Err((error, _)) => return Err(PoolError::Exchange(error)),
        };
        let (parts, body) = resp.into_parts();
        let mut body = EngineBody {
            body,
            conn: Some(conn),
            pool: self.clone(),
        };
        if hyper::body::Body::is_end_stream(&body.body) {
            body.give_back();
        }
        Ok(Response::from_parts(parts, body))
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        // A panic while the lock was held left nothing half-done: a queue of connections.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently used idle connection that is still open and ready.
    fn checkout(&self, cx: &mut Context<'_>) -> Option<Box<Conn>> {
        loop {
            let idle = self.lock().pop_back()?;
            if idle.since.elapsed() >= IDLE_FOR {
                // The rest are older still.
                let stale = std::mem::take(&mut *self.lock());
                drop((idle, stale));
                return None;
            }
            let mut conn = idle.conn;
            if conn.ready(cx) {
                return Some(conn);
            }
        }
    }

    fn put(&self, conn: Box<Conn>) {
        if conn.ended || conn.send.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut stale = Vec::new();
        {
            let mut idle = self.lock();
            while idle
                .front()
                .is_some_and(|i| idle.len() >= MAX_IDLE || now - i.since >= IDLE_FOR)
            {
                stale.extend(idle.pop_front());
            }
            idle.push_back(Idle { conn, since: now });
        }
        drop(stale);
    }

    async fn connect(&self) -> Result<Box<Conn>, PoolError> {
        let stream = Stream::open(&self.endpoint)
            .await
            .map_err(PoolError::Connect)?;
        let (send, driver) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::Exchange)?;
        Ok(Box::new(Conn {
            send,
            driver,
            ended: false,
        }))
    }
}

type Unsent = Option<Request<Body>>;

/// One request out and its answer's head back, the connection driven meanwhile.
async fn exchange(
    mut conn: Box<Conn>,
    req: Request<Body>,
) -> Result<(Response<Incoming>, Box<Conn>), (hyper::Error, Unsent)> {
    let mut answer = pin!(conn.send.try_send_request(req));
    let answered = poll_fn(|cx| {
        conn.drive(cx);
        answer.as_mut().poll(cx)
    })
    .await;
    match answered {
        Ok(resp) => Ok((resp, conn)),
        Err(mut e) => {
            let unsent = e.take_message();
            Err((e.into_error(), unsent))
        }
    }
}

/// An engine's response body. It drives its connection while it is read and hands the
/// connection back to the pool at its end; dropped before its end, it closes it.
#[derive(Debug)]
pub struct EngineBody {
    body: Incoming,
    /// Until the body's end.
    conn: Option<Box<Conn>>,
    pool: Arc<Pool>,
}

impl EngineBody {
    fn give_back(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put(conn);
        }
    }

    /// After a stream's last event, the rest of the body (the chunked encoding's end) read
    /// so that its connection goes back to the pool instead of closing (the engine would
    /// get EPIPE writing it, and the next request would pay a new connection): at once when
    /// it has come, else by [`EngineBody::drain`].
    pub async fn finish(mut self) {
        let ended = poll_fn(|cx| {
            // A few frames at most: after the last event only the end is expected.
            for _ in 0..16 {
                match hyper::body::Body::poll_frame(Pin::new(&mut self), cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(_) => return Poll::Ready(true),
                    Poll::Pending => return Poll::Ready(false),
                }
            }
            Poll::Ready(false)
        })
        .await;
        if !ended {
            self.drain();
        }
    }

    /// The rest of the body read by a task of its own, for [`DRAIN`] at most.
    pub fn drain(mut self) {
        if self.conn.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let drained = async { while let Some(Ok(_)) = self.frame().await {} };
            let _ = tokio::time::timeout(DRAIN, drained).await;
        });
    }
}

impl hyper::body::Body for EngineBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        // What has arrived is taken first; the connection is driven when nothing has.
        let mut polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_pending() {
            if let Some(conn) = &mut this.conn {
                conn.drive(cx);
                polled = Pin::new(&mut this.body).poll_frame(cx);
            }
        }
        match &polled {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection to an engine.
#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    async fn open(endpoint: &Endpoint) -> io::Result<Stream> {
        Ok(match endpoint {
            Endpoint::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
            Endpoint::Tcp(addr) => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Endpoint::Remote(target) => {
                let s = TcpStream::connect((target.host.as_str(), target.port)).await?;
                s.set_nodelay(true)?;
                match &target.tls {
                    None => Stream::Tcp(s),
                    Some(config) => {
                        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                        let tls = tokio_rustls::TlsConnector::from(config.clone())
                            .connect(name, s)
                            .await?;
                        Stream::Tls(Box::new(tls))
                    }
                }
            }
        })
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;

    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// An engine on a Unix socket that answers each request `ANSWER`, closing a connection
    /// after `per_connection` answers; it counts the connections it accepted.
    fn engine(per_connection: usize) -> (tempfile::TempDir, Endpoint, Arc<AtomicUsize>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for _ in 0..per_connection {
                        while memchr::memmem::find(&buf, b"\r\n\r\n").is_none() {
                            let mut chunk = [0u8; 1024];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        if s.write_all(ANSWER).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (dir, Endpoint::Unix(path), accepted)
    }

    async fn get(pool: &Arc<Pool>) -> Result<Bytes, PoolError> {
        let mut req = Request::new(crate::http::empty());
        *req.uri_mut() = hyper::Uri::from_static("/health");
        req.headers_mut().insert(
            hyper::header::HOST,
            hyper::header::HeaderValue::from_static("engine"),
        );
        let resp = pool.send(req).await?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(PoolError::Exchange)?;
        Ok(body.to_bytes())
    }

    #[tokio::test]
    async fn a_connection_serves_request_after_request() {
        let (_dir, endpoint, accepted) = engine(usize::MAX);
        let pool = Arc::new(Pool::new(endpoint));
        for _ in 0..5 {
            assert_eq!(get(&pool).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.lock().len(), 1);
    }

    #[tokio::test]
    async fn one_the_engine_closed_while_idle_is_replaced_not_failed() {
        let (_dir, endpoint, accepted) = engine(1);
        let pool = Arc::new(Pool::new(endpoint));
        for i in 1..=4 {
            assert_eq!(get(&pool).await.unwrap(), "ok", "request {i}");
            // The engine's close reaches this side before the next request.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        let (_dir, endpoint, accepted) = engine(usize::MAX);
        let pool = Arc::new(Pool::new(endpoint));
        let mut req = Request::new(crate::http::empty());
        req.headers_mut().insert(
            hyper::header::HOST,
            hyper::header::HeaderValue::from_static("engine"),
        );
        let resp = pool.send(req).await.unwrap();
        drop(resp);
        assert_eq!(pool.lock().len(), 0);
        assert_eq!(get(&pool).await.unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
