//! One connection served: a request head read, the handler run on it, its answer written —
//! again while the client keeps the connection, pipelined requests in order.
//!
//! All of it runs in the connection's own task, the handler's future polled in place. While
//! the handler works and while its answer streams, a client that closes its side ends the
//! request (the handler's future and the answer's body are dropped: an engine request is
//! aborted). Output is gathered — the head and whatever of the body is ready — and written
//! in one call; a large frame is written where it lies instead of copied.

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::AsRawFd;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Body;
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::body::{Decoder, Framing};
use super::head::{self, RequestHead, Sending};
use super::request_body::{Lent, RequestBody};
use super::socket::{ReadSize, Socket, KEPT_BUFFER};

/// How long a just-accepted connection is given, at shutdown, for its first request to
/// arrive: a client writes right after connecting, and closed before its request was read,
/// it would get an empty reply during a restart.
const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(500);
/// Gathered output is written once it reaches this size.
const WRITE_AT: usize = 64 * 1024;
/// A body frame this large is written where it lies, not copied into the output.
const COPY_UNDER: usize = 16 * 1024;

/// Told when a connection starts serving a request and when it is done with it (its answer
/// sent, or abandoned): the connection registry's busy and idle.
pub trait Activity: Send + Sync {
    fn busy(&self);
    fn idle(&self);
}

pub struct Options {
    /// A request head must arrive whole within this, counted from when it is awaited.
    pub header_read_timeout: Duration,
    /// The connection ends after the request in flight, or at once when it serves none.
    pub shutdown: CancellationToken,
    /// The connection ends at once when this fires while it serves no request.
    pub shed: Option<CancellationToken>,
    pub activity: Option<Arc<dyn Activity>>,
}

#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("the connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the client left before its answer was sent")]
    ClientLeft,
    #[error("the answer's body failed: {0}")]
    Body(String),
    #[error("the answer's body did not match its length ({sent} bytes of {announced})")]
    Length { sent: u64, announced: u64 },
}

/// Serves `stream` (non-blocking, a std TCP or Unix stream) until the client leaves, the
/// connection is refused or shut down.
pub async fn serve<S, H, F, B>(stream: S, options: Options, mut handler: H)
where
    S: AsRawFd + Send + Sync + 'static,
    H: FnMut(Request<RequestBody>) -> F + Send,
    F: Future<Output = Response<B>> + Send,
    B: Body<Data = Bytes> + Send,
    B::Error: std::fmt::Display,
{
    let socket = match Socket::new(stream) {
        Ok(socket) => Arc::new(socket),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch a new connection");
            return;
        }
    };
    let mut conn = Conn {
        socket,
        buf: BytesMut::new(),
        read_size: ReadSize::default(),
        lent: None,
        unfinished_body: false,
        read_closed: false,
        out: Vec::new(),
        written: 0,
        served: 0,
    };
    if let Err(e) = conn.run(&options, &mut handler).await {
        // Clients that vanish or send garbage are normal on a public port.
        tracing::debug!(error = %e, "connection ended with an error");
    }
    conn.socket.shutdown_write();
}

struct Conn<S: AsRawFd> {
    socket: Arc<Socket<S>>,
    /// Read from the client, not yet taken.
    buf: BytesMut,
    read_size: ReadSize,
    /// The body that borrowed the read buffer to read from the socket, until it is dropped.
    lent: Option<Arc<Mutex<Lent>>>,
    /// A request body was left unread: the buffer holds none of the next request.
    unfinished_body: bool,
    /// The client closed its side.
    read_closed: bool,
    out: Vec<u8>,
    /// How much of `out` is written.
    written: usize,
    served: u64,
}

/// What the handler's answer leaves the connection to.
enum Next {
    Another,
    Close,
}

impl<S: AsRawFd + Send + Sync + 'static> Conn<S> {
    async fn run<H, F, B>(&mut self, options: &Options, handler: &mut H) -> Result<(), Ended>
    where
        H: FnMut(Request<RequestBody>) -> F + Send,
        F: Future<Output = Response<B>> + Send,
        B: Body<Data = Bytes> + Send,
        B::Error: std::fmt::Display,
    {
        let born = Instant::now();
        let mut shutdown = pin!(options.shutdown.cancelled());
        let mut shed = pin!(async {
            match &options.shed {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        });
        let mut timer: Option<Pin<Box<Sleep>>> = None;
        loop {
            let head = match self
                .next_head(options, born, &mut shutdown, &mut shed, &mut timer)
                .await
            {
                Ok(Some(head)) => head,
                Ok(None) => return Ok(()),
                Err(Refused::Io(e)) => return Err(e.into()),
                Err(Refused::Status(status)) => {
                    self.out.clear();
                    head::write_refusal(&mut self.out, status);
                    return self.write_out().await;
                }
            };
            if let Some(activity) = &options.activity {
                activity.busy();
            }
            let next = self.exchange(head, options, handler).await;
            if let Some(activity) = &options.activity {
                activity.idle();
            }
            match next? {
                Next::Another if !options.shutdown.is_cancelled() => {}
                _ => return Ok(()),
            }
        }
    }

    /// The next request's head: `None` when the client leaves (or never sends one within
    /// the header read timeout), when the connection is shed, or at shutdown.
    async fn next_head(
        &mut self,
        options: &Options,
        born: Instant,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
        shed: &mut Pin<&mut impl Future<Output = ()>>,
        timer: &mut Option<Pin<Box<Sleep>>>,
    ) -> Result<Option<RequestHead>, Refused> {
        if self.unfinished_body || self.read_closed {
            return Ok(None);
        }
        let deadline = Instant::now() + options.header_read_timeout;
        let mut armed = false;
        let mut grace = false;
        poll_fn(|cx| {
            loop {
                if !self.buf.is_empty() {
                    if let Some(head) =
                        head::read_request(&mut self.buf).map_err(Refused::Status)?
                    {
                        return Poll::Ready(Ok(Some(head)));
                    }
                }
                match self
                    .socket
                    .poll_read(cx, &mut self.buf, &mut self.read_size)
                {
                    Poll::Ready(Ok(0)) => {
                        self.read_closed = true;
                        return Poll::Ready(Ok(None));
                    }
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Refused::Io(e))),
                    Poll::Pending => break,
                }
            }
            // One timer a connection, set again for each head awaited.
            let timer = match timer {
                Some(timer) if !armed => {
                    timer.as_mut().reset(deadline);
                    timer
                }
                Some(timer) => timer,
                None => timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
            };
            armed = true;
            // The registry sheds connections that serve no request: a half-sent head too.
            if shed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(None));
            }
            // At shutdown a connection between requests closes; one accepted a moment ago
            // has its first request on the way, and gets the moment.
            if self.buf.is_empty() && !grace && shutdown.as_mut().poll(cx).is_ready() {
                let until = born + FIRST_REQUEST_GRACE;
                if self.served > 0 || Instant::now() >= until {
                    return Poll::Ready(Ok(None));
                }
                grace = true;
                timer.as_mut().reset(until.min(deadline));
            }
            if timer.as_mut().poll(cx).is_ready() {
                if !grace {
                    tracing::debug!(
                        "no whole request head within api.header_read_timeout; closing"
                    );
                }
                return Poll::Ready(Ok(None));
            }
            Poll::Pending
        })
        .await
    }

    async fn exchange<H, F, B>(
        &mut self,
        head: RequestHead,
        options: &Options,
        handler: &mut H,
    ) -> Result<Next, Ended>
    where
        H: FnMut(Request<RequestBody>) -> F + Send,
        F: Future<Output = Response<B>> + Send,
        B: Body<Data = Bytes> + Send,
        B::Error: std::fmt::Display,
    {
        let head_only = head.method == Method::HEAD;
        let version = head.version;
        let body = match head.framing {
            Framing::Empty => RequestBody::empty(),
            Framing::Length(n) if self.buf.len() as u64 >= n => {
                RequestBody::whole(self.buf.split_to(n as usize).freeze())
            }
            framing => {
                let lent = Arc::new(Mutex::new(Lent::new(
                    self.socket.clone(),
                    std::mem::take(&mut self.buf),
                    self.read_size,
                    Decoder::new(framing),
                    head.expect_continue,
                )));
                self.lent = Some(lent.clone());
                RequestBody::reading(lent)
            }
        };
        let mut request = Request::new(body);
        *request.method_mut() = head.method;
        *request.uri_mut() = head.uri;
        *request.version_mut() = head.version;
        *request.headers_mut() = head.headers;
        let answered = {
            let mut answer = pin!(handler(request));
            poll_fn(|cx| {
                if let Poll::Ready(response) = answer.as_mut().poll(cx) {
                    return Poll::Ready(Some(response));
                }
                self.reclaim();
                if self.client_left(cx) {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await
        };
        let Some(response) = answered else {
            return Err(Ended::ClientLeft);
        };
        self.reclaim();
        let mut keep_alive = head.keep_alive && self.lent.is_none() && !self.unfinished_body;
        let (parts, body) = response.into_parts();
        if head::connection_options(&parts.headers).0 || options.shutdown.is_cancelled() {
            keep_alive = false;
        }
        let sending = sending(&parts.status, &parts.headers, &body, head_only, version);
        if sending == Sending::UntilClose {
            keep_alive = false;
        }
        self.out.clear();
        self.written = 0;
        head::write_response(
            &mut self.out,
            parts.status,
            &parts.headers,
            sending,
            keep_alive,
            version,
        );
        drop(parts);
        self.send(body, sending).await?;
        self.served += 1;
        self.shrink();
        Ok(if keep_alive {
            Next::Another
        } else {
            Next::Close
        })
    }

    /// Between requests a connection keeps buffers of an everyday request's size: one that
    /// carried a large body or answer does not hold that memory while it idles.
    fn shrink(&mut self) {
        if self.out.capacity() > KEPT_BUFFER {
            self.out = Vec::new();
        }
        if self.buf.is_empty() && self.buf.capacity() > KEPT_BUFFER {
            self.buf = BytesMut::new();
        }
        self.read_size = ReadSize::default();
    }

    /// Takes the read buffer back from a request body its handler has dropped; what of the
    /// body is already buffered is skipped, and a body left unread ends the connection after
    /// this answer (its rest would be read as the next request).
    fn reclaim(&mut self) {
        let Some(lent) = self.lent.take() else {
            return;
        };
        // The body, while its handler holds it, holds the other reference.
        let lent = match Arc::try_unwrap(lent) {
            Ok(lent) => lent
                .into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            Err(still_held) => {
                self.lent = Some(still_held);
                return;
            }
        };
        let (buf, read_size, finished) = lent.give_back();
        self.unfinished_body = !finished;
        self.buf = buf;
        self.read_size = read_size;
    }

    /// Whether the client closed its side while its request is served. Bytes it sends
    /// meanwhile (a pipelined request) are kept, and then nothing more is read until the
    /// answer is out, as hyper did.
    fn client_left(&mut self, cx: &mut Context<'_>) -> bool {
        if self.lent.is_some() || self.unfinished_body || self.read_closed || !self.buf.is_empty() {
            return false;
        }
        match self
            .socket
            .poll_read(cx, &mut self.buf, &mut self.read_size)
        {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                self.read_closed = true;
                true
            }
            Poll::Ready(Ok(_)) | Poll::Pending => false,
        }
    }

    /// Writes the head in `out` and the body after it, framed as `sending` says.
    async fn send<B>(&mut self, body: B, sending: Sending) -> Result<(), Ended>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: std::fmt::Display,
    {
        // Dropped the moment it ends, before its last bytes go out: a request's record
        // (its access line, its counters) goes with its body, and a client that has read the
        // end finds them written.
        let mut body = pin!(Some(body));
        let mut out = Outgoing {
            sending,
            sent: 0,
            ended: false,
            large: None,
            body_waits: false,
        };
        if matches!(sending, Sending::Nothing(_)) {
            body.set(None);
            out.ended = true;
        }
        poll_fn(|cx| {
            // Each wake polls the body at least once; within one, not again after it waited.
            out.body_waits = false;
            loop {
                if !out.ended && out.large.is_none() && !out.body_waits {
                    out.gather(body.as_mut(), cx, &mut self.out)?;
                }
                if self.written < self.out.len() || out.large.is_some() {
                    let chunked = out.sending == Sending::Chunked;
                    match self.poll_write_out(cx, &mut out.large, chunked) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                if out.ended {
                    return Poll::Ready(Ok(()));
                }
                if self.client_left(cx) {
                    return Poll::Ready(Err(Ended::ClientLeft));
                }
                return Poll::Pending;
            }
        })
        .await
    }

    /// Writes `out`, then a large frame waiting after it (and a chunk's end after that).
    fn poll_write_out(
        &mut self,
        cx: &mut Context<'_>,
        large: &mut Option<Bytes>,
        chunked: bool,
    ) -> Poll<io::Result<()>> {
        loop {
            if let Some(rest) = self.out.get(self.written..).filter(|r| !r.is_empty()) {
                let n = std::task::ready!(self.socket.poll_write(cx, rest))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                continue;
            }
            self.out.clear();
            self.written = 0;
            let Some(frame) = large.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let n = std::task::ready!(self.socket.poll_write(cx, frame))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            frame.advance(n.min(frame.len()));
            if frame.is_empty() {
                *large = None;
                if chunked {
                    self.out.extend_from_slice(b"\r\n");
                }
            }
        }
    }

    /// Writes all of `out` (a refusal).
    async fn write_out(&mut self) -> Result<(), Ended> {
        self.written = 0;
        poll_fn(|cx| self.poll_write_out(cx, &mut None, false)).await?;
        Ok(())
    }
}

enum Refused {
    Io(io::Error),
    Status(StatusCode),
}

/// How the answer's body goes out: not at all for HEAD, 1xx, 204 and 304; with the length
/// the handler set, or the body knows; chunked to an HTTP/1.1 client; else until the close.
fn sending<B: Body>(
    status: &StatusCode,
    headers: &hyper::HeaderMap,
    body: &B,
    head_only: bool,
    version: Version,
) -> Sending {
    let declared = head::content_length(headers).ok().flatten();
    let length = declared.or_else(|| body.size_hint().exact());
    if head_only
        || status.is_informational()
        || *status == StatusCode::NO_CONTENT
        || *status == StatusCode::NOT_MODIFIED
    {
        let announced = if *status == StatusCode::NO_CONTENT || status.is_informational() {
            None
        } else {
            length
        };
        return Sending::Nothing(announced);
    }
    match length {
        Some(n) => Sending::Length(n),
        None if version == Version::HTTP_11 => Sending::Chunked,
        None => Sending::UntilClose,
    }
}

/// An answer's body on its way out.
struct Outgoing {
    sending: Sending,
    /// Body bytes taken so far.
    sent: u64,
    ended: bool,
    /// A frame too large to copy, written after `out`.
    large: Option<Bytes>,
    /// The body said Pending since the last write (its waker is registered).
    body_waits: bool,
}

impl Outgoing {
    /// Takes what the body has ready into `out` (framed), until it waits, ends, gives a
    /// large frame or `out` is full.
    fn gather<B>(
        &mut self,
        mut body: Pin<&mut Option<B>>,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Ended>
    where
        B: Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        while out.len() < WRITE_AT {
            let Some(polled) = body.as_mut().as_pin_mut().map(|b| b.poll_frame(cx)) else {
                self.ended = true;
                return Ok(());
            };
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers are not sent
                    };
                    if data.is_empty() {
                        continue;
                    }
                    self.sent += data.len() as u64;
                    if let Sending::Length(announced) = self.sending {
                        if self.sent > announced {
                            return Err(Ended::Length {
                                sent: self.sent,
                                announced,
                            });
                        }
                    }
                    let chunked = self.sending == Sending::Chunked;
                    if chunked {
                        head::chunk_size(out, data.len());
                    }
                    if data.len() >= COPY_UNDER {
                        self.large = Some(data);
                        return Ok(());
                    }
                    out.extend_from_slice(&data);
                    if chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    body.set(None);
                    return Err(Ended::Body(e.to_string()));
                }
                Poll::Ready(None) => {
                    body.set(None);
                    if let Sending::Length(announced) = self.sending {
                        if self.sent != announced {
                            return Err(Ended::Length {
                                sent: self.sent,
                                announced,
                            });
                        }
                    }
                    if self.sending == Sending::Chunked {
                        out.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.ended = true;
                    return Ok(());
                }
                Poll::Pending => {
                    self.body_waits = true;
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use http_body_util::{BodyExt, Full};

    use super::*;

    type Boxed = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

    /// Serves one end of a socket pair with `handler` in a runtime of its own; the other end
    /// is the client's, blocking, with a read timeout.
    fn serve_pair<H, F>(handler: H) -> (UnixStream, std::thread::JoinHandle<()>)
    where
        H: FnMut(Request<RequestBody>) -> F + Send + 'static,
        F: Future<Output = Response<Boxed>> + Send + 'static,
    {
        let (client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let options = Options {
                    header_read_timeout: Duration::from_secs(10),
                    shutdown: CancellationToken::new(),
                    shed: None,
                    activity: None,
                };
                serve(server, options, handler).await;
            });
        });
        (client, thread)
    }

    /// A handler that answers with the request's body (and its method and path first).
    async fn echo(req: Request<RequestBody>) -> Response<Boxed> {
        let line = format!("{} {}\n", req.method(), req.uri());
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut all = line.into_bytes();
        all.extend_from_slice(&body);
        Response::new(
            Full::new(Bytes::from(all))
                .map_err(|never| match never {})
                .boxed(),
        )
    }

    fn read_all(mut s: UnixStream) -> String {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn bodies_arriving_in_pieces_are_read_and_the_next_request_follows() {
        let (mut client, server) = serve_pair(echo);
        let pieces: [&[u8]; 5] = [
            b"POST /a HTTP/1.1\r\nContent-Length: 11\r\n\r\nhel",
            b"lo ",
            b"world",
            b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
            b"0\r\n\r\nGET /c HTTP/1.1\r\nConnection: close\r\n\r\n",
        ];
        for piece in pieces {
            client.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = read_all(client);
        server.join().unwrap();
        let answers = vllama_testkit::parse_responses(&text);
        let bodies: Vec<&str> = answers.iter().map(|a| a.body.as_str()).collect();
        assert_eq!(
            bodies,
            ["POST /a\nhello world", "POST /b\nabc", "GET /c\n"],
            "{text}"
        );
        assert!(text.ends_with("GET /c\n"), "{text}");
    }

    #[test]
    fn a_large_answer_reaches_a_slow_reader_whole() {
        // 4 MiB in frames of 64 KiB (written where they lie) and of 100 bytes (gathered),
        // chunked; the client reads slowly, so the socket fills and writes wait.
        let (mut client, server) = serve_pair(|_req| async {
            let frames = (0..64u32).flat_map(|i| {
                let big = Bytes::from(vec![b'a' + (i % 26) as u8; 64 * 1024]);
                let small = Bytes::from(format!("<{i:03}>").repeat(20));
                [big, small]
            });
            Response::new(Frames(frames.collect::<Vec<_>>().into_iter()).boxed())
        });
        client
            .write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("{e}"),
            }
            if got.len() < 256 * 1024 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        server.join().unwrap();
        let text = String::from_utf8(got).unwrap();
        assert!(text.contains("transfer-encoding: chunked"), "{:.300}", text);
        let answer = &vllama_testkit::parse_responses(&text)[0];
        let want: String = (0..64u32)
            .map(|i| {
                let letter = char::from(b'a' + (i % 26) as u8);
                format!(
                    "{}{}",
                    letter.to_string().repeat(64 * 1024),
                    format!("<{i:03}>").repeat(20)
                )
            })
            .collect();
        assert_eq!(answer.body.len(), want.len());
        assert!(answer.body == want, "the body arrived changed");
    }

    #[test]
    fn a_body_shorter_or_longer_than_its_length_ends_the_connection_without_another_answer() {
        for (announced, sent) in [(10u64, 5usize), (3, 5)] {
            let (mut client, server) = serve_pair(move |_req| async move {
                let mut resp = Response::new(
                    Full::new(Bytes::from(vec![b'x'; sent]))
                        .map_err(|never| match never {})
                        .boxed(),
                );
                resp.headers_mut()
                    .insert("content-length", announced.to_string().parse().unwrap());
                resp
            });
            client
                .write_all(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
                .unwrap();
            let text = read_all(client);
            server.join().unwrap();
            // No second answer: the connection ended with the broken one (which may not
            // have gone out at all: nothing of it is written before the body is taken).
            assert!(text.matches("HTTP/1.1 200").count() <= 1, "{text}");
            assert!(
                !text.contains(&"x".repeat(sent.min(announced as usize) + 1)),
                "{text}"
            );
        }
    }

    /// A body of frames of unknown total length (chunked), all ready.
    struct Frames(std::vec::IntoIter<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.next().map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }
}
