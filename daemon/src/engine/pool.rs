//! One engine's HTTP/1.1 connections, kept open between requests, and the exchange on one:
//! the request written whole, the answer's head read and its body taken as it arrives
//! ([`super::wire`]), all by the task of the request that holds the connection — no task
//! per connection, no channel between tasks, no wake-up of another task. The connection
//! goes back to the pool at the body's end, and a pooled one is checked for life (the
//! engine may have closed it) before it is used again.
//!
//! This replaced hyper's client connection here (hyper still serves the clients, and its
//! pooled client the Hub downloads): the engine is a known peer that answers requests
//! vllamad wrote itself, and hyper's general client — its dispatcher, its request and
//! response channels, its header map for the request — was a fifth of the instructions of
//! a proxied request (docs/PERFORMANCE.md).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::client::Endpoint;
use super::unix::UnixStream;
use super::wire::{self, Decoder, Step, WireError};
use crate::h1::{ReadSize, KEPT_BUFFER};

/// A connection idle this long is closed rather than used: under uvicorn's keep-alive
/// timeout (vLLM's `VLLM_HTTP_TIMEOUT_KEEP_ALIVE`, 5 s), so the engine seldom closes one
/// just as a request goes out on it.
const IDLE_FOR: Duration = Duration::from_secs(4);
/// Idle connections kept at most, per engine and connection thread.
const MAX_IDLE: usize = 256;
/// How long a body's rest is read after its reader is done with it.
const DRAIN: Duration = Duration::from_secs(2);
/// A request body up to this size goes out in one write with its head; a larger one is
/// written after it, not copied.
const COPIED_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connecting to the engine failed")]
    Connect(#[source] io::Error),
    #[error("the engine connection failed")]
    Io(#[source] io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the engine closed the connection before it answered")]
    Closed,
}

/// An engine's idle connections, the most recently used last: a queue per connection thread
/// ([`crate::conn_threads::current`]), so that a connection is reused by the thread whose
/// I/O driver watches its socket — taken up by another, each of its readiness events would
/// cross threads.
#[derive(Debug)]
pub struct Pool {
    endpoint: Endpoint,
    idle: Mutex<Vec<VecDeque<Idle>>>,
}

#[derive(Debug)]
struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// One connection and what was read from it but not yet taken.
#[derive(Debug)]
struct Conn {
    io: Stream,
    buf: BytesMut,
    /// What the next read asks for.
    read_size: ReadSize,
}

impl Conn {
    fn new(io: Stream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            read_size: ReadSize::default(),
        }
    }

    /// Reads what the engine sent into the buffer: how many bytes (0: it closed).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let room = self.read_size.room(&mut self.buf);
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        self.read_size.read(n, room);
        Poll::Ready(Ok(n))
    }

    /// Whether an idle connection can carry a request: nothing arrived on it, and the
    /// engine has not closed it.
    fn reusable(&mut self, cx: &mut Context<'_>) -> bool {
        self.buf.is_empty() && self.poll_fill(cx).is_pending()
    }
}

/// An exchange that failed, and whether its request was delivered at all.
struct Failed {
    error: PoolError,
    unsent: bool,
}

impl Pool {
    pub fn new(endpoint: Endpoint) -> Self {
        Pool {
            endpoint,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends `req` (origin-form URI, its `Host` set) on a pooled or a new connection. When
    /// a pooled one turns out closed before the request went out, a new one carries it.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Bytes>,
    ) -> Result<Response<EngineBody>, PoolError> {
        // A connection lives in a box of its own, so that moving it between the pool, the
        // request and its body moves a pointer; the cold paths (connecting, the retry) are
        // boxed futures, so that the hot path's future stays small: it is moved into each
        // caller's.
        let (conn, reused) = match poll_fn(|cx| Poll::Ready(self.checkout(cx))).await {
            Some(conn) => (conn, true),
            None => (Box::pin(self.connect()).await?, false),
        };
        let (head, conn) = match exchange(conn, &req).await {
            Ok(answer) => answer,
            Err(failed) if reused && failed.unsent => {
                tracing::debug!(error = %failed.error, "a pooled engine connection had closed; a new one");
                Box::pin(async {
                    let conn = self.connect().await?;
                    exchange(conn, &req).await.map_err(|f| f.error)
                })
                .await?
            }
            Err(failed) => return Err(failed.error),
        };
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = head.status;
        parts.version = head.version;
        parts.headers = head.headers;
        let mut body = EngineBody {
            decoder: Decoder::new(head.framing),
            keep_alive: head.keep_alive,
            conn: Some(conn),
            pool: self.clone(),
        };
        if body.decoder.is_done() {
            body.give_back();
        }
        Ok(Response::from_parts(parts, body))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<VecDeque<Idle>>> {
        // A panic while the lock was held left nothing half-done: queues of connections.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The calling thread's queue in `queues`; made when `make`, else none until it has been.
    fn queue(queues: &mut Vec<VecDeque<Idle>>, make: bool) -> Option<&mut VecDeque<Idle>> {
        let i = crate::conn_threads::current();
        if make && queues.len() <= i {
            queues.resize_with(i + 1, VecDeque::new);
        }
        queues.get_mut(i)
    }

    /// The most recently used idle connection that is still open and quiet.
    fn checkout(&self, cx: &mut Context<'_>) -> Option<Box<Conn>> {
        loop {
            let idle = Pool::queue(&mut self.lock(), false)?.pop_back()?;
            if idle.since.elapsed() >= IDLE_FOR {
                // The rest are older still.
                let stale = Pool::queue(&mut self.lock(), false).map(std::mem::take);
                drop((idle, stale));
                return None;
            }
            let mut conn = idle.conn;
            if conn.reusable(cx) {
                return Some(conn);
            }
        }
    }

    fn put(&self, conn: Box<Conn>) {
        let now = Instant::now();
        let mut stale = Vec::new();
        {
            let mut queues = self.lock();
            // Other threads' stale connections too: a thread that no longer serves this
            // engine would keep its own (closed by the engine by now) until the engine stops.
            for queue in queues.iter_mut() {
                while queue.front().is_some_and(|i| now - i.since >= IDLE_FOR) {
                    stale.extend(queue.pop_front());
                }
            }
            let Some(idle) = Pool::queue(&mut queues, true) else {
                return;
            };
            while idle.len() >= MAX_IDLE {
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
        Ok(Box::new(Conn::new(stream)))
    }
}

/// The request out, and the answer's head back.
async fn exchange(
    mut conn: Box<Conn>,
    req: &Request<Bytes>,
) -> Result<(wire::Head, Box<Conn>), Failed> {
    let body = req.body();
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let copied = body.len() <= COPIED_BODY;
    let mut out = Vec::with_capacity(256 + if copied { body.len() } else { 0 });
    wire::write_head(&mut out, req.method(), target, req.headers(), body.len());
    if copied {
        out.extend_from_slice(body);
    }
    let sent = |e| Failed {
        error: PoolError::Io(e),
        unsent: false,
    };
    // The first write tells whether the connection is open: one the engine closed fails it
    // (EPIPE, ECONNRESET) with nothing delivered.
    let first = conn.io.write(&out).await.map_err(|e| Failed {
        error: PoolError::Io(e),
        unsent: true,
    })?;
    conn.io
        .write_all(out.get(first..).unwrap_or_default())
        .await
        .map_err(sent)?;
    if !copied {
        conn.io.write_all(body).await.map_err(sent)?;
    }
    // TLS keeps what it encrypted until flushed.
    conn.io.flush().await.map_err(sent)?;
    loop {
        let parsed = wire::parse_head(&conn.buf, req.method()).map_err(|e| Failed {
            error: e.into(),
            unsent: false,
        })?;
        if let Some((len, head)) = parsed {
            conn.buf.advance(len);
            return Ok((head, conn));
        }
        let n = poll_fn(|cx| conn.poll_fill(cx)).await.map_err(sent)?;
        if n == 0 {
            return Err(Failed {
                error: PoolError::Closed,
                unsent: false,
            });
        }
    }
}

/// An engine's response body, read by the task that polls it. At its end the connection
/// goes back to the pool (when it can carry another request); dropped before its end, the
/// connection closes.
#[derive(Debug)]
pub struct EngineBody {
    decoder: Decoder,
    keep_alive: bool,
    /// Until the body's end.
    conn: Option<Box<Conn>>,
    pool: Arc<Pool>,
}

impl EngineBody {
    fn give_back(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            // Bytes after the answer's end were never asked for: not a connection to reuse.
            if self.keep_alive && conn.buf.is_empty() {
                // An idle connection does not hold a large answer's buffer.
                if conn.buf.capacity() > KEPT_BUFFER {
                    conn.buf = BytesMut::new();
                }
                conn.read_size = ReadSize::default();
                self.pool.put(conn);
            }
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
    type Error = PoolError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, PoolError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let failed = match this.decoder.decode(&mut conn.buf) {
                Ok(Step::Data(data)) => {
                    if this.decoder.is_done() {
                        this.give_back();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End) => {
                    this.give_back();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => match ready!(conn.poll_fill(cx)) {
                    Ok(0) => match this.decoder.eof() {
                        Ok(()) => {
                            this.conn = None;
                            return Poll::Ready(None);
                        }
                        Err(e) => PoolError::Wire(e.into()),
                    },
                    Ok(_) => continue,
                    Err(e) => PoolError::Io(e),
                },
                Err(e) => PoolError::Wire(e.into()),
            };
            this.conn = None;
            return Poll::Ready(Some(Err(failed)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
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

    const ANSWER: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"];

    /// An engine on a Unix socket that answers each request `ANSWER`, closing a connection
    /// after `per_connection` answers; it counts the connections it accepted.
    fn engine(per_connection: usize) -> (tempfile::TempDir, Endpoint, Arc<AtomicUsize>) {
        engine_answering(per_connection, ANSWER)
    }

    /// The same engine answering with `pieces`, written 5 ms apart.
    fn engine_answering(
        per_connection: usize,
        pieces: &'static [&'static [u8]],
    ) -> (tempfile::TempDir, Endpoint, Arc<AtomicUsize>) {
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
                        for piece in pieces {
                            if s.write_all(piece).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                });
            }
        });
        (dir, Endpoint::Unix(path), accepted)
    }

    async fn get(pool: &Arc<Pool>) -> Result<Bytes, PoolError> {
        let mut req = Request::new(Bytes::new());
        *req.uri_mut() = hyper::Uri::from_static("/health");
        req.headers_mut().insert(
            hyper::header::HOST,
            hyper::header::HeaderValue::from_static("engine"),
        );
        let resp = pool.send(req).await?;
        let body = resp.into_body().collect().await?;
        Ok(body.to_bytes())
    }

    /// The idle connections of every thread.
    fn idle(pool: &Pool) -> usize {
        pool.lock().iter().map(VecDeque::len).sum()
    }

    /// Each connection thread reuses the connections it made, whose sockets its own I/O
    /// driver watches; another thread opens its own.
    #[test]
    fn each_connection_thread_keeps_its_own_connections() {
        let threads = crate::conn_threads::ConnThreads::start(2).unwrap();
        let tracker = tokio_util::task::TaskTracker::new();
        let main = tokio::runtime::Runtime::new().unwrap();
        let (_dir, endpoint, accepted) = main.block_on(async { engine(usize::MAX) });
        let pool = Arc::new(Pool::new(endpoint));
        // In turn: thread 0, 1, 0, 1…, one request at a time.
        for i in 0..6 {
            let (pool, (tx, rx)) = (pool.clone(), std::sync::mpsc::channel());
            threads.spawn(&tracker, async move {
                let _ = tx.send((crate::conn_threads::current(), get(&pool).await.ok()));
            });
            let (thread, answer) = rx.recv().unwrap();
            assert_eq!((thread, answer.as_deref()), (i % 2 + 1, Some(&b"ok"[..])));
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "one connection a thread"
        );
        let queues: Vec<usize> = pool.lock().iter().map(VecDeque::len).collect();
        assert_eq!(queues, [0, 1, 1]);
        // The second thread serves no more. Past the idle time, the first thread's next
        // request finds its own connection stale (a new one carries it), and its put closes
        // the second thread's stale one too.
        std::thread::sleep(IDLE_FOR + Duration::from_millis(100));
        let (pool2, (tx, rx)) = (pool.clone(), std::sync::mpsc::channel());
        threads.spawn(&tracker, async move {
            let _ = tx.send((crate::conn_threads::current(), get(&pool2).await.ok()));
        });
        let (thread, answer) = rx.recv().unwrap();
        assert_eq!((thread, answer.as_deref()), (1, Some(&b"ok"[..])));
        let queues: Vec<usize> = pool.lock().iter().map(VecDeque::len).collect();
        assert_eq!(queues, [0, 1, 0], "thread 0's stale connection kept");
        threads.stop();
    }

    #[tokio::test]
    async fn a_connection_serves_request_after_request() {
        let (_dir, endpoint, accepted) = engine(usize::MAX);
        let pool = Arc::new(Pool::new(endpoint));
        for _ in 0..5 {
            assert_eq!(get(&pool).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(idle(&pool), 1);
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
        let mut req = Request::new(Bytes::new());
        req.headers_mut().insert(
            hyper::header::HOST,
            hyper::header::HeaderValue::from_static("engine"),
        );
        let resp = pool.send(req).await.unwrap();
        drop(resp);
        assert_eq!(idle(&pool), 0);
        assert_eq!(get(&pool).await.unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_chunked_answer_is_read_whole_however_it_arrives_and_its_connection_kept() {
        const CHUNKED: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\ntransfer-",
            b"encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n",
            b"7\r\n, world\r",
            b"\n0\r\n",
            b"\r\n",
        ];
        let (_dir, endpoint, accepted) = engine_answering(usize::MAX, CHUNKED);
        let pool = Arc::new(Pool::new(endpoint));
        for _ in 0..3 {
            assert_eq!(get(&pool).await.unwrap(), "hello, world");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn answers_that_end_their_connection_are_read_to_the_close_and_not_kept() {
        const CLOSING: &[&[u8]] =
            &[b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"];
        let (_dir, endpoint, accepted) = engine_answering(usize::MAX, CLOSING);
        let pool = Arc::new(Pool::new(endpoint));
        for _ in 0..2 {
            assert_eq!(get(&pool).await.unwrap(), "ok");
        }
        assert_eq!((accepted.load(Ordering::SeqCst), idle(&pool)), (2, 0));
        // No length: the body runs until the engine closes.
        const UNTIL_CLOSE: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the close"];
        let (_dir, endpoint, _) = engine_answering(1, UNTIL_CLOSE);
        let pool = Arc::new(Pool::new(endpoint));
        assert_eq!(get(&pool).await.unwrap(), "until the close");
        assert_eq!(idle(&pool), 0);
    }
}
