//! Typed access to the socket load balancer's pinned maps: `SERVICES`,
//! `BACKENDS` and `BACKEND_MEMBERS` (written together), and its counters.
use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use sluice_common::{
    maps::{limits, names},
    services::{
        Backend, BackendMember, BackendSlot, ReverseKey, ServiceKey, ServiceValue, SockLbConfig, SockLbCounter,
    },
    services6::{Backend6, BackendMember6, ReverseKey6, ServiceKey6},
};

use super::{
    pinned_maps::{insert_error, open, removed_or_absent},
    pins::PinDir,
};

pub struct ServiceMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendSlot, Backend>,
    members: HashMap<MapData, BackendMember, u32>,
}

impl ServiceMaps {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self {
            services: open(pins, names::SERVICES)?.try_into()?,
            backends: open(pins, names::BACKENDS)?.try_into()?,
            members: open(pins, names::BACKEND_MEMBERS)?.try_into()?,
        })
    }

    pub fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        self.services.iter().collect::<Result<_, _>>().context("read SERVICES")
    }

    pub fn backends(&self) -> Result<Vec<(BackendSlot, Backend)>> {
        self.backends.iter().collect::<Result<_, _>>().context("read BACKENDS")
    }

    pub fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(|e| insert_error(e, names::SERVICES, limits::MAX_SERVICES, format!("insert service {key:?}")))
    }

    pub fn remove_service(&mut self, key: ServiceKey) -> Result<()> {
        removed_or_absent(self.services.remove(&key)).with_context(|| format!("remove service {key:?}"))
    }

    /// A backend in its slot, and in the set's membership index.
    pub fn put_backend(&mut self, slot: BackendSlot, backend: Backend) -> Result<()> {
        let what = || format!("insert backend {backend:?} at {slot:?}");
        self.backends
            .insert(slot, backend, 0)
            .map_err(|e| insert_error(e, names::BACKENDS, limits::MAX_BACKENDS, what()))?;
        let member = BackendMember { set: slot.set, backend };
        self.members
            .insert(member, slot.slot, 0)
            .map_err(|e| insert_error(e, names::BACKEND_MEMBERS, limits::MAX_BACKENDS, what()))
    }

    /// Remove a backend from its slot and the index; absent counts as done.
    pub fn remove_backend(&mut self, slot: BackendSlot, backend: Backend) -> Result<()> {
        removed_or_absent(self.members.remove(&BackendMember { set: slot.set, backend }))
            .and_then(|_| removed_or_absent(self.backends.remove(&slot)))
            .with_context(|| format!("remove backend {backend:?} at {slot:?}"))
    }
}

/// `SERVICES6`, `BACKENDS6` and `BACKEND_MEMBERS6`: `ServiceMaps`' IPv6
/// twin, written the same way.
pub struct ServiceMaps6 {
    services: HashMap<MapData, ServiceKey6, ServiceValue>,
    backends: HashMap<MapData, BackendSlot, Backend6>,
    members: HashMap<MapData, BackendMember6, u32>,
}

impl ServiceMaps6 {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self {
            services: open(pins, names::SERVICES6)?.try_into()?,
            backends: open(pins, names::BACKENDS6)?.try_into()?,
            members: open(pins, names::BACKEND_MEMBERS6)?.try_into()?,
        })
    }

    pub fn services(&self) -> Result<Vec<(ServiceKey6, ServiceValue)>> {
        self.services.iter().collect::<Result<_, _>>().context("read SERVICES6")
    }

    pub fn backends(&self) -> Result<Vec<(BackendSlot, Backend6)>> {
        self.backends.iter().collect::<Result<_, _>>().context("read BACKENDS6")
    }

    pub fn put_service(&mut self, key: ServiceKey6, value: ServiceValue) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(|e| insert_error(e, names::SERVICES6, limits::MAX_SERVICES, format!("insert service {key:?}")))
    }

    pub fn remove_service(&mut self, key: ServiceKey6) -> Result<()> {
        removed_or_absent(self.services.remove(&key)).with_context(|| format!("remove service {key:?}"))
    }

    /// A backend in its slot, and in the set's membership index.
    pub fn put_backend(&mut self, slot: BackendSlot, backend: Backend6) -> Result<()> {
        let what = || format!("insert backend {backend:?} at {slot:?}");
        self.backends
            .insert(slot, backend, 0)
            .map_err(|e| insert_error(e, names::BACKENDS6, limits::MAX_BACKENDS, what()))?;
        let member = BackendMember6 { set: slot.set, backend };
        self.members
            .insert(member, slot.slot, 0)
            .map_err(|e| insert_error(e, names::BACKEND_MEMBERS6, limits::MAX_BACKENDS, what()))
    }

    /// Remove a backend from its slot and the index; absent counts as done.
    pub fn remove_backend(&mut self, slot: BackendSlot, backend: Backend6) -> Result<()> {
        removed_or_absent(self.members.remove(&BackendMember6 { set: slot.set, backend }))
            .and_then(|_| removed_or_absent(self.backends.remove(&slot)))
            .with_context(|| format!("remove backend {backend:?} at {slot:?}"))
    }
}

/// `SOCK_REVERSE`, read only: the frontend a socket was translated from,
/// by the socket's cookie and the backend it was sent to.
pub struct SockReverse {
    map: HashMap<MapData, ReverseKey, ServiceKey>,
}

impl SockReverse {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self { map: open(pins, names::SOCK_REVERSE)?.try_into()? })
    }

    /// `None`: never translated, or its entry was evicted (an LRU map).
    pub fn frontend_of(&self, cookie: u64, backend: Backend) -> Result<Option<ServiceKey>> {
        match self.map.get(&ReverseKey { cookie, backend }, 0) {
            Ok(k) => Ok(Some(k)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("read SOCK_REVERSE"),
        }
    }
}

/// `SOCK_REVERSE6`, read only: `SockReverse`'s IPv6 twin.
pub struct SockReverse6 {
    map: HashMap<MapData, ReverseKey6, ServiceKey6>,
}

impl SockReverse6 {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self { map: open(pins, names::SOCK_REVERSE6)?.try_into()? })
    }

    /// `None`: never translated, or its entry was evicted (an LRU map).
    pub fn frontend_of(&self, cookie: u64, backend: Backend6) -> Result<Option<ServiceKey6>> {
        match self.map.get(&ReverseKey6 { cookie, backend, _pad: 0 }, 0) {
            Ok(k) => Ok(Some(k)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("read SOCK_REVERSE6"),
        }
    }
}

/// `SOCK_LB_STATS` summed over CPUs, in `SockLbCounter` order.
pub fn sock_lb_counters(pins: &PinDir) -> Result<Vec<(SockLbCounter, u64)>> {
    let map: PerCpuArray<MapData, u64> = open(pins, names::SOCK_LB_STATS)?.try_into()?;
    SockLbCounter::ALL
        .iter()
        .map(|c| Ok((*c, map.get(&(*c as u32), 0).context("read SOCK_LB_STATS")?.iter().sum())))
        .collect()
}

/// `NODE_ADDRESSES`: the addresses a NodePort answers on (address, network
/// order → `NODE_ADDRESS_LOCAL` / `NODE_ADDRESS_REMOTE`).
pub struct NodeAddressMap {
    map: HashMap<MapData, u32, u32>,
}

impl NodeAddressMap {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self { map: open(pins, names::NODE_ADDRESSES)?.try_into()? })
    }

    pub fn entries(&self) -> Result<Vec<(u32, u32)>> {
        self.map.iter().collect::<Result<_, _>>().context("read NODE_ADDRESSES")
    }

    pub fn put(&mut self, ip_be: u32, kind: u32) -> Result<()> {
        self.map.insert(ip_be, kind, 0).map_err(|e| {
            insert_error(
                e,
                names::NODE_ADDRESSES,
                limits::MAX_NODE_ADDRESSES,
                format!("insert node address {ip_be:#x}"),
            )
        })
    }

    pub fn remove(&mut self, ip_be: u32) -> Result<()> {
        removed_or_absent(self.map.remove(&ip_be)).with_context(|| format!("remove node address {ip_be:#x}"))
    }
}

/// Write `SOCK_LB_CONFIG`'s one entry.
pub fn set_sock_lb_config(pins: &PinDir, config: SockLbConfig) -> Result<()> {
    let mut map: Array<MapData, SockLbConfig> = open(pins, names::SOCK_LB_CONFIG)?.try_into()?;
    map.set(0, config, 0).context("write SOCK_LB_CONFIG")
}

/// `SO_NETNS_COOKIE` of the calling thread's network namespace: what
/// `bpf_get_netns_cookie` returns for a socket there.
pub fn own_netns_cookie() -> Result<u64> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("open a socket for SO_NETNS_COOKIE");
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is a u64 and `len` says so.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt SO_NETNS_COOKIE (Linux 5.14+)");
    }
    Ok(cookie)
}
