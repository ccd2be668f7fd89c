//! A request's body as its handler reads it: the bytes that came with the head, taken
//! without a copy (most bodies), or — when more is still to come — read from the socket by
//! the handler itself, with the read buffer the connection lends it until the body is
//! dropped. Nothing is read before the handler asks: a request refused on its head (a
//! missing key, a limit) never has its body read, and an `Expect: 100-continue` client is
//! told to send it only then.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Frame, SizeHint};

use super::body::{Decoder, FramingError, Step};
use super::socket::{ReadSize, Wire};

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("the connection failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Framing(#[from] FramingError),
}

#[derive(Debug)]
pub struct RequestBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Empty,
    Whole(Bytes),
    Reading(Arc<Mutex<Lent>>),
}

/// What a body reading from the socket holds: the connection's read buffer among it.
pub(crate) struct Lent {
    socket: Arc<dyn Wire>,
    buf: BytesMut,
    read_size: ReadSize,
    decoder: Decoder,
    /// How much of `100 Continue` is still to be written.
    continue_left: usize,
    failed: bool,
}

impl std::fmt::Debug for Lent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent")
            .field("buffered", &self.buf.len())
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

impl Lent {
    pub(crate) fn new(
        socket: Arc<dyn Wire>,
        buf: BytesMut,
        read_size: ReadSize,
        decoder: Decoder,
        expect_continue: bool,
    ) -> Lent {
        Lent {
            socket,
            buf,
            read_size,
            decoder,
            continue_left: if expect_continue { CONTINUE.len() } else { 0 },
            failed: false,
        }
    }

    /// The whole body was read: what follows in the buffer is the connection's.
    fn finished(&self) -> bool {
        self.decoder.is_done() && !self.failed
    }

    /// The read buffer back, with what of the body it holds skipped; whether the body was
    /// read to its end (else the buffer holds the middle of it).
    pub(crate) fn give_back(mut self) -> (BytesMut, ReadSize, bool) {
        while !self.failed && !self.decoder.is_done() {
            match self.decoder.decode(&mut self.buf) {
                Ok(Step::Data(_)) => continue,
                Ok(Step::End | Step::More) => break,
                Err(_) => self.failed = true,
            }
        }
        let finished = self.finished();
        (self.buf, self.read_size, finished)
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let result = ready!(self.poll_data(cx));
        if let Some(Err(_)) = result {
            self.failed = true;
        }
        Poll::Ready(result.map(|r| r.map(Frame::data)))
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, RequestBodyError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        while self.continue_left > 0 {
            let from = CONTINUE.len() - self.continue_left;
            let rest = CONTINUE.get(from..).unwrap_or_default();
            let n = ready!(self.socket.poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Some(Err(io::Error::from(io::ErrorKind::WriteZero).into())));
            }
            self.continue_left -= n.min(self.continue_left);
        }
        loop {
            match self.decoder.decode(&mut self.buf)? {
                Step::Data(data) => return Poll::Ready(Some(Ok(data))),
                Step::End => return Poll::Ready(None),
                Step::More => {}
            }
            let n = ready!(self
                .socket
                .poll_read_buf(cx, &mut self.buf, &mut self.read_size))?;
            if n == 0 {
                self.decoder.eof()?;
            }
        }
    }
}

impl RequestBody {
    pub(crate) fn empty() -> RequestBody {
        RequestBody { kind: Kind::Empty }
    }

    pub(crate) fn whole(bytes: Bytes) -> RequestBody {
        RequestBody {
            kind: Kind::Whole(bytes),
        }
    }

    pub(crate) fn reading(lent: Arc<Mutex<Lent>>) -> RequestBody {
        RequestBody {
            kind: Kind::Reading(lent),
        }
    }
}

fn lock(lent: &Mutex<Lent>) -> MutexGuard<'_, Lent> {
    // A panic while it was held left a buffer and a decoder: nothing half-done to protect.
    lent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match &mut self.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Whole(bytes) => {
                let bytes = std::mem::take(bytes);
                self.kind = Kind::Empty;
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Kind::Reading(lent) => lock(lent).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Whole(_) => false,
            Kind::Reading(lent) => lock(lent).decoder.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Whole(bytes) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Reading(lent) => {
                let lent = lock(lent);
                match lent.decoder.remaining() {
                    Some(n) => SizeHint::with_exact(n),
                    None => SizeHint::default(),
                }
            }
        }
    }
}
