//! `from_uplink`: ingress of the node's uplink.
use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use sluice_common::{DropReason, ForwardPath, HookDirection};

use crate::{
    counters::{count_forward, drop_packet},
    deliver::Origin,
    from_peer,
    parse::{self, ETH_HLEN, L4_OFF},
    tunnel,
};

#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    match try_from_uplink(&ctx) {
        Ok(action) => action,
        Err(reason) => drop_packet(&ctx, reason, HookDirection::Ingress),
    }
}

#[inline(always)]
fn try_from_uplink(ctx: &TcContext) -> Result<i32, DropReason> {
    // VXLAN from a peer's `from_pod` (or its VXLAN device), for one of our
    // pods: decapsulated and delivered here, without the device. First,
    // as it may change the packet: everything below parses afresh.
    if let Some(action) = tunnel::decap::decap_to_pod(ctx)? {
        return Ok(action);
    }
    let Some((_, ip)) = parse::ipv4(ctx)? else {
        count_forward(ctx, ForwardPath::ToStack);
        return Ok(TC_ACT_OK as i32);
    };
    // Natively routed: nothing on the wire says which node sent it.
    let judged = from_peer::judge::<ETH_HLEN, L4_OFF>(ctx, ip, None::<fn() -> u32>)?;
    from_peer::carry_out(ctx, judged, Origin::Uplink)
}
