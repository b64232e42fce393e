//! VXLAN (issue 15), for peers `NODE_ROUTES` flags `REMOTE_NODE_VXLAN`,
//! by concern:
//!
//! - `device`: the VXLAN device (external / collect_md mode: the program
//!   names the remote end per packet, the device only encapsulates) —
//!   handing it a packet with its key (`to_node`), and its programs
//!   `from_tunnel` (ingress: what it decapsulated) and `to_tunnel`
//!   (egress: what the node's stack routes into it).
//! - `encap`: `encap_to_node` (from `from_pod`) writes the outer headers
//!   itself and sends the result out of the uplink.
//! - `decap`: `decap_to_pod` (from `from_uplink`) strips them and delivers
//!   into the pod.
//! - `wire`: the header layout both sides share.
//!
//! Pod-to-pod packets skip the device both ways. What `encap` and `decap`
//! produce and accept is plain VXLAN on `TUNNEL_PORT` with `TUNNEL_VNI`,
//! the same bytes the device sends, so a node still running the
//! device-only programs interoperates. Whatever arrives, by the device or
//! decapsulated here, is judged once, by `from_peer::judge`, and enters a
//! pod only through `deliver::deliver_to_local_pod`.
pub mod decap;
pub mod device;
pub mod encap;
mod wire;
