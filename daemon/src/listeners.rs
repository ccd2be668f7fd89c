//! The two listeners: `api` (public TCP) and `admin` (Unix socket). Under systemd they come
//! from socket activation, by name (`LISTEN_FDNAMES`); run by hand, vllamad binds them from
//! the configuration.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};
use vllama_proto::{ListenerInfo, ListenerSource};

use crate::config::Config;

pub const API: &str = "api";
pub const ADMIN: &str = "admin";
pub const METRICS: &str = "metrics";

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("reading the socket-activation environment (LISTEN_FDS): {0}")]
    Activation(#[source] io::Error),
    #[error("the socket passed as `{name}` (fd {fd}) is not a {expected} socket: {source}")]
    WrongKind {
        name: String,
        fd: RawFd,
        expected: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {address}: {source} ({key}; is another server, e.g. ollama, using the port?)")]
    BindTcp {
        key: &'static str,
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the admin socket {path}: {source} (admin.socket)")]
    BindUnix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another process is already serving the admin socket {0}: is vllamad already running?"
    )]
    AdminInUse(PathBuf),
    #[error("{0} exists and is not a socket: refusing to replace it (admin.socket)")]
    NotASocket(PathBuf),
    #[error("cannot register the listener with the runtime: {0}")]
    Runtime(#[source] io::Error),
}

/// File descriptors systemd passed in, taken from the environment once, before any thread
/// starts (reading them unsets `LISTEN_*` so engine processes never inherit them).
#[derive(Debug, Default)]
pub struct ActivatedFds {
    fds: Vec<(OwnedFd, String)>,
}

impl ActivatedFds {
    /// # Safety
    /// Must be called before any other thread exists: it removes environment variables.
    pub unsafe fn take_from_env() -> Result<Self, ListenerError> {
        // SAFETY: the caller guarantees that the process is still single-threaded.
        let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
            .map_err(ListenerError::Activation)?;
        let fds = fds
            // SAFETY: systemd passed these fds to this process; nothing else owns them.
            .map(|(fd, name)| (unsafe { OwnedFd::from_raw_fd(fd) }, name))
            .collect();
        Ok(ActivatedFds { fds })
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    fn take(&mut self, name: &str) -> Option<OwnedFd> {
        let at = self.fds.iter().position(|(_, n)| n == name)?;
        Some(self.fds.remove(at).0)
    }
}

/// The daemon's listeners, and how each was obtained.
#[derive(Debug)]
pub struct Listeners {
    pub api: TcpListener,
    pub admin: UnixListener,
    /// `/metrics` on its own listener (`metrics.listen`, or an activated `metrics` socket).
    pub metrics: Option<TcpListener>,
    pub info: Vec<ListenerInfo>,
    /// The admin socket file vllamad created itself, removed again at exit.
    pub admin_bound_path: Option<PathBuf>,
}

/// A TCP listener: the activated one, else bound at `address` (if any).
fn tcp(
    name: &str,
    fd: Option<OwnedFd>,
    address: Option<std::net::SocketAddr>,
    key: &'static str,
    info: &mut Vec<ListenerInfo>,
) -> Result<Option<TcpListener>, ListenerError> {
    let (listener, source) = match (fd, address) {
        (Some(fd), _) => (
            std::net::TcpListener::from(fd),
            ListenerSource::SocketActivation,
        ),
        (None, Some(address)) => {
            let listener =
                std::net::TcpListener::bind(address).map_err(|source| ListenerError::BindTcp {
                    key,
                    address: address.to_string(),
                    source,
                })?;
            (listener, ListenerSource::Bound)
        }
        (None, None) => return Ok(None),
    };
    let address = listener
        .local_addr()
        .map_err(|source| wrong_kind(name, &listener, "TCP", source))?;
    info.push(listener_info(name, address.to_string(), source));
    listener
        .set_nonblocking(true)
        .map_err(ListenerError::Runtime)?;
    Ok(Some(
        TcpListener::from_std(listener).map_err(ListenerError::Runtime)?,
    ))
}

/// Takes the activated listeners by name and binds the missing ones from the configuration.
/// Must run inside the tokio runtime.
pub fn obtain(mut activated: ActivatedFds, config: &Config) -> Result<Listeners, ListenerError> {
    let mut info = Vec::new();
    let api_fd = activated.take(API);
    let admin_fd = activated.take(ADMIN);
    let metrics_fd = activated.take(METRICS);
    for (fd, name) in activated.fds.drain(..) {
        tracing::warn!(
            fd = ?fd,
            name,
            "ignoring a socket-activated fd with an unknown name: name the sockets `api`, `admin` (and `metrics`) with FileDescriptorName="
        );
    }

    let api = tcp(
        API,
        api_fd,
        Some(config.api.listen),
        "api.listen",
        &mut info,
    )?
    .ok_or(ListenerError::Runtime(io::Error::other("no api listener")))?;
    let metrics = match config.metrics.enabled {
        true => tcp(
            METRICS,
            metrics_fd,
            config.metrics.listen,
            "metrics.listen",
            &mut info,
        )?,
        false => None,
    };

    let mut admin_bound_path = None;
    let admin = match admin_fd {
        Some(fd) => {
            let listener = StdUnixListener::from(fd);
            let address = listener
                .local_addr()
                .map_err(|source| wrong_kind(ADMIN, &listener, "Unix", source))?;
            let shown = address
                .as_pathname()
                .map_or_else(|| "(unnamed)".to_string(), |p| p.display().to_string());
            info.push(listener_info(
                ADMIN,
                shown,
                ListenerSource::SocketActivation,
            ));
            listener
                .set_nonblocking(true)
                .map_err(ListenerError::Runtime)?;
            UnixListener::from_std(listener).map_err(ListenerError::Runtime)?
        }
        None => {
            let path = &config.admin.socket;
            let listener = bind_unix(path, config.admin.socket_mode.0)?;
            info.push(listener_info(
                ADMIN,
                path.display().to_string(),
                ListenerSource::Bound,
            ));
            admin_bound_path = Some(path.clone());
            listener
                .set_nonblocking(true)
                .map_err(ListenerError::Runtime)?;
            UnixListener::from_std(listener).map_err(ListenerError::Runtime)?
        }
    };

    for l in &info {
        tracing::info!(listener = %l.name, address = %l.address, source = %l.source, "listening");
    }
    Ok(Listeners {
        api,
        admin,
        metrics,
        info,
        admin_bound_path,
    })
}

fn listener_info(name: &str, address: String, source: ListenerSource) -> ListenerInfo {
    ListenerInfo {
        name: name.to_string(),
        address,
        source,
    }
}

fn wrong_kind(
    name: &str,
    fd: &impl std::os::fd::AsRawFd,
    expected: &'static str,
    source: io::Error,
) -> ListenerError {
    ListenerError::WrongKind {
        name: name.to_string(),
        fd: fd.as_raw_fd(),
        expected,
        source,
    }
}

/// Binds a Unix socket at `path` with `mode`. A socket file left by a dead daemon is
/// replaced; a live one, or a file that is not a socket, is an error.
fn bind_unix(path: &Path, mode: u32) -> Result<StdUnixListener, ListenerError> {
    let bind_err = |source| ListenerError::BindUnix {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(bind_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match StdUnixStream::connect(path) {
            Ok(_) => return Err(ListenerError::AdminInUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "replacing a stale admin socket");
                std::fs::remove_file(path).map_err(bind_err)?;
            }
            Err(e) => return Err(bind_err(e)),
        },
        Ok(_) => return Err(ListenerError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = StdUnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    Ok(listener)
}

/// Removes the admin socket file vllamad bound, if it is still the one it bound.
pub fn remove_bound_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove the admin socket");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_socket_is_replaced_live_one_refused_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");

        let first = bind_unix(&path, 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            bind_unix(&path, 0o600),
            Err(ListenerError::AdminInUse(_))
        ));
        drop(first); // the file stays: now it is stale
        assert!(path.exists());
        let _second = bind_unix(&path, 0o660).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);

        let file = dir.path().join("plain");
        std::fs::write(&file, "keep me").unwrap();
        assert!(matches!(
            bind_unix(&file, 0o600),
            Err(ListenerError::NotASocket(_))
        ));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
