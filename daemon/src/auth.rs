//! Who may use the admin API. Each connection's peer is read from the kernel (SO_PEERCRED for
//! uid/gid/pid, SO_PEERGROUPS for its supplementary groups, both as of `connect()`), so no
//! user database is consulted on the request path. Group names are resolved to ids when the
//! configuration is loaded.

use std::io;
use std::os::fd::AsRawFd;

use crate::config::AdminConfig;

/// What a peer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    None,
    /// Read-only routes (status).
    Read,
    /// Every route.
    Admin,
}

/// The process at the other end of an admin connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub groups: Vec<u32>,
}

impl Peer {
    pub fn of(stream: &tokio::net::UnixStream) -> io::Result<Peer> {
        let cred = stream.peer_cred()?;
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
            groups: peer_groups(stream)?,
        })
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// The supplementary groups of the peer of a Unix stream socket (Linux ≥ 4.13).
fn peer_groups(stream: &impl AsRawFd) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(std::mem::size_of_val(groups.as_slice()))
            .map_err(|_| io::Error::other("too many groups"))?;
        // SAFETY: the buffer is valid for `len` bytes and getsockopt writes at most that many.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(err);
    }
}

/// The admin API's access rules, with group names resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    pub own_uid: u32,
    pub admin_group: String,
    pub admin_gid: Option<u32>,
    pub status_group: String,
    pub status_gid: Option<u32>,
}

impl AccessPolicy {
    /// Resolves the configured group names (blocking: reads the group database).
    pub fn resolve(admin: &AdminConfig) -> AccessPolicy {
        let gid_of = |name: &str| match nix::unistd::Group::from_name(name) {
            Ok(Some(group)) => Some(group.gid.as_raw()),
            Ok(None) => {
                tracing::info!(
                    group = name,
                    "group does not exist: no one is let in through it"
                );
                None
            }
            Err(e) => {
                tracing::warn!(group = name, error = %e, "looking up group failed");
                None
            }
        };
        AccessPolicy {
            own_uid: nix::unistd::geteuid().as_raw(),
            admin_gid: gid_of(&admin.admin_group),
            admin_group: admin.admin_group.clone(),
            status_gid: gid_of(&admin.status_group),
            status_group: admin.status_group.clone(),
        }
    }

    pub fn role(&self, peer: &Peer) -> Role {
        if peer.uid == 0 || peer.uid == self.own_uid {
            return Role::Admin;
        }
        if self.admin_gid.is_some_and(|g| peer.in_group(g)) {
            return Role::Admin;
        }
        if self.status_gid.is_some_and(|g| peer.in_group(g)) {
            return Role::Read;
        }
        Role::None
    }

    /// What to tell a peer that lacks `needed`.
    pub fn refusal(&self, needed: Role, peer: &Peer) -> String {
        match needed {
            Role::Admin => format!(
                "permission denied: uid {} may not change vllamad; run it as root (sudo) or join group `{}`",
                peer.uid, self.admin_group
            ),
            _ => format!(
                "permission denied: uid {} may not read vllamad's status; join group `{}` (read-only) or `{}`, or use sudo",
                peer.uid, self.status_group, self.admin_group
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AccessPolicy {
        AccessPolicy {
            own_uid: 990,
            admin_group: "vllama-admin".into(),
            admin_gid: Some(991),
            status_group: "vllama".into(),
            status_gid: Some(990),
        }
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: Some(1234),
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn roles() {
        let p = policy();
        assert_eq!(p.role(&peer(0, 0, &[])), Role::Admin);
        assert_eq!(
            p.role(&peer(990, 990, &[])),
            Role::Admin,
            "the daemon's own uid"
        );
        assert_eq!(p.role(&peer(1000, 1000, &[991])), Role::Admin);
        assert_eq!(
            p.role(&peer(1000, 991, &[])),
            Role::Admin,
            "primary group counts"
        );
        assert_eq!(p.role(&peer(1000, 1000, &[27, 990])), Role::Read);
        assert_eq!(p.role(&peer(1000, 1000, &[27])), Role::None);
        let none = AccessPolicy {
            admin_gid: None,
            status_gid: None,
            ..policy()
        };
        assert_eq!(none.role(&peer(1000, 1000, &[990, 991])), Role::None);
    }

    #[test]
    fn refusal_names_the_group() {
        let p = policy();
        let who = peer(65534, 65534, &[]);
        assert!(p.refusal(Role::Read, &who).contains("join group `vllama`"));
        assert!(p.refusal(Role::Admin, &who).contains("`vllama-admin`"));
    }

    #[tokio::test]
    async fn peer_credentials_of_a_real_socket() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let peer = Peer::of(&a).unwrap();
        assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(peer.pid, Some(std::process::id() as i32));
        let mut mine: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        let mut seen = peer.groups.clone();
        mine.sort_unstable();
        seen.sort_unstable();
        assert_eq!(seen, mine);
    }
}
