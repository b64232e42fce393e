//! `from_pod`'s IPv6 path, the twin of its IPv4 one, on a dual-stack node
//! (`NodeConfig::dual_stack`): the source checked against `ENDPOINTS6` for
//! this very interface (or link-local / unspecified to a link-scope
//! destination: neighbour discovery for the gateway, MLD, DAD), then handed
//! to the node's stack, which routes it: to a local pod through its `/128`
//! route, to another node through the kernel's IPv6 route to its pod CIDR.
//! No fast path for IPv6 yet (no redirect, no hop-limit rewrite here: the
//! stack's forwarding decrements it). A forged source is dropped and
//! counted as `source_spoofed`, as for IPv4.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use sluice_common::{
    verdict::{self, FromPod6Facts, Verdict},
    DropReason, ForwardPath,
};

use crate::{
    counters::count_forward,
    maps::ENDPOINTS6,
    parse::{self, Ipv6Hdr, ETH_HLEN},
    policy,
};

#[inline(always)]
pub fn try_from_pod6(ctx: &TcContext) -> Result<i32, DropReason> {
    let ip6: *const Ipv6Hdr = parse::header_mut(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by header_mut; copied out before any lookup.
    let (version, src, dst) = unsafe { ((*ip6).version_class_flow[0] >> 4, (*ip6).src, (*ip6).dst) };
    // SAFETY: the value is only read here.
    let source_is_own = match unsafe { ENDPOINTS6.get(&src) } {
        Some(ep) => ep.host_ifindex == parse::ifindex(ctx),
        None => false,
    };
    let decision = verdict::from_pod6(FromPod6Facts {
        version_ok: version == 6,
        source_is_own,
        source_is_link_local_or_unspecified: verdict::ipv6_link_local_or_unspecified(&src),
        dest_is_link_scope: verdict::ipv6_link_scope(&dst),
    });
    match decision {
        Verdict::Drop(reason) => Err(reason),
        _ => {
            // NetworkPolicy: the pod's egress, and a local destination's
            // ingress (the stack delivers it next, through `to_pod`, which
            // then finds the connection judged for both ends).
            policy::enforce6(ctx, true, true)?;
            count_forward(ctx, ForwardPath::PodIpv6ToStack);
            Ok(TC_ACT_OK as i32)
        }
    }
}
