//! Connected UDP sockets, found and destroyed through sock_diag
//! (`NETLINK_SOCK_DIAG`, inet_diag): the user-space form of the
//! `bpf_sock_destroy` kfunc, which aya 0.14 cannot call.
//!
//! Why: the socket load balancer translates a cluster IP at `connect()`, so
//! a connected UDP socket keeps one backend for its whole life. When that
//! backend leaves the Service the agent destroys such sockets
//! (`SOCK_DESTROY`): the kernel aborts each (`udp_abort`: pending error
//! `ECONNABORTED`, socket disconnected), the application sees the error and
//! connects again, and that `connect()` picks a live backend. kube-proxy
//! does the same for UDP by deleting the conntrack entries of removed
//! endpoints.
//!
//! Both families: an IPv4 backend's sockets are `AF_INET` ones and
//! `AF_INET6` ones connected to a v4-mapped cluster IP (`sock_connect6`:
//! connected to `::ffff:<backend>`, which only an `AF_INET6` dump lists); an
//! IPv6 backend's are native `AF_INET6` ones.
//!
//! sock_diag answers only for the namespace its netlink socket was created
//! in: `destroy_udp_to` works in the calling thread's namespace,
//! `destroy_udp_in_cgroup` enters, on a thread each, the namespaces of a
//! cgroup's processes. Needs CAP_NET_ADMIN and a kernel with
//! `CONFIG_INET_UDP_DIAG` and `CONFIG_INET_DIAG_DESTROY`.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::{IpAddr, SocketAddr},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{anyhow, bail, Context, Result};
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagDestroy, SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NetlinkAddr};

use super::netns;

/// Which kind of socket: the family sock_diag is asked with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `AF_INET`.
    Inet,
    /// `AF_INET6`, connected to a v4-mapped address (`::ffff:a.b.c.d`):
    /// its addresses are shown here as the IPv4 addresses inside.
    Inet6Mapped,
    /// `AF_INET6`, connected to an IPv6 address.
    Inet6,
}

impl Family {
    fn code(self) -> u8 {
        match self {
            Family::Inet => AF_INET,
            Family::Inet6Mapped | Family::Inet6 => AF_INET6,
        }
    }
}

/// A connected UDP socket as sock_diag reports it; one connected
/// v4-mapped shows the IPv4 addresses inside (`Family::Inet6Mapped`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpSocket {
    pub family: Family,
    pub local: SocketAddr,
    /// Where it is connected: after the socket load balancer, a backend.
    pub peer: SocketAddr,
    /// `SO_BINDTODEVICE` interface (0: none); part of the kernel's lookup.
    pub bound_ifindex: u32,
    /// The socket's cookie, the same `bpf_get_socket_cookie` gives.
    pub cookie: u64,
}

impl UdpSocket {
    /// `None` for a socket whose two addresses are of different kinds (an
    /// `AF_INET6` socket bound to a v4-mapped address, connected to a
    /// native one): no backend of either family is its peer.
    fn from_id(id: &SocketId) -> Option<Self> {
        let (family, local, peer): (_, IpAddr, IpAddr) = match (id.source_address, id.destination_address) {
            (IpAddr::V4(local), IpAddr::V4(peer)) => (Family::Inet, local.into(), peer.into()),
            (IpAddr::V6(local), IpAddr::V6(peer)) => match peer.to_ipv4_mapped() {
                Some(peer4) => (Family::Inet6Mapped, local.to_ipv4_mapped()?.into(), peer4.into()),
                None if local.to_ipv4_mapped().is_none() => (Family::Inet6, local.into(), peer.into()),
                None => return None,
            },
            _ => return None,
        };
        Some(Self {
            family,
            local: SocketAddr::new(local, id.source_port),
            peer: SocketAddr::new(peer, id.destination_port),
            bound_ifindex: id.interface_id,
            cookie: cookie_from_diag(id.cookie),
        })
    }

    fn id(&self) -> SocketId {
        let address = |ip: IpAddr| match (self.family, ip) {
            (Family::Inet6Mapped, IpAddr::V4(ip)) => IpAddr::V6(ip.to_ipv6_mapped()),
            _ => ip,
        };
        SocketId {
            source_port: self.local.port(),
            destination_port: self.peer.port(),
            source_address: address(self.local.ip()),
            destination_address: address(self.peer.ip()),
            interface_id: self.bound_ifindex,
            cookie: cookie_to_diag(self.cookie),
        }
    }
}

/// inet_diag carries the cookie as two host-order u32s, low half first
/// (`sock_diag_save_cookie`).
fn cookie_from_diag(raw: [u8; 8]) -> u64 {
    let lo = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let hi = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    (u64::from(hi) << 32) | u64::from(lo)
}

fn cookie_to_diag(cookie: u64) -> [u8; 8] {
    let mut raw = [0; 8];
    raw[..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
    raw[4..].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    raw
}

/// Which of `sockets` to destroy: those connected to one of `peers`,
/// unless `keep` says otherwise.
pub fn doomed<'a>(
    sockets: &'a [UdpSocket],
    peers: &BTreeSet<SocketAddr>,
    keep: impl Fn(&UdpSocket) -> bool,
) -> Vec<&'a UdpSocket> {
    sockets.iter().filter(|s| peers.contains(&s.peer) && !keep(s)).collect()
}

/// What one namespace's pass found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Destroyed {
    /// Connected UDP sockets listed.
    pub connected: usize,
    /// Destroyed (a socket closed meanwhile is not counted).
    pub destroyed: usize,
}

/// A sock_diag netlink socket in the calling thread's namespace.
struct SockDiag {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// Larger than any datagram the kernel sends: a dump's skb is at most 32 KiB
/// (`netlink_recvmsg` caps `max_recvmsg_len`), so nothing is truncated.
const RECV_BUF: usize = 64 * 1024;

impl SockDiag {
    fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("open sock_diag netlink socket")?;
        socket.bind_auto().context("bind sock_diag socket")?;
        socket.connect(&NetlinkAddr::new(0, 0)).context("connect sock_diag socket")?;
        Ok(Self { socket, seq: 0, buf: Vec::with_capacity(RECV_BUF) })
    }

    fn send<T>(&mut self, flags: u16, payload: T) -> Result<u32>
    where
        T: netlink_packet_core::NetlinkSerializable + Into<NetlinkPayload<T>>,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, payload.into());
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        self.socket.send(&bytes, 0).context("send to sock_diag")?;
        Ok(self.seq)
    }

    fn recv(&mut self) -> Result<&[u8]> {
        self.buf.clear();
        let n = self.socket.recv(&mut self.buf, 0).context("receive from sock_diag")?;
        Ok(&self.buf[..n.min(self.buf.len())])
    }

    /// Connected (`TCP_ESTABLISHED`: what `connect()` leaves a UDP socket
    /// in) UDP sockets of `family` (`Family::Inet6` lists the v4-mapped
    /// ones too). With one port in `port_hint` the kernel skips sockets
    /// connected to other ports.
    fn connected_udp(&mut self, family: Family, port_hint: Option<u16>) -> Result<Vec<UdpSocket>> {
        let mut socket_id = match family {
            Family::Inet => SocketId::new_v4(),
            Family::Inet6Mapped | Family::Inet6 => SocketId::new_v6(),
        };
        socket_id.destination_port = port_hint.unwrap_or(0);
        let request = SockDiagMessage::InetRequest(InetRequest {
            family: family.code(),
            protocol: IPPROTO_UDP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::ESTABLISHED,
            socket_id,
        });
        let seq = self.send(NLM_F_REQUEST | NLM_F_DUMP, request)?;
        let mut out = Vec::new();
        loop {
            let chunk = self.recv()?;
            if parse_dump(chunk, seq, &mut out)? {
                return Ok(out);
            }
        }
    }

    /// Destroy one socket. `false`: it was gone already (closed meanwhile).
    fn destroy(&mut self, s: &UdpSocket) -> Result<bool> {
        let request = SockDiagDestroy::new(SockDiagMessage::InetRequest(InetRequest {
            family: s.family.code(),
            protocol: IPPROTO_UDP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: s.id(),
        }));
        let seq = self.send(NLM_F_REQUEST | NLM_F_ACK, request)?;
        loop {
            let chunk = self.recv()?;
            match parse_ack(chunk, seq)? {
                Some(0) => return Ok(true),
                Some(libc::ENOENT) => return Ok(false),
                Some(errno) => {
                    let e = std::io::Error::from_raw_os_error(errno);
                    bail!("SOCK_DESTROY {} → {}: {e}", s.local, s.peer)
                }
                None => continue,
            }
        }
    }
}

/// Netlink messages are padded to 4 bytes.
fn aligned(len: usize) -> usize {
    (len + 3) & !3
}

/// Walk the messages of one datagram that answer request `seq`, until
/// `each` returns a result.
fn answers<R>(
    mut buf: &[u8],
    seq: u32,
    mut each: impl FnMut(NetlinkPayload<SockDiagMessage>) -> Option<Result<R>>,
) -> Result<Option<R>> {
    while !buf.is_empty() {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(buf).context("parse sock_diag answer")?;
        let len = msg.header.length as usize;
        if len == 0 {
            bail!("sock_diag answer with a zero length message");
        }
        if msg.header.sequence_number == seq {
            if let Some(r) = each(msg.payload) {
                return r.map(Some);
            }
        }
        buf = buf.get(aligned(len)..).unwrap_or_default();
    }
    Ok(None)
}

/// One datagram of a dump answering request `seq`: its sockets are added
/// to `out`. `true` once the dump is done.
fn parse_dump(buf: &[u8], seq: u32, out: &mut Vec<UdpSocket>) -> Result<bool> {
    let done = answers(buf, seq, |payload| match payload {
        NetlinkPayload::Done(_) => Some(Ok(())),
        NetlinkPayload::Error(e) => e
            .code
            .map(|code| Err(std::io::Error::from_raw_os_error(-code.get())).context("sock_diag dump of UDP sockets")),
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
            out.extend(UdpSocket::from_id(&r.header.socket_id));
            None
        }
        _ => None,
    })?;
    Ok(done.is_some())
}

/// The errno (0: success) of the acknowledgement of request `seq`, if this
/// datagram holds it.
fn parse_ack(buf: &[u8], seq: u32) -> Result<Option<i32>> {
    answers(buf, seq, |payload| match payload {
        NetlinkPayload::Error(e) => Some(Ok(e.code.map_or(0, |c| -c.get()))),
        _ => None,
    })
}

/// In the calling thread's network namespace: destroy the connected UDP
/// sockets whose peer is one of `peers`, unless `keep` says otherwise. An
/// IPv4 peer's are `AF_INET` sockets and `AF_INET6` ones connected
/// v4-mapped; an IPv6 peer's are `AF_INET6` ones (the `AF_INET` dump is
/// skipped when every peer is IPv6).
pub fn destroy_udp_to(peers: &BTreeSet<SocketAddr>, keep: impl Fn(&UdpSocket) -> bool) -> Result<Destroyed> {
    if peers.is_empty() {
        return Ok(Destroyed::default());
    }
    let ports: BTreeSet<u16> = peers.iter().map(|p| p.port()).collect();
    let port_hint = (ports.len() == 1).then(|| *ports.first().expect("one port"));
    let mut diag = SockDiag::open()?;
    let mut sockets = Vec::new();
    if peers.iter().any(SocketAddr::is_ipv4) {
        sockets.extend(diag.connected_udp(Family::Inet, port_hint)?);
    }
    sockets.extend(diag.connected_udp(Family::Inet6, port_hint)?);
    let mut done = Destroyed { connected: sockets.len(), destroyed: 0 };
    for s in doomed(&sockets, peers, keep) {
        if diag.destroy(s)? {
            done.destroyed += 1;
        }
    }
    Ok(done)
}

/// A network namespace, held open (so it cannot go away or be confused
/// with a new one while we work), and one process in it.
#[derive(Debug)]
pub struct Netns {
    file: File,
    pub inode: u64,
    pub pid: u32,
}

impl Netns {
    /// A path that opens this namespace from any thread of this process.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// The processes of a cgroup tree, as this process can see them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupProcs {
    pub pids: Vec<u32>,
    /// Listed as 0: in a pid namespace this process cannot see (an agent
    /// container without `hostPID`); their sockets cannot be reached.
    pub hidden: usize,
}

/// Pids listed in `cgroup.procs` text.
fn parse_procs(text: &str, out: &mut CgroupProcs) {
    for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        match pid {
            0 => out.hidden += 1,
            pid => out.pids.push(pid),
        }
    }
}

/// Pids listed in `cgroup.procs` of `dir` and every cgroup below it.
pub fn cgroup_pids(dir: &Path) -> Result<CgroupProcs> {
    let mut procs_seen = CgroupProcs::default();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let procs = d.join("cgroup.procs");
        match std::fs::read_to_string(&procs) {
            Ok(text) => parse_procs(&text, &mut procs_seen),
            // A child cgroup removed while we walk.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d != dir => continue,
            Err(e) => return Err(e).with_context(|| format!("read {}", procs.display())),
        }
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d != dir => continue,
            Err(e) => return Err(e).with_context(|| format!("list cgroup {}", d.display())),
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
    }
    Ok(procs_seen)
}

/// The first of each inode, in order: `(inode, item)` pairs to one item
/// per inode.
pub fn unique_by_inode<T>(items: impl IntoIterator<Item = (u64, T)>) -> BTreeMap<u64, T> {
    let mut out = BTreeMap::new();
    for (inode, item) in items {
        out.entry(inode).or_insert(item);
    }
    out
}

/// The network namespaces of the processes in cgroup `dir` and below, each
/// once, and how many processes were hidden (see `CgroupProcs`). A process
/// that exits while we look is skipped.
pub fn netns_of_cgroup(dir: &Path) -> Result<(Vec<Netns>, usize)> {
    let procs = cgroup_pids(dir)?;
    // `stat` first (one syscall per process, most share a namespace), open
    // only one process per new namespace.
    let seen = unique_by_inode(procs.pids.into_iter().filter_map(|pid| {
        let meta = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
        Some((meta.ino(), pid))
    }));
    let mut out = Vec::with_capacity(seen.len());
    for (inode, pid) in seen {
        let Ok(file) = File::open(format!("/proc/{pid}/ns/net")) else { continue };
        // The pid may have been reused between stat and open: trust the
        // open file.
        let inode = file.metadata().map(|m| m.ino()).unwrap_or(inode);
        if out.iter().any(|n: &Netns| n.inode == inode) {
            continue;
        }
        out.push(Netns { file, inode, pid });
    }
    Ok((out, procs.hidden))
}

/// The network namespaces pinned as files in `dir` (a runtime's, e.g.
/// `/run/netns`, where containerd and CRI-O keep pods' namespaces), each
/// held open. Entries that are not namespaces are skipped.
pub fn netns_in_dir(dir: &Path) -> Vec<Netns> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(file) = File::open(entry.path()) else { continue };
        // Only nsfs inodes are namespaces (a placeholder whose mount is
        // gone is a plain empty file).
        let is_nsfs = nix::sys::statfs::fstatfs(&file)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::FsType(libc::NSFS_MAGIC as _));
        if !is_nsfs {
            continue;
        }
        let inode = file.metadata().map(|m| m.ino()).unwrap_or(0);
        out.push(Netns { file, inode, pid: 0 });
    }
    out
}

/// What a pass over a cgroup's namespaces found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupSweep {
    pub namespaces: usize,
    pub connected: usize,
    pub destroyed: usize,
    /// Processes of the cgroup this process cannot see (see `CgroupProcs`).
    pub hidden_pids: usize,
    /// Namespaces that could not be swept, by a pid in each, with why (the
    /// others still are).
    pub failed: Vec<(u32, String)>,
}

/// Predicate shared by the threads of one sweep.
pub type Keep = Arc<dyn Fn(&UdpSocket) -> bool + Send + Sync>;

/// `destroy_udp_to` in every network namespace of cgroup `dir`'s
/// processes (pods' and the host's), one thread each, one after another.
/// With `netns_dir`, the namespaces pinned there too (an agent container
/// without `hostPID` sees no other container's processes, but the runtime
/// pins every pod's namespace there).
pub fn destroy_udp_in_cgroup(
    dir: &Path,
    netns_dir: Option<&Path>,
    peers: &BTreeSet<SocketAddr>,
    keep: Keep,
) -> Result<CgroupSweep> {
    let (mut namespaces, hidden_pids) = netns_of_cgroup(dir)?;
    for ns in netns_dir.map(netns_in_dir).unwrap_or_default() {
        if !namespaces.iter().any(|n| n.inode == ns.inode) {
            namespaces.push(ns);
        }
    }
    let peers = Arc::new(peers.clone());
    let mut sweep = CgroupSweep { namespaces: namespaces.len(), hidden_pids, ..Default::default() };
    for ns in &namespaces {
        let (peers, keep) = (peers.clone(), keep.clone());
        match netns::run_in(&ns.path(), move || destroy_udp_to(&peers, |s| keep(s))) {
            Ok(d) => {
                sweep.connected += d.connected;
                sweep.destroyed += d.destroyed;
            }
            Err(e) => sweep.failed.push((ns.pid, format!("{e:#}"))),
        }
    }
    if !sweep.failed.is_empty() && sweep.failed.len() == sweep.namespaces {
        return Err(anyhow!("no namespace of cgroup {} could be swept: {}", dir.display(), sweep.failed[0].1));
    }
    Ok(sweep)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4, SocketAddrV6};

    use netlink_packet_core::NLMSG_DONE;

    use super::*;

    fn sock(peer: &str, cookie: u64) -> UdpSocket {
        UdpSocket {
            family: Family::Inet,
            local: "10.244.1.5:40000".parse().unwrap(),
            peer: peer.parse().unwrap(),
            bound_ifindex: 0,
            cookie,
        }
    }

    #[test]
    fn a_netns_dir_yields_namespaces_and_skips_plain_files() {
        let dir = std::env::temp_dir().join(format!("sluice-netns-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stale-placeholder"), b"").unwrap();
        std::fs::write(dir.join("notes"), b"not a namespace").unwrap();
        // Opening this link opens our own namespace's nsfs inode, as a
        // runtime's bind mount under /run/netns does.
        let _ = std::fs::remove_file(dir.join("ours"));
        std::os::unix::fs::symlink("/proc/self/ns/net", dir.join("ours")).unwrap();
        let found = netns_in_dir(&dir);
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.iter().map(|n| n.inode).collect::<Vec<_>>(), vec![ours]);
        assert!(netns_in_dir(Path::new("/nonexistent-sluice")).is_empty());
    }

    #[test]
    fn doomed_are_the_sockets_to_removed_peers_that_keep_does_not_spare() {
        let sockets = [
            sock("10.244.1.7:5300", 1),
            sock("10.244.1.8:5300", 2),
            sock("10.244.1.7:53", 3),
            sock("10.244.1.7:5300", 4),
        ];
        let peers = BTreeSet::from(["10.244.1.7:5300".parse().unwrap()]);
        let cookies = |v: Vec<&UdpSocket>| v.iter().map(|s| s.cookie).collect::<Vec<_>>();
        assert_eq!(cookies(doomed(&sockets, &peers, |_| false)), [1, 4], "same IP, other port: not a match");
        assert_eq!(cookies(doomed(&sockets, &peers, |s| s.cookie == 4)), [1]);
        assert!(doomed(&sockets, &BTreeSet::new(), |_| false).is_empty());
    }

    #[test]
    fn cookies_round_trip_as_two_host_order_halves() {
        let c = 0x0000_1234_8000_0001u64;
        let raw = cookie_to_diag(c);
        assert_eq!(u32::from_ne_bytes(raw[..4].try_into().unwrap()), 0x8000_0001, "low half first");
        assert_eq!(cookie_from_diag(raw), c);
    }

    /// A netlink message as the kernel lays it out (`struct nlmsghdr`).
    fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut m = Vec::new();
        m.extend((len as u32).to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend(2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend(seq.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(payload);
        m.resize(aligned(m.len()), 0);
        m
    }

    /// `struct inet_diag_msg` for an IPv4 socket, written by hand from
    /// include/uapi/linux/inet_diag.h (not with the crate under test), and
    /// one attribute after it as the kernel adds (INET_DIAG_CGROUP_ID).
    fn inet_diag_msg(local: SocketAddrV4, peer: SocketAddrV4, cookie: [u32; 2]) -> Vec<u8> {
        let addr = |ip: &Ipv4Addr| {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&ip.octets());
            a
        };
        diag_msg(libc::AF_INET as u8, (addr(local.ip()), local.port()), (addr(peer.ip()), peer.port()), cookie)
    }

    /// The same for an IPv6 socket.
    fn inet6_diag_msg(local: SocketAddrV6, peer: SocketAddrV6, cookie: [u32; 2]) -> Vec<u8> {
        diag_msg(libc::AF_INET6 as u8, (local.ip().octets(), local.port()), (peer.ip().octets(), peer.port()), cookie)
    }

    fn diag_msg(family: u8, local: ([u8; 16], u16), peer: ([u8; 16], u16), cookie: [u32; 2]) -> Vec<u8> {
        let mut m = vec![family, 1 /* TCP_ESTABLISHED */, 0, 0];
        m.extend(local.1.to_be_bytes());
        m.extend(peer.1.to_be_bytes());
        m.extend(local.0);
        m.extend(peer.0);
        m.extend(0u32.to_ne_bytes()); // idiag_if
        m.extend(cookie[0].to_ne_bytes());
        m.extend(cookie[1].to_ne_bytes());
        for field in [0u32, 0, 212_992, 0, 4242] {
            // expires, rqueue, wqueue, uid, inode
            m.extend(field.to_ne_bytes());
        }
        m.extend(12u16.to_ne_bytes()); // nla_len
        m.extend(21u16.to_ne_bytes()); // INET_DIAG_CGROUP_ID
        m.extend(77u64.to_ne_bytes());
        m
    }

    #[test]
    fn a_dump_datagram_yields_its_sockets_and_ends_at_done() {
        let a: SocketAddrV4 = "10.244.1.5:40000".parse().unwrap();
        let b: SocketAddrV4 = "10.244.2.9:5300".parse().unwrap();
        let mut buf = nlmsg(20, 7, &inet_diag_msg(a, b, [5, 1]));
        buf.extend(nlmsg(20, 7, &inet_diag_msg(b, a, [6, 0])));
        let mut out = Vec::new();
        assert!(!parse_dump(&buf, 7, &mut out).unwrap(), "no NLMSG_DONE yet");
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0],
            UdpSocket {
                family: Family::Inet,
                local: a.into(),
                peer: b.into(),
                bound_ifindex: 0,
                cookie: (1 << 32) | 5
            }
        );
        assert_eq!(out[1].peer, a.into());
        // Another request's messages are ignored; DONE ends the dump.
        let mut buf = nlmsg(20, 6, &inet_diag_msg(a, b, [9, 0]));
        buf.extend(nlmsg(NLMSG_DONE, 7, &0i32.to_ne_bytes()));
        assert!(parse_dump(&buf, 7, &mut out).unwrap());
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn ipv6_sockets_connected_v4_mapped_are_listed_by_their_ipv4_addresses_and_native_ones_as_they_are() {
        let a: SocketAddrV6 = "[::ffff:10.244.1.5]:40000".parse().unwrap();
        let b: SocketAddrV6 = "[::ffff:10.244.2.9]:5300".parse().unwrap();
        let native: SocketAddrV6 = "[fd00::9]:5300".parse().unwrap();
        let native_local: SocketAddrV6 = "[fd00::5]:40000".parse().unwrap();
        let mut buf = nlmsg(20, 7, &inet6_diag_msg(a, b, [5, 0]));
        buf.extend(nlmsg(20, 7, &inet6_diag_msg(native_local, native, [6, 0])));
        // Bound v4-mapped, connected to a native address: no backend's.
        buf.extend(nlmsg(20, 7, &inet6_diag_msg(a, native, [7, 0])));
        let mut out = Vec::new();
        parse_dump(&buf, 7, &mut out).unwrap();
        let native_socket = UdpSocket {
            family: Family::Inet6,
            local: native_local.into(),
            peer: native.into(),
            bound_ifindex: 0,
            cookie: 6,
        };
        assert_eq!(out.len(), 2, "the mixed one is left out: {out:?}");
        assert_eq!(out.get(1), Some(&native_socket));
        assert_eq!(native_socket.id().destination_address, IpAddr::V6(*native.ip()));
        out.truncate(1);
        let mapped = UdpSocket {
            family: Family::Inet6Mapped,
            local: "10.244.1.5:40000".parse().unwrap(),
            peer: "10.244.2.9:5300".parse().unwrap(),
            bound_ifindex: 0,
            cookie: 5,
        };
        assert_eq!(out, vec![mapped]);
        // SOCK_DESTROY names it as the kernel knows it: v4-mapped, AF_INET6.
        let id = mapped.id();
        assert_eq!((id.source_address, id.destination_address), (IpAddr::V6(*a.ip()), IpAddr::V6(*b.ip())));
        assert_eq!((Family::Inet6Mapped.code(), Family::Inet.code()), (AF_INET6, AF_INET));
        let v4 = UdpSocket { family: Family::Inet, ..mapped }.id();
        assert_eq!(v4.destination_address, IpAddr::V4("10.244.2.9".parse().unwrap()));
    }

    #[test]
    fn acks_carry_the_errno_of_their_request() {
        // struct nlmsgerr: error, then the request's header.
        let err = |errno: i32, seq: u32| {
            let mut p = (-errno).to_ne_bytes().to_vec();
            p.extend(nlmsg(21, seq, &[])[..16].iter());
            nlmsg(2, seq, &p)
        };
        assert_eq!(parse_ack(&err(0, 3), 3).unwrap(), Some(0));
        assert_eq!(parse_ack(&err(libc::ENOENT, 3), 3).unwrap(), Some(libc::ENOENT));
        assert_eq!(parse_ack(&err(libc::EPERM, 2), 3).unwrap(), None, "another request's ack");
        let mut out = Vec::new();
        assert!(parse_dump(&err(libc::EINVAL, 4), 4, &mut out).is_err(), "a failed dump is an error");
    }

    #[test]
    fn cgroup_procs_of_an_unseen_pid_namespace_read_as_zero() {
        let mut p = CgroupProcs::default();
        parse_procs("12\n0\n345\n0\n\n", &mut p);
        assert_eq!(p, CgroupProcs { pids: vec![12, 345], hidden: 2 });
    }

    #[test]
    fn one_item_per_inode_the_first_seen() {
        let got = unique_by_inode([(9, "a"), (3, "b"), (9, "c"), (3, "d"), (5, "e")]);
        assert_eq!(got, BTreeMap::from([(3, "b"), (5, "e"), (9, "a")]));
    }
}
