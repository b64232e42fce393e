//! The IPv6 twins of `netlink`'s IPv4 operations (addresses, routes,
//! neighbours), beside them on the same `Netlink`, plus the per-interface
//! IPv6 switches that live in sysctl rather than netlink.
use std::net::{IpAddr, Ipv6Addr};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use ipnetwork::Ipv6Network;
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags},
    neighbour::NeighbourState,
    route::{
        RouteAddress, RouteAttribute, RouteIp6Tunnel, RouteIp6TunnelFlags, RouteIpTunnel, RouteLwEnCapType,
        RouteLwTunnelEncap, RouteProtocol,
    },
    AddressFamily,
};
use rtnetlink::RouteMessageBuilder;

use super::netlink::{is_errno, Netlink};

/// The main routing table's id.
const RT_TABLE_MAIN: u8 = 254;

/// A kernel IPv6 route as sluice makes them: `dst [via gateway] dev oif`
/// (the twin of `KernelRoute`), or `dst encap ip id VNI dst PEER4 dev
/// sluice_vxlan` (`encap ip6 ... dst PEER6` over an IPv6 underlay) for a
/// peer reached through VXLAN (`encap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelRoute6 {
    pub dst: Ipv6Network,
    pub gateway: Option<Ipv6Addr>,
    pub oif: u32,
    /// A lightweight-tunnel IP encap: the external (collect_md) VXLAN
    /// device takes the tunnel key from it.
    pub encap: Option<Encap>,
    /// The preferred source (`src`, `RTA_PREFSRC`): the node's own packets
    /// along the route leave from it.
    pub src: Option<Ipv6Addr>,
    /// The route's MTU metric (`RTAX_MTU`), as `KernelRoute`'s.
    pub mtu: Option<u32>,
}

/// The tunnel key a route gives each packet it carries into an external
/// VXLAN device: `encap ip id <vni> dst <IPv4> ttl <ttl>` when `dst` is
/// IPv4 (IPv6 inside an IPv4 underlay), `encap ip6 id <vni> dst <IPv6>
/// hoplimit <ttl> csum` when it is IPv6 (an IPv6-only underlay). The IPv6
/// one asks for the outer UDP checksum (`csum`, `TUNNEL_CSUM`): without it
/// the device sends a zero checksum, which the receiving node's VXLAN
/// socket drops over IPv6 (RFC 8200 8.1; the device would need
/// `udp6zerocsumrx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Encap {
    pub vni: u32,
    pub dst: IpAddr,
    /// The outer TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
}

impl Encap {
    pub fn describe(&self) -> String {
        match self.dst {
            IpAddr::V4(dst) => format!("encap ip id {} dst {dst} ttl {}", self.vni, self.ttl),
            IpAddr::V6(dst) => format!("encap ip6 id {} dst {dst} hoplimit {} csum", self.vni, self.ttl),
        }
    }

    /// The route attributes: `RTA_ENCAP_TYPE` and `RTA_ENCAP`.
    fn attributes(&self) -> [RouteAttribute; 2] {
        let vni = u64::from(self.vni);
        match self.dst {
            IpAddr::V4(dst) => [
                RouteAttribute::EncapType(RouteLwEnCapType::Ip),
                RouteAttribute::Encap(vec![
                    RouteLwTunnelEncap::Ip(RouteIpTunnel::Id(vni)),
                    RouteLwTunnelEncap::Ip(RouteIpTunnel::Destination(dst)),
                    RouteLwTunnelEncap::Ip(RouteIpTunnel::Ttl(self.ttl)),
                ]),
            ],
            IpAddr::V6(dst) => [
                RouteAttribute::EncapType(RouteLwEnCapType::Ip6),
                RouteAttribute::Encap(vec![
                    RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Id(vni)),
                    RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Destination(dst)),
                    RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Hoplimit(self.ttl)),
                    RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Flags(RouteIp6TunnelFlags::Checksum)),
                ]),
            ],
        }
    }
}

impl KernelRoute6 {
    pub fn describe(&self) -> String {
        let encap = self.encap.map(|e| format!(" {}", e.describe())).unwrap_or_default();
        let src = self.src.map(|s| format!(" src {s}")).unwrap_or_default()
            + &self.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
        match self.gateway {
            Some(gw) => format!("{}{encap} via {gw} dev #{}{src}", self.dst, self.oif),
            None => format!("{}{encap} dev #{}{src}", self.dst, self.oif),
        }
    }
}

/// The `Encap` of a route's `RTA_ENCAP` attributes (`None` if they name
/// no destination). The IPv6 one's flags are not compared: sluice always
/// asks for `csum`, and an older agent's route without it is replaced by
/// its next pass only if something else differs.
fn encap_of(attrs: &[RouteLwTunnelEncap]) -> Option<Encap> {
    let (mut vni, mut dst, mut ttl) = (0, None, 0);
    for attr in attrs {
        match attr {
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Id(id)) | RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Id(id)) => {
                vni = *id as u32
            }
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Destination(ip)) => dst = Some(IpAddr::V4(*ip)),
            RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Destination(ip)) => dst = Some(IpAddr::V6(*ip)),
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Ttl(t)) | RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Hoplimit(t)) => {
                ttl = *t
            }
            _ => {}
        }
    }
    Some(Encap { vni, dst: dst?, ttl })
}

/// Is `ip` link-local (`fe80::/10`)?
pub fn is_link_local6(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

impl Netlink {
    /// Add an IPv6 address without duplicate address detection
    /// (`nodad`): usable at once, as a pod's address must be when its
    /// first packet leaves (DAD would hold it tentative for a second or
    /// more, and the address is the pod's alone by IPAM). Present already
    /// counts as added.
    pub async fn add_address6_nodad(&self, index: u32, ip: Ipv6Addr, prefix_len: u8) -> Result<()> {
        let mut req = self.handle.address().add(index, IpAddr::V6(ip), prefix_len);
        let msg = req.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("add address {ip}/{prefix_len} nodad")),
        }
    }

    /// Add an IPv6 /128 that only a route's `src` makes a packet's source:
    /// no DAD, and deprecated (preferred lifetime 0, valid forever), so the
    /// kernel's source address selection never picks it on its own (RFC
    /// 6724 rule 3), while a route naming it as `src` still does. Present
    /// already counts as added (`replace`: the lifetimes are set again).
    pub async fn add_route_source6(&self, index: u32, ip: Ipv6Addr) -> Result<()> {
        let mut req = self.handle.address().add(index, IpAddr::V6(ip), 128).replace();
        let msg = req.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        let mut lifetimes = netlink_packet_route::address::CacheInfo::default();
        lifetimes.ifa_preferred = 0;
        lifetimes.ifa_valid = u32::MAX;
        msg.attributes.push(AddressAttribute::CacheInfo(lifetimes));
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("add address {ip}/128 nodad preferred_lft 0")),
        }
    }

    /// Every IPv6 address on interface `index`, with its prefix length.
    pub async fn ipv6_addresses(&self, index: u32) -> Result<Vec<(Ipv6Addr, u8)>> {
        let mut out = Vec::new();
        let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) = addrs.try_next().await.context("list addresses")? {
            if msg.header.family != AddressFamily::Inet6 {
                continue;
            }
            for attr in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V6(ip)) = attr {
                    out.push((*ip, msg.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// The first global (not link-local) IPv6 address on interface `index`.
    pub async fn first_global_ipv6(&self, index: u32) -> Result<Option<(Ipv6Addr, u8)>> {
        Ok(self.ipv6_addresses(index).await?.into_iter().find(|(ip, _)| !is_link_local6(*ip) && !ip.is_loopback()))
    }

    /// A route to `dst/prefix` out of interface `index` (IPv6 has no
    /// scope-link routes: a route without a gateway is on-link).
    pub async fn add_link_route6(&self, index: u32, dst: Ipv6Addr, prefix_len: u8) -> Result<()> {
        let msg =
            RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(dst, prefix_len).output_interface(index).build();
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("add route {dst}/{prefix_len} dev #{index}")),
        }
    }

    /// `default via <gw> dev <index>` (IPv6; `gw` may be link-local, as
    /// the pods' fe80::1 is).
    pub async fn add_default_route6(&self, index: u32, gw: Ipv6Addr) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv6Addr>::new().gateway(gw).output_interface(index).build();
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("add default route via {gw}")),
        }
    }

    /// A permanent IPv6 neighbour entry: `ip` is at `mac` on `index`.
    pub async fn add_permanent_neighbour6(&self, index: u32, ip: Ipv6Addr, mac: [u8; 6]) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V6(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .with_context(|| format!("add neighbour {ip}"))
    }

    /// The MAC of `ip`'s permanent IPv6 neighbour entry on interface `index`.
    pub async fn permanent_neighbour6(&self, index: u32, ip: Ipv6Addr) -> Result<Option<[u8; 6]>> {
        use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
        let mut neighbours = self.handle.neighbours().get().set_address_family(AddressFamily::Inet6).execute();
        while let Some(msg) = neighbours.try_next().await.context("list neighbours")? {
            if msg.header.ifindex != index || msg.header.state != NeighbourState::Permanent {
                continue;
            }
            let mut is_ip = false;
            let mut mac = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => is_ip = *a == ip,
                    NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => {
                        mac = Some([m[0], m[1], m[2], m[3], m[4], m[5]]);
                    }
                    _ => {}
                }
            }
            if is_ip {
                return Ok(mac);
            }
        }
        Ok(None)
    }

    /// The interface of the IPv6 default route (`::/0`, unicast, with an
    /// output interface) in the main table, if any: the twin of
    /// `default_route_interface`, for a node without an IPv4 one.
    pub async fn default_route6_interface(&self) -> Result<Option<super::netlink::LinkInfo>> {
        let mut routes = self.handle.route().get(RouteMessageBuilder::<Ipv6Addr>::new().build()).execute();
        while let Some(msg) = routes.try_next().await.context("list IPv6 routes")? {
            let unicast = msg.header.kind == netlink_packet_route::route::RouteType::Unicast;
            if msg.header.destination_prefix_length != 0 || msg.header.table != RT_TABLE_MAIN || !unicast {
                continue;
            }
            for attr in &msg.attributes {
                if let RouteAttribute::Oif(index) = attr {
                    return self.link_by_index(*index).await;
                }
            }
        }
        Ok(None)
    }

    /// IPv6 routes of the main table (of one protocol, or all).
    pub async fn main_routes6(&self, protocol: Option<u8>) -> Result<Vec<KernelRoute6>> {
        let mut out = Vec::new();
        let mut routes = self.handle.route().get(RouteMessageBuilder::<Ipv6Addr>::new().build()).execute();
        while let Some(msg) = routes.try_next().await.context("list routes")? {
            let wrong_protocol = protocol.is_some_and(|p| msg.header.protocol != RouteProtocol::Other(p));
            if msg.header.table != RT_TABLE_MAIN || wrong_protocol {
                continue;
            }
            let (mut dst, mut gateway, mut oif, mut encap, mut src) = (Ipv6Addr::UNSPECIFIED, None, 0, None, None);
            let mut encap_ip = false;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst = *ip,
                    RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => gateway = Some(*ip),
                    RouteAttribute::Oif(i) => oif = *i,
                    RouteAttribute::PrefSource(RouteAddress::Inet6(ip)) => src = Some(*ip),
                    RouteAttribute::EncapType(RouteLwEnCapType::Ip | RouteLwEnCapType::Ip6) => encap_ip = true,
                    RouteAttribute::Encap(attrs) => encap = encap_of(attrs),
                    _ => {}
                }
            }
            let Ok(dst) = Ipv6Network::new(dst, msg.header.destination_prefix_length) else {
                continue;
            };
            let mtu = super::netlink::route_mtu(&msg.attributes);
            out.push(KernelRoute6 { dst, gateway, oif, encap: encap.filter(|_| encap_ip), src, mtu });
        }
        Ok(out)
    }

    fn route_message6(route: &KernelRoute6, protocol: u8) -> netlink_packet_route::route::RouteMessage {
        let msg = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(route.dst.network(), route.dst.prefix())
            .output_interface(route.oif)
            .protocol(RouteProtocol::Other(protocol));
        let mut msg = match route.gateway {
            Some(gw) => msg.gateway(gw).build(),
            None => msg.build(),
        };
        if let Some(e) = route.encap {
            msg.attributes.extend(e.attributes());
        }
        if let Some(src) = route.src {
            msg.attributes.push(RouteAttribute::PrefSource(RouteAddress::Inet6(src)));
        }
        super::netlink::with_route_mtu(msg, route.mtu)
    }

    /// `ip -6 route replace <dst> [encap ip ...] [via <gw>] dev <oif> proto
    /// <protocol>`.
    pub async fn replace_route6(&self, route: &KernelRoute6, protocol: u8) -> Result<()> {
        let req = self.handle.route().add(Self::route_message6(route, protocol)).replace();
        req.execute().await.with_context(|| format!("replace route {}", route.describe()))
    }

    /// Delete an IPv6 route; one already gone counts as deleted.
    pub async fn delete_route6(&self, route: &KernelRoute6, protocol: u8) -> Result<()> {
        match self.handle.route().del(Self::route_message6(route, protocol)).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENOENT) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("delete route {}", route.describe())),
        }
    }
}

/// Turn IPv6 on for interface `ifname` of the calling thread's network
/// namespace (`net.ipv6.conf.<if>.disable_ipv6=0`): a runtime or image
/// may have turned it off by default, and an address cannot be added to
/// an interface without IPv6 (as the reference plugins' `ipam.ConfigureIface`
/// does). Netlink has no request for it.
pub fn enable_ipv6_on(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "0" => Ok(()),
        Ok(_) => std::fs::write(&path, "0").with_context(|| format!("write {path}")),
        Err(e) => Err(e).with_context(|| format!("read {path} (is IPv6 built into this kernel?)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encap_to_an_ipv6_peer_is_ip6_with_a_checksum_and_reads_back() {
        let e6 = Encap { vni: 1, dst: "fd00:31::3".parse().unwrap(), ttl: 64 };
        assert_eq!(e6.describe(), "encap ip6 id 1 dst fd00:31::3 hoplimit 64 csum");
        let [RouteAttribute::EncapType(kind), RouteAttribute::Encap(attrs)] = e6.attributes() else {
            panic!("encap type, then encap")
        };
        assert_eq!(kind, RouteLwEnCapType::Ip6);
        assert!(
            attrs.contains(&RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Flags(RouteIp6TunnelFlags::Checksum))),
            "the outer UDP checksum asked for: {attrs:?}"
        );
        assert_eq!(encap_of(&attrs), Some(e6), "read back as written");
        // Over IPv4 (a dual-stack node) as before: `encap ip`, no flags.
        let e4 = Encap { vni: 1, dst: "172.31.0.3".parse().unwrap(), ttl: 64 };
        assert_eq!(e4.describe(), "encap ip id 1 dst 172.31.0.3 ttl 64");
        let [RouteAttribute::EncapType(kind), RouteAttribute::Encap(attrs)] = e4.attributes() else {
            panic!("encap type, then encap")
        };
        assert_eq!(kind, RouteLwEnCapType::Ip);
        assert_eq!(attrs.len(), 3, "{attrs:?}");
        assert_eq!(encap_of(&attrs), Some(e4));
    }

    #[test]
    fn link_local6() {
        for (ip, want) in [("fe80::1", true), ("febf::1", true), ("fec0::1", false), ("fd00::1", false), ("::", false)]
        {
            assert_eq!(is_link_local6(ip.parse().unwrap()), want, "{ip}");
        }
    }
}
