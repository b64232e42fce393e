//! The SNAT port range (`--snat-port-range`): the ports the datapath gives
//! connections from outside to a backend on another node (`from_uplink`,
//! `sluice_common::nat`). A reply to one of them is taken by the datapath
//! before the node's stack sees it, so the range must not overlap the
//! ports the node's own sockets use: the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`) and the NodePort range: checked at
//! start, so no reservation in `ip_local_reserved_ports` is needed for it
//! (not yet one of `port_ownership::ranges::owned`). Pure: the caller
//! reads the sysctl.
use sluice_common::nat::{Lb4Config, DEFAULT_SNAT_PORT_MAX, DEFAULT_SNAT_PORT_MIN, LB4_DSR, LB4_ENABLED};

use crate::port_ownership::ranges::PortRange;

/// `--snat-port-range`'s default.
pub const DEFAULT_SNAT_PORT_RANGE: PortRange = PortRange { first: DEFAULT_SNAT_PORT_MIN, last: DEFAULT_SNAT_PORT_MAX };

fn overlaps(a: &PortRange, b: &PortRange) -> bool {
    a.first <= b.last && b.first <= a.last
}

/// `net.ipv4.ip_local_port_range` as the sysctl prints it ("32768\t60999").
pub fn parse_ephemeral(text: &str) -> Result<PortRange, String> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(first)), Some(Ok(last)), None) if first <= last => Ok(PortRange { first, last }),
        _ => Err(format!("{text:?} is not an ip_local_port_range (want \"FIRST LAST\")")),
    }
}

/// Refuse a SNAT range that overlaps what the node's sockets use: a
/// connection's reply there would be taken for a SNATed one (or, the other
/// way round, a SNAT port's reply handed to a local socket).
pub fn check(snat: PortRange, ephemeral: PortRange, node_ports: PortRange) -> Result<(), String> {
    if overlaps(&snat, &ephemeral) {
        return Err(format!(
            "--snat-port-range {snat} overlaps the kernel's ephemeral ports (net.ipv4.ip_local_port_range \
             {ephemeral}): choose a range outside it, or narrow the sysctl"
        ));
    }
    if overlaps(&snat, &node_ports) {
        return Err(format!("--snat-port-range {snat} overlaps the NodePort range {node_ports} (--node-port-range)"));
    }
    Ok(())
}

/// The datapath's configuration: on with `range` (and direct server
/// return with `mode` dsr), or off.
pub fn lb4_config(enabled: bool, range: PortRange, mode: crate::config::LbMode) -> Lb4Config {
    let flags = match (enabled, mode) {
        (false, _) => 0,
        (true, crate::config::LbMode::Snat) => LB4_ENABLED,
        (true, crate::config::LbMode::Dsr) => LB4_ENABLED | LB4_DSR,
    };
    Lb4Config { flags, snat_port_min: range.first, snat_port_max: range.last }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port_ownership::ranges::DEFAULT_NODE_PORT_RANGE;

    fn r(s: &str) -> PortRange {
        s.parse().unwrap()
    }

    #[test]
    fn the_sysctl_parses_and_bad_text_says_why() {
        assert_eq!(parse_ephemeral("32768\t60999\n"), Ok(r("32768-60999")));
        for bad in ["", "32768", "60999 32768", "a b", "1 2 3", "1 70000"] {
            assert!(parse_ephemeral(bad).is_err(), "{bad:?}");
        }
        assert_eq!(DEFAULT_SNAT_PORT_RANGE.to_string(), "61000-65535");
    }

    #[test]
    fn the_default_clears_the_kernels_ephemeral_ports_and_node_ports() {
        assert_eq!(check(DEFAULT_SNAT_PORT_RANGE, r("32768-60999"), DEFAULT_NODE_PORT_RANGE), Ok(()));
        let e = check(DEFAULT_SNAT_PORT_RANGE, r("1024-65535"), DEFAULT_NODE_PORT_RANGE).unwrap_err();
        assert!(e.contains("ip_local_port_range 1024-65535"), "{e}");
        let e = check(r("30000-30010"), r("32768-60999"), DEFAULT_NODE_PORT_RANGE).unwrap_err();
        assert!(e.contains("NodePort range 30000-32767"), "{e}");
        assert_eq!(check(r("20000-29999"), r("32768-60999"), DEFAULT_NODE_PORT_RANGE), Ok(()));
        // A narrowed NodePort range leaves its neighbours free.
        assert_eq!(check(r("30000-30010"), r("32768-60999"), r("20000-20999")), Ok(()));
        // Touching ends overlap.
        assert!(check(r("60999-61000"), r("32768-60999"), DEFAULT_NODE_PORT_RANGE).is_err());
    }

    #[test]
    fn the_datapath_gets_the_range_and_the_switch() {
        use crate::config::LbMode;
        let c = lb4_config(true, r("61000-61099"), LbMode::Snat);
        assert_eq!((c.flags, c.snat_port_min, c.snat_port_max), (LB4_ENABLED, 61000, 61099));
        assert_eq!(lb4_config(false, DEFAULT_SNAT_PORT_RANGE, LbMode::Snat).flags, 0);
        assert_eq!(lb4_config(true, DEFAULT_SNAT_PORT_RANGE, LbMode::Dsr).flags, LB4_ENABLED | LB4_DSR);
        assert_eq!(lb4_config(false, DEFAULT_SNAT_PORT_RANGE, LbMode::Dsr).flags, 0, "off is off");
    }
}
