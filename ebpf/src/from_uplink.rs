//! `from_uplink`: ingress of the node's uplink.
use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use sluice_common::{
    verdict::{self, Verdict},
    DropReason, ForwardPath,
};

use crate::{
    counters::{count_forward, drop_packet},
    forward,
    maps::ENDPOINTS,
    parse,
};

#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    match try_from_uplink(&ctx) {
        Ok(action) => action,
        Err(reason) => drop_packet(reason),
    }
}

#[inline(always)]
fn try_from_uplink(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some((eth, ip)) = parse::ipv4(ctx)? else {
        count_forward(ForwardPath::ToStack);
        return Ok(TC_ACT_OK as i32);
    };
    // SAFETY: bounds checked by parse::ipv4.
    let (dst_be, ttl) = unsafe { ((*ip).dst_be, (*ip).ttl) };
    // SAFETY: read-only use of the value before any other helper call.
    let local = unsafe { ENDPOINTS.get(&dst_be) };
    match verdict::from_uplink(local.is_some(), ttl) {
        Verdict::Drop(reason) => Err(reason),
        Verdict::ToLocalPod => {
            let Some(ep) = local else {
                return Err(DropReason::HeaderRewrite);
            };
            forward::decrement_ttl(ip);
            count_forward(ForwardPath::UplinkToPod);
            Ok(forward::into_pod(eth, ep))
        }
        // Node traffic, ARP, and anything not for a pod: the node decides.
        _ => {
            count_forward(ForwardPath::ToStack);
            Ok(TC_ACT_OK as i32)
        }
    }
}
