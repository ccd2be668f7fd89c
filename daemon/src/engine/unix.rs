//! A Unix stream to an engine that wakes its task for reads only.
//!
//! tokio registers every socket for reads and writes (edge-triggered). On a TCP socket a
//! write-space wake-up comes only after a writer found the buffer full, but Linux's Unix
//! sockets signal `EPOLLOUT` every time the peer reads (`unix_write_space`): each request
//! vllamad wrote to its engine woke vllamad's worker once more when the engine read it — an
//! extra `epoll_wait` return and, at low load, an extra sleep and wake-up of the thread per
//! request, for an event no task waits on. This stream is registered for reads alone and
//! writes straight to the socket, which has room for a request almost always; only a write
//! that finds the buffer full (a body of hundreds of kilobytes) registers a second
//! descriptor of the same socket for writes, and drops it once that write went through.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

#[derive(Debug)]
pub(crate) struct UnixStream {
    /// Registered for reads (hang-ups and errors are reported to it too).
    socket: AsyncFd<StdUnixStream>,
    /// A duplicate of the socket's descriptor, registered for writes while a write waits for
    /// room.
    waiting_write: Option<AsyncFd<OwnedFd>>,
}

impl UnixStream {
    pub(crate) async fn connect(path: &Path) -> io::Result<UnixStream> {
        // tokio's connect waits without blocking the thread when the engine's backlog is
        // full; the connected socket then moves to a registration of its own.
        let socket = tokio::net::UnixStream::connect(path).await?.into_std()?;
        Ok(UnixStream {
            socket: register(socket, Interest::READABLE)?,
            waiting_write: None,
        })
    }
}

/// Registers a non-blocking socket (or a duplicate of one) with the runtime's reactor.
fn register<T: AsRawFd>(fd: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `T` owns its descriptor (a std socket or an OwnedFd), which stays open and the
    // same until the AsyncFd drops it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

impl AsyncRead for UnixStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.socket.poll_read_ready(cx))?;
            let room = buf.remaining();
            // SAFETY: recv writes at most `unfilled.len()` bytes into the buffer and
            // returns how many it wrote; only those are marked initialized and filled.
            let read = ready.try_io(|socket| unsafe {
                let unfilled = buf.unfilled_mut();
                let n = libc::recv(
                    socket.as_raw_fd(),
                    unfilled.as_mut_ptr().cast(),
                    unfilled.len(),
                    0,
                );
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            });
            match read {
                Ok(Ok(n)) => {
                    // SAFETY: the first `n` bytes of the unfilled part were written by recv.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    // Less than there was room for: the socket is empty, and the next read
                    // waits for the next edge instead of trying (tokio's streams do the same).
                    if n > 0 && n < room {
                        ready.clear_ready();
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Would block: readiness cleared, wait for the next edge.
                Err(_) => continue,
            }
        }
    }
}

impl AsyncWrite for UnixStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let Some(waiting) = &this.waiting_write else {
                match crate::h1::send(this.socket.get_ref(), data) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let dup = this.socket.get_ref().as_fd().try_clone_to_owned()?;
                        this.waiting_write = Some(register(dup, Interest::WRITABLE)?);
                        continue;
                    }
                    done => return Poll::Ready(done),
                }
            };
            let sent = ready!(waiting.poll_write_ready(cx))?
                .try_io(|_| crate::h1::send(this.socket.get_ref(), data));
            if let Ok(done) = sent {
                this.waiting_write = None;
                return Poll::Ready(done);
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The events each epoll instance of this process watches `fd` for (from
    /// /proc/self/fdinfo: `tfd: FD events: MASK ...`).
    fn watched(fd: i32) -> Vec<u32> {
        use std::os::unix::fs::MetadataExt;
        // Registrations of this socket only (another test's epoll instance may watch a
        // descriptor that had this number before), each once: mio holds its epoll instance
        // under two descriptors, which list the same lines.
        let inode = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        let inode = format!("ino:{inode:x}");
        let mut lines = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let target = std::fs::read_link(entry.path()).unwrap_or_default();
            if target.to_string_lossy() != "anon_inode:[eventpoll]" {
                continue;
            }
            let info =
                std::fs::read_to_string(Path::new("/proc/self/fdinfo").join(entry.file_name()))
                    .unwrap_or_default();
            lines.extend(info.lines().map(str::to_string));
        }
        let mut masks = Vec::new();
        for line in &lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["tfd:", tfd, "events:", mask, ..] = words[..] {
                if tfd.parse() == Ok(fd) && words.contains(&inode.as_str()) {
                    masks.push(u32::from_str_radix(mask, 16).unwrap());
                }
            }
        }
        masks
    }

    /// Whether two descriptors are the same socket (same inode).
    fn same_socket(a: i32, b: i32) -> bool {
        let link = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok();
        link(a).is_some() && link(a) == link(b)
    }

    #[tokio::test]
    async fn the_socket_is_watched_for_writes_only_while_a_write_waits() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("engine.sock")).unwrap();
        let mut stream = UnixStream::connect(&dir.path().join("engine.sock"))
            .await
            .unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let fd = stream.socket.as_raw_fd();
        let out = libc::EPOLLOUT as u32;
        let masks = watched(fd);
        assert_eq!(masks.len(), 1, "{masks:x?}");
        assert!(
            masks[0] & libc::EPOLLIN as u32 != 0 && masks[0] & out == 0,
            "{masks:x?}"
        );

        // A write larger than the socket's buffer waits on a second registration...
        let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        let mut write = Box::pin(stream.write_all(&big));
        let waited = std::future::poll_fn(|cx| {
            Poll::Ready(std::future::Future::poll(write.as_mut(), cx).is_pending())
        });
        assert!(waited.await, "8 MiB did not fill the socket");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            peer.read_to_end(&mut got)?;
            std::io::Write::write_all(&mut peer, b"answer").map(|_| got)
        });
        // (`write` borrows the stream: its second descriptor is looked up through /proc.)
        let both: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|&d| d != fd && same_socket(d, fd))
            .collect();
        assert_eq!(both.len(), 1, "one duplicate while the write waits");
        assert!(watched(both[0]).iter().any(|m| m & out != 0));

        // ...which is dropped once the write went through; what arrives is what was written.
        write.await.unwrap();
        assert!(stream.waiting_write.is_none());
        assert_eq!(watched(fd), masks);
        stream.shutdown().await.unwrap();
        assert!(
            reader.join().unwrap().unwrap() == big,
            "the bytes arrived as written"
        );
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer");
    }
}
