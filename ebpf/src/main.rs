//! sluice's datapath: TC programs attached with TCX, and cgroup socket
//! programs for Services.
//!
//! - `from_pod` / `from_pod_netkit`: ingress of every pod's host-side veth /
//!   a netkit pod's peer program (its transmit path). Anti-spoofing, then
//!   local delivery straight into the destination pod, cross-node forwarding
//!   out of the uplink (pod IPs untouched, no encapsulation), or the stack.
//!   On a dual-stack node a pod's IPv6 takes the twin path (`from_pod6`):
//!   source-checked, then into a local pod or out of the uplink to another
//!   node's (native), or the stack.
//! - `from_uplink`: ingress of the node's uplink. Packets for a local pod go
//!   straight into it (IPv6: `from_uplink6`); everything else goes to the
//!   node's stack.
//! - `to_pod` / `to_uplink`: egress of the host veths and the uplink: remember
//!   flows the node's stack forwarded, so their replies go back through it
//!   (`stack_flows`: kube-proxy's Services, NodePorts, hostPorts).
//! - `sock_connect`, `sock_sendmsg`, `sock_recvmsg`, `sock_getpeername` and
//!   their IPv6 twins (`sock_connect6`, ...: v4-mapped cluster IPs):
//!   cgroup programs that balance Services' cluster IPs at the socket
//!   (`sock_lb`).
//! - `from_tunnel` / `to_tunnel`: ingress and egress of the node's VXLAN
//!   device (`tunnel::device`); `from_pod` encapsulates for peers reached
//!   through VXLAN itself (`tunnel::encap`), `from_uplink` decapsulates
//!   what is for a local pod (`tunnel::decap`).
//!
//! Every delivery into a local pod, whichever program makes it, goes
//! through `deliver::deliver_to_local_pod`: the one place a check on what
//! enters a pod sits (NetworkPolicy's ingress: `policy`). What arrives from
//! another node is judged by `from_peer`, once for the three ways it comes.
//! - `to_nat64`: egress of the node's NAT64 device (`--nat64`): IPv4
//!   answers for pool addresses, translated to IPv6 into their pods;
//!   `from_pod`'s IPv6 path translates the other way (`nat64`).
//! - `count_packets`: a diagnostic that counts packets per interface.
//!
//! Decisions come from `sluice_common::verdict`; this crate only gathers the
//! facts (headers, map lookups) and carries the verdict out.
#![no_std]
#![no_main]

mod count;
mod counters;
mod deliver;
mod events;
mod fast6;
mod forward;
mod from_peer;
mod from_pod;
mod from_pod6;
mod from_uplink;
mod from_uplink6;
mod lb4;
mod lb4_affinity;
mod lb4_frag;
mod lb6;
mod maps;
mod nat64;
mod node_path;
mod parse;
mod policy;
mod sock_lb;
mod stack;
mod stack_flows;
mod tunnel;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF programs cannot panic; the verifier rejects any path that would.
    loop {}
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";
