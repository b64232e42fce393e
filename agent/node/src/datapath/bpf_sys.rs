//! The `bpf()` commands aya 0.14 does not expose: opening a pinned object
//! (`BPF_OBJ_GET`) and swapping the program behind a link
//! (`BPF_LINK_UPDATE`, atomic: no call runs without a program) for cgroup
//! and netkit links; creating a netkit link (`BPF_LINK_CREATE` with
//! `BPF_NETKIT_PEER`: aya-rs/aya#1553) and pinning it (`BPF_OBJ_PIN`).
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `enum bpf_attach_type`: a program in the transmit path of a netkit
/// primary's peer (the pod's end), attached through the primary.
pub const BPF_NETKIT_PEER: u32 = aya_obj::generated::bpf_attach_type::BPF_NETKIT_PEER as u32;

/// The `BPF_OBJ_*` member of `bpf_attr`. The kernel refuses (`EINVAL`) any
/// non-zero byte past `path_fd` within the size passed, so the tail that
/// would be padding is a field, always zero.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `link_create` with its `netkit` member (relative_fd, expected_revision).
#[repr(C)]
#[derive(Default)]
struct LinkCreateNetkitAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a properly sized, initialised bpf_attr prefix for
    // `cmd`; the kernel reads at most `size_of::<T>()` bytes of it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Open a pinned bpffs object (a link here) as an fd.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr { pathname: c.as_ptr() as u64, ..Default::default() };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pin `fd` (a link here) at `path` in bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, ..Default::default() };
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// A netkit link: `prog` (a `SchedClassifier`) at `attach_type` of the
/// netkit primary `ifindex` in the calling thread's namespace, appended
/// after any program already there.
pub fn netkit_link_create(prog: BorrowedFd<'_>, ifindex: u32, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateNetkitAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type,
        ..Default::default()
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Point `link` at `prog`.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr =
        LinkUpdateAttr { link_fd: link.as_raw_fd() as u32, new_prog_fd: prog.as_raw_fd() as u32, ..Default::default() };
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// The `BPF_MAP_*_ELEM` member of `bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value`, or `next_key` for `BPF_MAP_GET_NEXT_KEY`.
    value: u64,
    flags: u64,
}

/// Look `key` up, its value into `value` (all CPUs' slots for a per-CPU
/// map). `Ok(false)`: no such key.
pub fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Insert or replace `key` (`BPF_ANY`).
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// Insert `key` only if absent (`BPF_NOEXIST`). `Ok(false)`: it was there.
pub fn map_insert_new(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<bool> {
    const BPF_NOEXIST: u64 = 1;
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags: BPF_NOEXIST,
        ..Default::default()
    };
    match bpf(BPF_MAP_UPDATE_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The key after `key` (the first with `None`) into `next`. `Ok(false)`:
/// no more keys.
pub fn map_next_key(map: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.map_or(0, |k| k.as_ptr() as u64),
        value: next.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Keys in a hash-like map (hash, LRU, per-CPU hash, LPM trie) of
/// `key_size`-byte keys, counted by walking them with
/// `BPF_MAP_GET_NEXT_KEY`: one syscall a key, no values copied. Under
/// concurrent deletes the walk may restart from the first key (the kernel's
/// answer to a key gone), so it stops at `max_entries`.
pub fn count_keys(map: BorrowedFd<'_>, key_size: u32, max_entries: u32) -> io::Result<u64> {
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut n: u64 = 0;
    loop {
        let more = map_next_key(map, (n > 0).then_some(key.as_slice()), &mut next)?;
        if !more {
            return Ok(n);
        }
        n += 1;
        if n >= u64::from(max_entries) {
            return Ok(n);
        }
        std::mem::swap(&mut key, &mut next);
    }
}
