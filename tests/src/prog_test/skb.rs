//! The `struct __sk_buff` that `BPF_PROG_TEST_RUN` takes as `ctx_in` and
//! gives back as `ctx_out` for a TC program (`include/uapi/linux/bpf.h`).
//! aya 0.14 has no binding for it on the host (aya-obj's bindings stop at
//! the syscall's own types), so its layout is written out here and pinned
//! by size and offsets.
//!
//! The kernel accepts only a few fields as input (`convert___skb_to_skb`
//! in `net/bpf/test_run.c`: mark, priority, ingress_ifindex, ifindex, cb,
//! tstamp, wire_len, gso_segs, gso_size, hwtstamp; any other non-zero byte
//! is `EINVAL`). `ifindex` names a device in the caller's network
//! namespace; the program sees it as the packet's device.
use std::mem::{offset_of, size_of};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SkBuff {
    pub len: u32,
    pub pkt_type: u32,
    pub mark: u32,
    pub queue_mapping: u32,
    pub protocol: u32,
    pub vlan_present: u32,
    pub vlan_tci: u32,
    pub vlan_proto: u32,
    pub priority: u32,
    pub ingress_ifindex: u32,
    pub ifindex: u32,
    pub tc_index: u32,
    pub cb: [u32; 5],
    pub hash: u32,
    pub tc_classid: u32,
    pub data: u32,
    pub data_end: u32,
    pub napi_id: u32,
    pub family: u32,
    pub remote_ip4: u32,
    pub local_ip4: u32,
    pub remote_ip6: [u32; 4],
    pub local_ip6: [u32; 4],
    pub remote_port: u32,
    pub local_port: u32,
    pub data_meta: u32,
    /// `__bpf_md_ptr(struct bpf_flow_keys *, flow_keys)`: 8 bytes, aligned.
    pub flow_keys: u64,
    pub tstamp: u64,
    pub wire_len: u32,
    pub gso_segs: u32,
    /// `__bpf_md_ptr(struct bpf_sock *, sk)`.
    pub sk: u64,
    pub gso_size: u32,
    pub tstamp_type: u8,
    pub _pad: [u8; 3],
    pub hwtstamp: u64,
}

const _: () = assert!(size_of::<SkBuff>() == 192);
const _: () = assert!(offset_of!(SkBuff, ifindex) == 40);
const _: () = assert!(offset_of!(SkBuff, flow_keys) == 144);
const _: () = assert!(offset_of!(SkBuff, gso_size) == 176);
const _: () = assert!(offset_of!(SkBuff, hwtstamp) == 184);

impl SkBuff {
    /// A context for a packet arriving on (or leaving through) `ifindex`.
    pub fn on(ifindex: u32) -> Self {
        Self { ifindex, ..Default::default() }
    }

    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: plain `repr(C)` integers with the padding spelled out.
        unsafe { std::slice::from_raw_parts(self as *const Self as *const u8, size_of::<Self>()) }
    }

    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut out = Self::default();
        let n = bytes.len().min(size_of::<Self>());
        // SAFETY: every bit pattern is a valid `SkBuff` (integers only).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), &mut out as *mut Self as *mut u8, n) };
        out
    }
}
