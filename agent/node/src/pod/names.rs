//! Interface names derived from the container ID and interface (pure).
//! Deterministic, so DEL finds what ADD made even with no state at all.

/// FNV-1a, 64 bits: stable across builds and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn suffix(container_id: &str, ifname: &str) -> String {
    let h = fnv1a(format!("{container_id}/{ifname}").as_bytes());
    format!("{h:016x}")[..11].to_string()
}

const HOST_VETH_PREFIX: &str = "slc";
const TEMP_PEER_PREFIX: &str = "slp";

/// The host-side veth: `slc` + 11 hex digits (14 characters, within 15).
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    format!("{HOST_VETH_PREFIX}{}", suffix(container_id, ifname))
}

/// A node-side interface some pod attachment made (for uninstalling).
pub fn is_pod_link(name: &str) -> bool {
    name.starts_with(HOST_VETH_PREFIX) || name.starts_with(TEMP_PEER_PREFIX)
}

/// The pod end's temporary name in the node namespace, before it moves
/// into the pod and is renamed to the requested ifname.
pub fn temp_peer(container_id: &str, ifname: &str) -> String {
    format!("{TEMP_PEER_PREFIX}{}", suffix(container_id, ifname))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let h = host_veth("abcdef0123456789", "eth0");
        assert!(h.len() <= 15 && h.starts_with("slc"));
        assert_eq!(h, host_veth("abcdef0123456789", "eth0"), "deterministic");
        assert_ne!(h, host_veth("abcdef0123456789", "eth1"));
        assert_ne!(h, host_veth("abcdef0123456788", "eth0"));
        assert_eq!(&temp_peer("x", "eth0")[3..], &host_veth("x", "eth0")[3..]);
        assert!(is_pod_link(&h) && is_pod_link(&temp_peer("x", "eth0")));
        assert!(!is_pod_link("eth0") && !is_pod_link("slhealth"));
    }
}
