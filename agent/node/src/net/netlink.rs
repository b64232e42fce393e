//! Netlink operations sluice needs, in-process through rtnetlink (never by
//! running `ip`). One `Netlink` is bound to the network namespace it was
//! opened in (see `netns::netlink_in` for another namespace's).
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{LinkAttribute, LinkFlags, LinkMessage},
    neighbour::NeighbourState,
    route::{RouteAddress, RouteAttribute, RouteProtocol, RouteScope},
    AddressFamily,
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

#[derive(Clone)]
pub struct Netlink {
    pub(crate) handle: Handle,
}

/// What sluice needs to know about an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: [u8; 6],
    /// Administratively up and with carrier.
    pub up: bool,
    /// Administratively up (`IFF_UP`), carrier or not.
    pub admin_up: bool,
    /// Resolves neighbours (no `IFF_NOARP`): a veth does, netkit's L3 mode
    /// does not.
    pub arp: bool,
}

/// The main routing table's id.
const RT_TABLE_MAIN: u8 = 254;

/// A kernel IPv4 route as sluice makes them: `dst [via gateway] dev oif
/// [mtu N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelRoute {
    pub dst: ipnetwork::Ipv4Network,
    pub gateway: Option<Ipv4Addr>,
    pub oif: u32,
    /// The route's MTU metric (`RTAX_MTU`): the node's own packets along
    /// it are sized for it (fragments, TCP's MSS) rather than for the
    /// device's MTU.
    pub mtu: Option<u32>,
}

impl KernelRoute {
    pub fn describe(&self) -> String {
        let mtu = self.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
        match self.gateway {
            Some(gw) => format!("{} via {gw} dev #{}{mtu}", self.dst, self.oif),
            None => format!("{} dev #{}{mtu}", self.dst, self.oif),
        }
    }
}

/// The MTU metric among a route's `RTA_METRICS`, if it has one.
pub fn route_mtu(attributes: &[RouteAttribute]) -> Option<u32> {
    attributes.iter().find_map(|a| match a {
        RouteAttribute::Metrics(metrics) => metrics.iter().find_map(|m| match m {
            netlink_packet_route::route::RouteMetric::Mtu(mtu) => Some(*mtu),
            _ => None,
        }),
        _ => None,
    })
}

/// `route`'s message with its MTU metric added, when it has one.
pub fn with_route_mtu(
    mut msg: netlink_packet_route::route::RouteMessage,
    mtu: Option<u32>,
) -> netlink_packet_route::route::RouteMessage {
    if let Some(mtu) = mtu {
        msg.attributes.push(RouteAttribute::Metrics(vec![netlink_packet_route::route::RouteMetric::Mtu(mtu)]));
    }
    msg
}

/// True if `e` is the kernel answering with `errno`.
pub fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.map(|c| c.get()) == Some(-errno))
}

pub(crate) fn link_info(msg: &LinkMessage) -> LinkInfo {
    let flags = &msg.header.flags;
    let up = flags.contains(LinkFlags::Up | LinkFlags::LowerUp);
    let admin_up = flags.contains(LinkFlags::Up);
    let arp = !flags.contains(LinkFlags::Noarp);
    let mut info = LinkInfo { index: msg.header.index, name: String::new(), mtu: 0, mac: [0; 6], up, admin_up, arp };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Mtu(m) => info.mtu = *m,
            LinkAttribute::Address(a) if a.len() == 6 => info.mac.copy_from_slice(a),
            _ => {}
        }
    }
    info
}

impl Netlink {
    /// A connection in the calling thread's current network namespace. Must
    /// be called inside a tokio runtime (the connection task is spawned).
    pub fn open() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("open rtnetlink socket")?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The link called `name`, or `None` if there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_info(&msg))),
            Ok(None) => Ok(None),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("get link {name}")),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_info(&msg))),
            Ok(None) => Ok(None),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("get link #{index}")),
        }
    }

    /// Every link in this namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links.try_next().await.context("list links")? {
            out.push(link_info(&msg));
        }
        Ok(out)
    }

    pub async fn require_link(&self, name: &str) -> Result<LinkInfo> {
        self.link_by_name(name).await?.ok_or_else(|| anyhow!("interface {name} does not exist"))
    }

    /// The first IPv4 address on interface `index`, with its prefix length.
    pub async fn first_ipv4(&self, index: u32) -> Result<Option<(Ipv4Addr, u8)>> {
        let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) = addrs.try_next().await.context("list addresses")? {
            if msg.header.family != AddressFamily::Inet {
                continue;
            }
            for attr in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                    return Ok(Some((*ip, msg.header.prefix_len)));
                }
            }
        }
        Ok(None)
    }

    /// Every IPv4 address on interface `index`, with its prefix length.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut out = Vec::new();
        let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) = addrs.try_next().await.context("list addresses")? {
            for attr in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                    out.push((*ip, msg.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Every IPv4 address of every interface in this namespace.
    pub async fn all_ipv4_addresses(&self) -> Result<Vec<Ipv4Addr>> {
        let mut out = Vec::new();
        let mut addrs = self.handle.address().get().execute();
        while let Some(msg) = addrs.try_next().await.context("list addresses")? {
            for attr in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                    out.push(*ip);
                }
            }
        }
        Ok(out)
    }

    /// Every IPv6 address of every interface of this namespace.
    pub async fn all_ipv6_addresses(&self) -> Result<Vec<std::net::Ipv6Addr>> {
        let mut out = Vec::new();
        let mut addrs = self.handle.address().get().execute();
        while let Some(msg) = addrs.try_next().await.context("list addresses")? {
            for attr in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V6(ip)) = attr {
                    out.push(*ip);
                }
            }
        }
        Ok(out)
    }

    /// The MAC of `ip`'s permanent neighbour entry on interface `index`.
    pub async fn permanent_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<Option<[u8; 6]>> {
        use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
        let mut neighbours = self.handle.neighbours().get().set_address_family(AddressFamily::Inet).execute();
        while let Some(msg) = neighbours.try_next().await.context("list neighbours")? {
            if msg.header.ifindex != index || msg.header.state != NeighbourState::Permanent {
                continue;
            }
            let mut is_ip = false;
            let mut mac = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => is_ip = *a == ip,
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

    /// The interface of the IPv4 default route in the main table, if any.
    pub async fn default_route_interface(&self) -> Result<Option<LinkInfo>> {
        let mut routes = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(msg) = routes.try_next().await.context("list routes")? {
            if msg.header.destination_prefix_length != 0 || msg.header.table != 254 {
                continue;
            }
            for attr in &msg.attributes {
                if let netlink_packet_route::route::RouteAttribute::Oif(index) = attr {
                    return self.link_by_index(*index).await;
                }
            }
        }
        Ok(None)
    }

    /// IPv4 routes of the main table installed with `protocol`: destination
    /// → (gateway, output interface). Routes anyone else made are not listed.
    pub async fn routes_of_protocol(&self, protocol: u8) -> Result<Vec<KernelRoute>> {
        self.main_routes(Some(protocol)).await
    }

    /// IPv4 routes of the main table (of one protocol, or all).
    pub async fn main_routes(&self, protocol: Option<u8>) -> Result<Vec<KernelRoute>> {
        let mut out = Vec::new();
        let mut routes = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(msg) = routes.try_next().await.context("list routes")? {
            let wrong_protocol = protocol.is_some_and(|p| msg.header.protocol != RouteProtocol::Other(p));
            if msg.header.table != RT_TABLE_MAIN || wrong_protocol {
                continue;
            }
            let (mut dst, mut gateway, mut oif) = (Ipv4Addr::UNSPECIFIED, None, 0);
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                    RouteAttribute::Oif(i) => oif = *i,
                    _ => {}
                }
            }
            let Ok(dst) = ipnetwork::Ipv4Network::new(dst, msg.header.destination_prefix_length) else {
                continue;
            };
            out.push(KernelRoute { dst, gateway, oif, mtu: route_mtu(&msg.attributes) });
        }
        Ok(out)
    }

    /// The message that names `route` with `protocol`, to add or delete.
    fn route_message(route: &KernelRoute, protocol: u8) -> netlink_packet_route::route::RouteMessage {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.dst.network(), route.dst.prefix())
            .output_interface(route.oif)
            .protocol(RouteProtocol::Other(protocol));
        let msg = match route.gateway {
            Some(gw) => msg.gateway(gw).build(),
            None => msg.build(),
        };
        with_route_mtu(msg, route.mtu)
    }

    /// `ip route replace <dst> via <gw> dev <oif> proto <protocol>`.
    pub async fn replace_route(&self, route: &KernelRoute, protocol: u8) -> Result<()> {
        let req = self.handle.route().add(Self::route_message(route, protocol)).replace();
        req.execute().await.with_context(|| format!("replace route {}", route.describe()))
    }

    /// Delete a route; one already gone counts as deleted.
    pub async fn delete_route(&self, route: &KernelRoute, protocol: u8) -> Result<()> {
        match self.handle.route().del(Self::route_message(route, protocol)).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENOENT) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("delete route {}", route.describe())),
        }
    }

    /// A veth pair whose `peer` end is created directly in the namespace open
    /// as `ns_fd` (`ip link add <host> mtu <mtu> type veth peer name <peer>
    /// mtu <mtu> netns ..`), up: no later move, which costs a network-wide
    /// RCU wait (~35 ms), and no further MTU or up request for the pod end.
    /// The host end stays down (the kernel cannot open it before the pair is
    /// joined: ENOTCONN).
    pub async fn add_veth_into(&self, host: &str, peer: &str, ns_fd: std::os::fd::RawFd, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .add(veth_into_message(host, peer, ns_fd, mtu))
            .execute()
            .await
            .with_context(|| format!("create veth {host} <-> {peer} (peer in the pod's namespace)"))
    }

    /// A veth pair `name` / `peer` in this namespace (made if missing),
    /// both up, `name` without ARP: what the stack routes to `name` gets
    /// the device's own MAC from its neighbour entry instead of waiting on
    /// an ARP answer nobody gives (the NAT64 device: its egress program
    /// takes every packet; a dummy device would do but is not in every
    /// kernel).
    pub async fn ensure_noarp_veth(&self, name: &str, peer: &str) -> Result<LinkInfo> {
        if self.link_by_name(name).await?.is_none() {
            let msg = LinkVeth::new(name, peer).arp(false).up().build();
            match self.handle.link().add(msg).execute().await {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::EEXIST) => {}
                Err(e) => return Err(e).with_context(|| format!("create veth {name} <-> {peer}")),
            }
        }
        let peer_link = self.require_link(peer).await?;
        self.set_up(peer_link.index).await.with_context(|| format!("set {peer} up"))?;
        let link = self.require_link(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).arp(false).up().build())
            .execute()
            .await
            .with_context(|| format!("set {name} up without ARP"))?;
        Ok(link)
    }

    /// Delete a link; one that is already gone counts as deleted.
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("delete link {name}")),
        }
    }

    /// Rename a link, up or not. Linux before 6.2 refuses to rename a
    /// device that is up (`EBUSY`; a pod's end is made up, see
    /// `veth_into_message`): there it is taken down, renamed and brought
    /// up again, before anything uses it.
    pub async fn set_name(&self, index: u32, name: &str) -> Result<()> {
        let rename =
            || self.handle.link().set(LinkUnspec::new_with_index(index).name(name.to_string()).build()).execute();
        match rename().await {
            Err(e) if is_errno(&e, libc::EBUSY) => {
                self.handle
                    .link()
                    .set(LinkUnspec::new_with_index(index).down().build())
                    .execute()
                    .await
                    .with_context(|| format!("set link down to rename it to {name} (Linux before 6.2)"))?;
                rename().await.with_context(|| format!("rename link to {name} (taken down first)"))?;
                self.set_up(index).await.with_context(|| format!("set {name} up again after renaming it"))
            }
            other => other.with_context(|| format!("rename link to {name}")),
        }
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .with_context(|| format!("set MTU {mtu}"))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await.context("set link up")
    }

    /// Add an address; an address already present counts as added.
    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix_len: u8) -> Result<()> {
        match self.handle.address().add(index, ip, prefix_len).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("add address {ip}/{prefix_len}")),
        }
    }

    /// A scope-link route to `dst/prefix` out of interface `index`.
    pub async fn add_link_route(&self, index: u32, dst: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix_len)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("add route {dst}/{prefix_len} dev #{index}")),
        }
    }

    /// `default via <gw> dev <index>`.
    pub async fn add_default_route(&self, index: u32, gw: Ipv4Addr) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).output_interface(index).build();
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("add default route via {gw}")),
        }
    }

    /// A permanent neighbour entry: `ip` is at `mac` on interface `index`.
    pub async fn add_permanent_neighbour(&self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .with_context(|| format!("add neighbour {ip}"))
    }
}

/// The request of `add_veth_into`: the main message is the pod end `peer`
/// (made in the namespace open as `ns_fd`, up, `mtu`), its peer info the
/// host end `host` (made here, `mtu`). Setting the host end up here fails
/// with ENOTCONN: the kernel opens it only once the pair is joined.
pub fn veth_into_message(host: &str, peer: &str, ns_fd: std::os::fd::RawFd, mtu: u32) -> LinkMessage {
    use netlink_packet_route::link::{InfoData, InfoVeth, LinkInfo as Info};
    let host_msg = LinkUnspec::new_with_name(host).mtu(mtu).build();
    let mut msg = LinkVeth::new(peer, host).mtu(mtu).setns_by_fd(ns_fd).up().build();
    for attr in msg.attributes.iter_mut() {
        if let LinkAttribute::LinkInfo(infos) = attr {
            for info in infos.iter_mut() {
                if let Info::Data(InfoData::Veth(InfoVeth::Peer(p))) = info {
                    *p = host_msg.clone();
                }
            }
        }
    }
    msg
}
