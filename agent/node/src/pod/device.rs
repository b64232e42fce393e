//! The kind of device pair that joins a pod to the node, and what each kind
//! runs. The agent decides (`--device`, detected at start) and writes it
//! into the CNI config; a pod keeps the kind it was made with, which its
//! link pins tell (so restarts, sweeps and CHECK need no other state).
use std::fmt;

use sluice_common::maps::programs;

use crate::datapath::pins::{self, PinDir};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodDevice {
    /// A veth pair: `from_pod` at TCX ingress of the host end, after the
    /// pair's backlog queue; local delivery with `bpf_redirect_peer`.
    Veth,
    /// A netkit pair (L3): `from_pod_netkit` in the pod's transmit path.
    Netkit,
}

impl PodDevice {
    pub const ALL: [PodDevice; 2] = [PodDevice::Veth, PodDevice::Netkit];

    /// The programs on the host end: what the pod sends, then what the
    /// node's stack sends the pod (TCX egress for both kinds).
    pub fn programs(self) -> [&'static str; 2] {
        match self {
            PodDevice::Veth => [programs::FROM_POD, programs::TO_POD],
            PodDevice::Netkit => [programs::FROM_POD_NETKIT, programs::TO_POD],
        }
    }

    /// The program whose link pin marks a pod of this kind.
    pub fn marker(self) -> &'static str {
        self.programs()[0]
    }

    pub fn name(self) -> &'static str {
        match self {
            PodDevice::Veth => "veth",
            PodDevice::Netkit => "netkit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == s)
    }

    /// The pod interface and kind a link pin belongs to (`None`: not a
    /// pod's marker pin).
    pub fn of_link_pin(pin_name: &str) -> Option<(&str, PodDevice)> {
        Self::ALL.into_iter().find_map(|d| pins::link_pin_ifname(d.marker(), pin_name).map(|i| (i, d)))
    }

    /// The kind of the pod behind host device `host_name`, from its pins.
    pub fn of_pod(pins: &PinDir, host_name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| pins.link(d.marker(), host_name).exists())
    }
}

impl fmt::Display for PodDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_pins_tell_the_kind() {
        for d in PodDevice::ALL {
            assert_eq!(PodDevice::parse(d.name()), Some(d));
            let pin = pins::link_pin_name(d.marker(), "slc1234abcd");
            assert_eq!(PodDevice::of_link_pin(&pin), Some(("slc1234abcd", d)));
        }
        assert_eq!(PodDevice::parse("tap"), None);
        // `to_pod` is on both kinds: it marks neither.
        assert_eq!(PodDevice::of_link_pin(&pins::link_pin_name(programs::TO_POD, "slc1")), None);
        assert_eq!(serde_json::to_string(&PodDevice::Netkit).unwrap(), "\"netkit\"");
    }
}
