//! HTTP/1.1 as vllamad speaks it: the server of its listeners ([`server`]: the public API,
//! the admin socket, the metrics listener) and the framing of message bodies ([`body`]) that
//! the server and the engine client share.
//!
//! hyper served these connections before. Its general machinery — a dispatcher between the
//! connection and the service, a request body fed through a channel, a header-read timer
//! per request — was a third of the instructions of a proxied request
//! (docs/PERFORMANCE.md). This server reads a request head with httparse (hyper's own
//! parser), hands the handler the body that has already arrived without a copy, writes the
//! answer's head and its first bytes in one system call, and keeps hyper's behaviour at the
//! edges: its limits (100 header fields, a 417 792-byte head, 65 534-byte targets), its
//! answers to broken requests (400, 413 is the handler's, 414, 431), keep-alive and
//! pipelining, `Expect: 100-continue`, a client that leaves ending its request, and the
//! header read timeout from the moment a head is awaited.

pub mod body;
pub(crate) mod head;
mod request_body;
pub mod server;
mod socket;

pub use request_body::{RequestBody, RequestBodyError};
pub use server::{serve, Activity, Options};
pub(crate) use socket::{send, ReadSize, KEPT_BUFFER};
