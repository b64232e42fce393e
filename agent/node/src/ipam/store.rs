//! Leases on disk: `<dataDir>/ipam/<cidr>/<ip>` holds "<container id>\n<ifname>\n",
//! and a third line "<namespace>/<name>" when the runtime named the pod
//! (`CNI_ARGS`); readers that know only two lines ignore it.
//!
//! One store per pod CIDR, so per family: a dual-stack node has an IPv4
//! store (`ipam/10.244.1.0_24/`) and an IPv6 one beside it
//! (`ipam/fd00:244:1::_64/`), each with its own lock and its own
//! `last_reserved_ip`. The IPv4 store's layout is the one sluice always
//! wrote, so turning dual-stack on migrates nothing and loses no lease.
//!
//! Every operation holds an exclusive `flock` on `<dir>/lock`, so concurrent
//! plugin processes never hand out one address twice. A lease file is
//! created with `O_EXCL` and written in full before the lock is dropped; a
//! plugin killed mid-ADD leaves at worst a complete lease that DEL (by
//! container ID and ifname) or the agent's sweep releases.
use std::{
    collections::BTreeSet,
    fs::{self, File, OpenOptions},
    io::Write,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use ipnetwork::Ipv4Network;

use super::allocator::{self, PodCidr};

const LAST_RESERVED: &str = "last_reserved_ip";
const LOCK: &str = "lock";

/// The leases of one pod CIDR (`Ipv4Network`, the default, or
/// `Ipv6Network`), locked.
pub struct LeaseStore<C: PodCidr = Ipv4Network> {
    dir: PathBuf,
    cidr: C,
    _lock: File,
}

/// The IPv6 twin of `LeaseStore`.
pub type LeaseStore6 = LeaseStore<ipnetwork::Ipv6Network>;

/// One leased address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease<A = Ipv4Addr> {
    pub ip: A,
    pub container_id: String,
    pub ifname: String,
    /// How long ago the lease was written (an ADD may still be running on a
    /// very young one).
    pub age: std::time::Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Allocation<A = Ipv4Addr> {
    /// A new lease.
    New(A),
    /// This container and interface already held this address (a repeated ADD).
    Existing(A),
}

impl<A: Copy> Allocation<A> {
    pub fn ip(&self) -> A {
        match self {
            Allocation::New(ip) | Allocation::Existing(ip) => *ip,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("pod CIDR {cidr} is exhausted: {in_use} of {capacity} addresses in use")]
pub struct Exhausted {
    /// Either family's, as text.
    pub cidr: String,
    pub in_use: usize,
    pub capacity: u128,
}

impl<C: PodCidr> LeaseStore<C> {
    /// Like `lock`, but `None` at once if someone (a CNI call) holds it.
    pub fn try_lock(data_dir: &Path, cidr: C) -> Result<Option<Self>> {
        Self::open(data_dir, cidr, libc::LOCK_EX | libc::LOCK_NB)
    }

    /// Open the store for `cidr` and take its lock (blocks until free).
    pub fn lock(data_dir: &Path, cidr: C) -> Result<Self> {
        Self::open(data_dir, cidr, libc::LOCK_EX)?.context("lock IPAM store")
    }

    fn open(data_dir: &Path, cidr: C, how: libc::c_int) -> Result<Option<Self>> {
        let dir = data_dir.join("ipam").join(cidr.to_string().replace('/', "_"));
        fs::create_dir_all(&dir).with_context(|| format!("create IPAM directory {}", dir.display()))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))
            .with_context(|| format!("open IPAM lock in {}", dir.display()))?;
        // SAFETY: flock on an fd we own; released when the file closes.
        if unsafe { libc::flock(lock.as_raw_fd(), how) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            bail!("lock IPAM store {}: {e}", dir.display());
        }
        Ok(Some(Self { dir, cidr, _lock: lock }))
    }

    fn owner_line(container_id: &str, ifname: &str, pod: Option<&str>) -> String {
        match pod {
            Some(pod) => format!("{container_id}\n{ifname}\n{pod}\n"),
            None => format!("{container_id}\n{ifname}\n"),
        }
    }

    /// Every lease in the store.
    pub fn leases(&self) -> Result<Vec<Lease<C::Addr>>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).with_context(|| format!("list {}", self.dir.display()))? {
            let entry = entry?;
            let Ok(ip) = entry.file_name().to_string_lossy().parse::<C::Addr>() else {
                continue;
            };
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            let mut lines = text.lines();
            let container_id = lines.next().unwrap_or_default().to_string();
            let ifname = lines.next().unwrap_or_default().to_string();
            let age =
                entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).unwrap_or_default();
            out.push(Lease { ip, container_id, ifname, age });
        }
        Ok(out)
    }

    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<C::Addr>> {
        Ok(self.leases()?.into_iter().find(|l| l.container_id == container_id && l.ifname == ifname).map(|l| l.ip))
    }

    pub fn allocate(&self, container_id: &str, ifname: &str) -> Result<Allocation<C::Addr>> {
        self.allocate_for_pod(container_id, ifname, None)
    }

    /// `allocate`, recording the pod (`<namespace>/<name>`, one line) in the lease.
    pub fn allocate_for_pod(&self, container_id: &str, ifname: &str, pod: Option<&str>) -> Result<Allocation<C::Addr>> {
        if pod.is_some_and(|p| p.contains('\n')) {
            bail!("pod name {pod:?} has a newline");
        }
        let leases = self.leases()?;
        if let Some(l) = leases.iter().find(|l| l.container_id == container_id && l.ifname == ifname) {
            return Ok(Allocation::Existing(l.ip));
        }
        let in_use: BTreeSet<C::Addr> = leases.iter().map(|l| l.ip).collect();
        let last = fs::read_to_string(self.dir.join(LAST_RESERVED)).ok().and_then(|s| s.trim().parse().ok());
        let Some(ip) = allocator::next_free(self.cidr, &in_use, last) else {
            return Err(Exhausted {
                cidr: self.cidr.to_string(),
                in_use: in_use.len(),
                capacity: allocator::capacity(self.cidr),
            }
            .into());
        };
        let path = self.dir.join(ip.to_string());
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("create lease {}", path.display()))?;
        f.write_all(Self::owner_line(container_id, ifname, pod).as_bytes())?;
        f.sync_all()?;
        fs::write(self.dir.join(LAST_RESERVED), ip.to_string()).context("record last reserved address")?;
        Ok(Allocation::New(ip))
    }

    /// Release the lease of this container and interface; none is fine.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Option<C::Addr>> {
        let Some(ip) = self.find(container_id, ifname)? else {
            return Ok(None);
        };
        self.release_ip(ip)?;
        Ok(Some(ip))
    }

    pub fn release_ip(&self, ip: C::Addr) -> Result<()> {
        match fs::remove_file(self.dir.join(ip.to_string())) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("release {ip}")),
        }
    }
}

/// What tearing down one attachment needs of the leases (`pod::teardown`):
/// a store already locked by the caller (GC, the agent's sweep), or
/// `LockEach`. One per family: `Leases` (IPv4) and
/// `Leases<Ipv6Network>`.
pub trait Leases<C: PodCidr = Ipv4Network> {
    fn find(&self, container_id: &str, ifname: &str) -> Result<Option<C::Addr>>;
    fn release(&self, container_id: &str, ifname: &str) -> Result<Option<C::Addr>>;
}

impl<C: PodCidr> Leases<C> for LeaseStore<C> {
    fn find(&self, container_id: &str, ifname: &str) -> Result<Option<C::Addr>> {
        LeaseStore::find(self, container_id, ifname)
    }
    fn release(&self, container_id: &str, ifname: &str) -> Result<Option<C::Addr>> {
        LeaseStore::release(self, container_id, ifname)
    }
}

/// The store of `cidr` under `data_dir`, locked for each operation only:
/// for CNI DEL, whose device deletion waits on the kernel (RCU, tens of ms)
/// and must not hold every concurrent ADD's address allocation meanwhile.
pub struct LockEach<'a, C: PodCidr = Ipv4Network> {
    pub data_dir: &'a Path,
    pub cidr: C,
}

impl<C: PodCidr> Leases<C> for LockEach<'_, C> {
    fn find(&self, container_id: &str, ifname: &str) -> Result<Option<C::Addr>> {
        LeaseStore::lock(self.data_dir, self.cidr)?.find(container_id, ifname)
    }
    fn release(&self, container_id: &str, ifname: &str) -> Result<Option<C::Addr>> {
        LeaseStore::lock(self.data_dir, self.cidr)?.release(container_id, ifname)
    }
}

/// A pod's addresses, one per family it has (what `pod::teardown` finds
/// and releases).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodAddrs {
    pub ip4: Option<Ipv4Addr>,
    pub ip6: Option<std::net::Ipv6Addr>,
}

impl PodAddrs {
    pub fn all(&self) -> impl Iterator<Item = IpAddr> {
        self.ip4.map(IpAddr::V4).into_iter().chain(self.ip6.map(IpAddr::V6))
    }
}

/// A lease as `status --pods` shows it (`PodLease<Ipv6Addr>`: an IPv6
/// one, `read_pod_leases6`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLease<A = Ipv4Addr> {
    pub ip: A,
    pub container_id: String,
    pub ifname: String,
    /// `<namespace>/<name>`, when the runtime passed them.
    pub pod: Option<String>,
}

/// Every lease under `data_dir`, of every pod CIDR, read without taking the
/// lock: `status` never waits on a CNI call (a lease being written may show
/// without its owner for that moment).
pub fn read_pod_leases(data_dir: &Path) -> Result<Vec<PodLease>> {
    read_leases_of(data_dir)
}

/// The IPv6 twin of [`read_pod_leases`]: every IPv6 lease (dual-stack).
pub fn read_pod_leases6(data_dir: &Path) -> Result<Vec<PodLease<std::net::Ipv6Addr>>> {
    read_leases_of(data_dir)
}

/// The leases whose file names parse as an `A` (the other family's are
/// skipped: each store holds one family).
fn read_leases_of<A: std::str::FromStr + Ord + Copy>(data_dir: &Path) -> Result<Vec<PodLease<A>>> {
    let root = data_dir.join("ipam");
    let mut out = Vec::new();
    let cidrs = match fs::read_dir(&root) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("list {}", root.display())),
    };
    for cidr in cidrs.flatten() {
        let Ok(files) = fs::read_dir(cidr.path()) else { continue };
        for f in files.flatten() {
            let Ok(ip) = f.file_name().to_string_lossy().parse::<A>() else { continue };
            let text = fs::read_to_string(f.path()).unwrap_or_default();
            let mut lines = text.lines();
            let container_id = lines.next().unwrap_or_default().to_string();
            let ifname = lines.next().unwrap_or_default().to_string();
            let pod = lines.next().filter(|l| !l.is_empty()).map(str::to_string);
            out.push(PodLease { ip, container_id, ifname, pod });
        }
    }
    out.sort_by_key(|l| l.ip);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::env::temp_dir().join(format!("sluice-ipam-test-{}-{n}", std::process::id()))
    }

    #[test]
    fn allocate_repeat_release_exhaust() {
        let dir = tmp();
        let cidr: Ipv4Network = "10.1.0.0/29".parse().unwrap();
        let s = LeaseStore::lock(&dir, cidr).unwrap();
        let a = s.allocate("c1", "eth0").unwrap();
        assert_eq!(a, Allocation::New("10.1.0.2".parse().unwrap()));
        assert_eq!(s.allocate("c1", "eth0").unwrap(), Allocation::Existing("10.1.0.2".parse().unwrap()));
        assert_eq!(s.allocate("c1", "eth1").unwrap(), Allocation::New("10.1.0.3".parse().unwrap()));
        assert_eq!(s.release("c1", "eth0").unwrap(), Some("10.1.0.2".parse().unwrap()));
        assert_eq!(s.release("c1", "eth0").unwrap(), None);
        // Round-robin: not the just-released .2.
        assert_eq!(s.allocate("c2", "eth0").unwrap(), Allocation::New("10.1.0.4".parse().unwrap()));
        for c in ["c3", "c4", "c5"] {
            s.allocate(c, "eth0").unwrap();
        }
        let err = s.allocate("c6", "eth0").unwrap_err().to_string();
        assert!(err.contains("10.1.0.0/29") && err.contains("5 of 5"), "{err}");
        drop(s);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pod_names_are_recorded_and_read_back() {
        let dir = tmp();
        let cidr: Ipv4Network = "10.3.0.0/29".parse().unwrap();
        let s = LeaseStore::lock(&dir, cidr).unwrap();
        s.allocate_for_pod("c1", "eth0", Some("default/web-0")).unwrap();
        s.allocate("c2", "eth0").unwrap();
        assert!(s.allocate_for_pod("c3", "eth0", Some("a\nb")).is_err());
        // Two-line readers still see the owner.
        assert_eq!(s.find("c1", "eth0").unwrap(), Some("10.3.0.2".parse().unwrap()));
        drop(s);
        let all = read_pod_leases(&dir).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].pod.as_deref(), Some("default/web-0"));
        assert_eq!((all[1].container_id.as_str(), all[1].pod.as_deref()), ("c2", None));
        assert!(read_pod_leases(&dir.join("nowhere")).unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn lock_each_takes_the_lock_per_operation() {
        let dir = tmp();
        let cidr: Ipv4Network = "10.4.0.0/29".parse().unwrap();
        LeaseStore::lock(&dir, cidr).unwrap().allocate("c1", "eth0").unwrap();
        let each = LockEach { data_dir: &dir, cidr };
        let ip = Leases::find(&each, "c1", "eth0").unwrap();
        assert_eq!(ip, Some("10.4.0.2".parse().unwrap()));
        // Between operations the lock is free for an ADD.
        assert!(LeaseStore::try_lock(&dir, cidr).unwrap().is_some());
        assert_eq!(Leases::release(&each, "c1", "eth0").unwrap(), ip);
        assert_eq!(Leases::find(&each, "c1", "eth0").unwrap(), None);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_allocations_are_distinct() {
        let dir = tmp();
        let cidr: Ipv4Network = "10.2.0.0/24".parse().unwrap();
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let s = LeaseStore::lock(&dir, cidr).unwrap();
                    match s.allocate(&format!("c{i}"), "eth0").unwrap() {
                        Allocation::New(ip) => ip,
                        other => panic!("{other:?}"),
                    }
                })
            })
            .collect();
        let ips: BTreeSet<Ipv4Addr> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(ips.len(), 16);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn allocate_repeat_release_exhaust6() {
        let dir = tmp();
        let cidr: ipnetwork::Ipv6Network = "fd00:1::/125".parse().unwrap();
        let s = LeaseStore6::lock(&dir, cidr).unwrap();
        assert_eq!(s.allocate("c1", "eth0").unwrap(), Allocation::New("fd00:1::2".parse().unwrap()));
        assert_eq!(s.allocate("c1", "eth0").unwrap(), Allocation::Existing("fd00:1::2".parse().unwrap()));
        assert_eq!(s.release("c1", "eth0").unwrap(), Some("fd00:1::2".parse().unwrap()));
        for c in ["c2", "c3", "c4", "c5", "c6", "c7"] {
            s.allocate(c, "eth0").unwrap();
        }
        let err = s.allocate("c8", "eth0").unwrap_err();
        assert!(err.is::<Exhausted>(), "{err:#}");
        let err = err.to_string();
        assert!(err.contains("fd00:1::/125") && err.contains("6 of 6"), "{err}");
        drop(s);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_ipv4_store_is_untouched_by_a_dual_stack_node() {
        // A node that ran IPv4-only has leases; dual-stack adds a store
        // beside them and each family keeps its own lock and round-robin.
        let dir = tmp();
        let cidr4: Ipv4Network = "10.5.0.0/29".parse().unwrap();
        let cidr6: ipnetwork::Ipv6Network = "fd00:5::/64".parse().unwrap();
        LeaseStore::lock(&dir, cidr4).unwrap().allocate_for_pod("old", "eth0", Some("default/old")).unwrap();
        let before: Vec<_> =
            fs::read_dir(dir.join("ipam/10.5.0.0_29")).unwrap().map(|e| e.unwrap().file_name()).collect();
        let s4 = LeaseStore::lock(&dir, cidr4).unwrap();
        // The IPv6 store's lock is its own: taken while the IPv4 one is held.
        let s6 = LeaseStore6::try_lock(&dir, cidr6).unwrap().expect("a lock of its own");
        assert_eq!(s6.allocate("new", "eth0").unwrap(), Allocation::New("fd00:5::2".parse().unwrap()));
        assert_eq!(s4.allocate("new", "eth0").unwrap(), Allocation::New("10.5.0.3".parse().unwrap()));
        assert_eq!(s4.find("old", "eth0").unwrap(), Some("10.5.0.2".parse().unwrap()), "the old lease is kept");
        assert_eq!(s6.find("old", "eth0").unwrap(), None);
        drop((s4, s6));
        // Readers of IPv4 leases (status, NetworkPolicy) see only IPv4 ones.
        let all = read_pod_leases(&dir).unwrap();
        assert_eq!(all.iter().map(|l| l.ip.to_string()).collect::<Vec<_>>(), ["10.5.0.2", "10.5.0.3"]);
        // The IPv6 reader (NetworkPolicy, dual-stack) sees only IPv6 ones.
        let all6 = read_pod_leases6(&dir).unwrap();
        assert_eq!(all6.iter().map(|l| l.ip.to_string()).collect::<Vec<_>>(), ["fd00:5::2"]);
        assert_eq!((all6[0].container_id.as_str(), all6[0].ifname.as_str()), ("new", "eth0"));
        assert!(dir.join("ipam/fd00:5::_64").is_dir());
        assert_eq!(before.len(), 3, "lease, lock and last_reserved_ip: {before:?}");
        fs::remove_dir_all(dir).unwrap();
    }
}
