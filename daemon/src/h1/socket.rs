//! A connection's socket, read and written through a shared reference: the connection loop
//! writes answers while a request's body, held by its handler, reads. It is registered with
//! the reactor for reads and writes; after a read that did not fill the buffer its read
//! readiness is cleared, so the next read waits for the next edge instead of asking the
//! kernel for nothing (tokio's own streams do the same).

use std::io;
use std::os::fd::AsRawFd;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A first read asks for this much; one that fills what it asked for doubles the next, up
/// to [`MAX_READ`].
const READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;
/// A read goes into the room the buffer has if it has at least this much.
const MIN_ROOM: usize = 2 * 1024;
/// An idle connection lets go of a buffer larger than this (one that carried a large body or
/// answer does not hold that memory while it idles).
pub(crate) const KEPT_BUFFER: usize = 32 * 1024;

/// How much a connection's next read asks for, the server's and the engine client's alike:
/// [`READ`] at first and again between messages, doubled after a read that filled all the
/// room it had, up to [`MAX_READ`] (a large body comes in fewer reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadSize(usize);

impl Default for ReadSize {
    fn default() -> ReadSize {
        ReadSize(READ)
    }
}

impl ReadSize {
    /// Makes room in `buf` for the next read and says how much there is. The room left is
    /// used while there is some: the memory before it may still be shared with bytes on
    /// their way elsewhere (a request's header values, a frame to a client), and reserving a
    /// whole read's worth would allocate anew each time.
    pub(crate) fn room(self, buf: &mut BytesMut) -> usize {
        if buf.capacity() - buf.len() < MIN_ROOM {
            buf.reserve(self.0);
        }
        buf.capacity() - buf.len()
    }

    /// After a read of `n` bytes into `room`.
    pub(crate) fn read(&mut self, n: usize, room: usize) {
        if n == room {
            self.0 = (self.0 * 2).min(MAX_READ);
        }
    }
}

/// What a request body reads and writes through (the socket, its type erased).
pub(crate) trait Wire: Send + Sync {
    fn poll_read_buf(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        size: &mut ReadSize,
    ) -> Poll<io::Result<usize>>;
    fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>>;
}

#[derive(Debug)]
pub(crate) struct Socket<S: AsRawFd> {
    fd: AsyncFd<S>,
}

impl<S: AsRawFd> Socket<S> {
    /// `stream` must be in non-blocking mode (a std stream from tokio's `into_std`).
    pub(crate) fn new(stream: S) -> io::Result<Socket<S>> {
        // SAFETY: the stream owns its descriptor, which stays open and the same until the
        // AsyncFd drops the stream.
        let fd = unsafe {
            AsyncFd::register_with_interest(stream, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(io::Error::from)?;
        Ok(Socket { fd })
    }

    /// Reads what arrived into `buf`: how many bytes (0: the peer closed its side).
    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        size: &mut ReadSize,
    ) -> Poll<io::Result<usize>> {
        size.room(buf);
        loop {
            let mut ready = ready!(self.fd.poll_read_ready(cx))?;
            let spare = buf.spare_capacity_mut();
            let room = spare.len();
            // SAFETY: recv writes at most `room` bytes into the spare capacity and returns
            // how many it wrote.
            let read = ready.try_io(|fd| {
                let n = unsafe { libc::recv(fd.as_raw_fd(), spare.as_mut_ptr().cast(), room, 0) };
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            });
            match read {
                Ok(Ok(n)) => {
                    // SAFETY: the first `n` bytes of the spare capacity were written by recv.
                    unsafe { buf.set_len(buf.len() + n) };
                    size.read(n, room);
                    if n > 0 && n < room {
                        ready.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes from `data`, at once when the socket has room (it almost always has).
    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match send(self.fd.get_ref(), data) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return Poll::Ready(done),
        }
        loop {
            let mut ready = ready!(self.fd.poll_write_ready(cx))?;
            if let Ok(done) = ready.try_io(|fd| send(fd, data)) {
                return Poll::Ready(done);
            }
        }
    }

    /// No more writes: the peer reads the end of the stream.
    pub(crate) fn shutdown_write(&self) {
        // SAFETY: shutdown takes a descriptor and a flag; a failure (the peer is gone) is
        // of no interest to a connection that is closing.
        unsafe { libc::shutdown(self.fd.get_ref().as_raw_fd(), libc::SHUT_WR) };
    }
}

impl<S: AsRawFd + Send + Sync> Wire for Socket<S> {
    fn poll_read_buf(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        size: &mut ReadSize,
    ) -> Poll<io::Result<usize>> {
        self.poll_read(cx, buf, size)
    }

    fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Socket::poll_write(self, cx, data)
    }
}

/// `send(2)` without SIGPIPE: a peer that closed its end fails the write with EPIPE.
pub(crate) fn send<S: AsRawFd>(socket: &S, data: &[u8]) -> io::Result<usize> {
    // SAFETY: send reads at most `data.len()` bytes from `data`.
    let n = unsafe {
        libc::send(
            socket.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
