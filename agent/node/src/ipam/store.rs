//! Leases on disk: `<dataDir>/ipam/<cidr>/<ip>` holds "<container id>\n<ifname>\n",
//! and a third line "<namespace>/<name>" when the runtime named the pod
//! (`CNI_ARGS`); readers that know only two lines ignore it.
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
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use ipnetwork::Ipv4Network;

use super::allocator;

const LAST_RESERVED: &str = "last_reserved_ip";
const LOCK: &str = "lock";

pub struct LeaseStore {
    dir: PathBuf,
    cidr: Ipv4Network,
    _lock: File,
}

/// One leased address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
    /// How long ago the lease was written (an ADD may still be running on a
    /// very young one).
    pub age: std::time::Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Allocation {
    /// A new lease.
    New(Ipv4Addr),
    /// This container and interface already held this address (a repeated ADD).
    Existing(Ipv4Addr),
}

#[derive(Debug, thiserror::Error)]
#[error("pod CIDR {cidr} is exhausted: {in_use} of {capacity} addresses in use")]
pub struct Exhausted {
    pub cidr: Ipv4Network,
    pub in_use: usize,
    pub capacity: u32,
}

impl LeaseStore {
    /// Open the store for `cidr` and take its lock (blocks until free).
    /// Like `lock`, but `None` at once if someone (a CNI call) holds it.
    pub fn try_lock(data_dir: &Path, cidr: Ipv4Network) -> Result<Option<Self>> {
        Self::open(data_dir, cidr, libc::LOCK_EX | libc::LOCK_NB)
    }

    pub fn lock(data_dir: &Path, cidr: Ipv4Network) -> Result<Self> {
        Self::open(data_dir, cidr, libc::LOCK_EX)?.context("lock IPAM store")
    }

    fn open(data_dir: &Path, cidr: Ipv4Network, how: libc::c_int) -> Result<Option<Self>> {
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
    pub fn leases(&self) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).with_context(|| format!("list {}", self.dir.display()))? {
            let entry = entry?;
            let Ok(ip) = entry.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
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

    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>> {
        Ok(self.leases()?.into_iter().find(|l| l.container_id == container_id && l.ifname == ifname).map(|l| l.ip))
    }

    pub fn allocate(&self, container_id: &str, ifname: &str) -> Result<Allocation> {
        self.allocate_for_pod(container_id, ifname, None)
    }

    /// `allocate`, recording the pod (`<namespace>/<name>`, one line) in the lease.
    pub fn allocate_for_pod(&self, container_id: &str, ifname: &str, pod: Option<&str>) -> Result<Allocation> {
        if pod.is_some_and(|p| p.contains('\n')) {
            bail!("pod name {pod:?} has a newline");
        }
        let leases = self.leases()?;
        if let Some(l) = leases.iter().find(|l| l.container_id == container_id && l.ifname == ifname) {
            return Ok(Allocation::Existing(l.ip));
        }
        let in_use: BTreeSet<Ipv4Addr> = leases.iter().map(|l| l.ip).collect();
        let last = fs::read_to_string(self.dir.join(LAST_RESERVED)).ok().and_then(|s| s.trim().parse().ok());
        let Some(ip) = allocator::next_free(self.cidr, &in_use, last) else {
            return Err(
                Exhausted { cidr: self.cidr, in_use: in_use.len(), capacity: allocator::capacity(self.cidr) }.into()
            );
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
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>> {
        let Some(ip) = self.find(container_id, ifname)? else {
            return Ok(None);
        };
        self.release_ip(ip)?;
        Ok(Some(ip))
    }

    pub fn release_ip(&self, ip: Ipv4Addr) -> Result<()> {
        match fs::remove_file(self.dir.join(ip.to_string())) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("release {ip}")),
        }
    }
}

/// What tearing down one attachment needs of the leases (`pod::teardown`):
/// a store already locked by the caller (GC, the agent's sweep), or
/// `LockEach`.
pub trait Leases {
    fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>>;
    fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>>;
}

impl Leases for LeaseStore {
    fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>> {
        LeaseStore::find(self, container_id, ifname)
    }
    fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>> {
        LeaseStore::release(self, container_id, ifname)
    }
}

/// The store of `cidr` under `data_dir`, locked for each operation only:
/// for CNI DEL, whose device deletion waits on the kernel (RCU, tens of ms)
/// and must not hold every concurrent ADD's address allocation meanwhile.
pub struct LockEach<'a> {
    pub data_dir: &'a Path,
    pub cidr: Ipv4Network,
}

impl Leases for LockEach<'_> {
    fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>> {
        LeaseStore::lock(self.data_dir, self.cidr)?.find(container_id, ifname)
    }
    fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>> {
        LeaseStore::lock(self.data_dir, self.cidr)?.release(container_id, ifname)
    }
}

/// A lease as `status --pods` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLease {
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
    /// `<namespace>/<name>`, when the runtime passed them.
    pub pod: Option<String>,
}

/// Every lease under `data_dir`, of every pod CIDR, read without taking the
/// lock: `status` never waits on a CNI call (a lease being written may show
/// without its owner for that moment).
pub fn read_pod_leases(data_dir: &Path) -> Result<Vec<PodLease>> {
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
            let Ok(ip) = f.file_name().to_string_lossy().parse::<Ipv4Addr>() else { continue };
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
}
