//! The VXLAN device module (issue 15) against the kernel: created external
//! (collect_md) on UDP 8472 over the uplink with no VNI, kept as is when
//! asked again (an agent restart), made again when someone else's device
//! has the name, deleted.
use sluice_node::net::{netns, vxlan};
use sluice_tests::{require_root, Netns};

type Step = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<(u32, u32)>>>>;

#[test]
fn vxlan_device_is_external_on_8472_kept_and_recreated() {
    require_root();
    let ns = Netns::new("slVx").unwrap();
    // A veth pair stands in for the uplink (no dummy module here).
    ns.exec(&["ip", "link", "add", "up0", "mtu", "1400", "type", "veth", "peer", "name", "up1", "mtu", "1400"])
        .unwrap();
    for dev in ["up0", "up1"] {
        ns.exec(&["ip", "link", "set", dev, "up"]).unwrap();
    }
    let uplink = sluice_tests::ifindex(&ns, "up0").unwrap();
    let run = |f: fn(sluice_node::net::netlink::Netlink, u32) -> _| {
        netns::run_in(&ns.path(), move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let nl = sluice_node::net::netlink::Netlink::open()?;
                f(nl, uplink).await
            })
        })
    };
    fn ensure(nl: sluice_node::net::netlink::Netlink, uplink: u32) -> Step {
        Box::pin(async move {
            let link = nl.ensure_vxlan(vxlan::DEVICE, uplink).await?;
            assert_eq!(nl.vxlan_mismatches(vxlan::DEVICE, uplink).await?, Some(vec![]));
            Ok((link.index, link.mtu))
        })
    }
    let (first, mtu) = run(ensure).unwrap();
    assert_eq!(mtu, 1400 - 50, "the kernel sizes it from the lower device");
    let details = ns.exec(&["ip", "-d", "link", "show", vxlan::DEVICE]).unwrap();
    assert!(details.contains("vxlan external"), "{details}");
    assert!(details.contains("dstport 8472"), "{details}");
    assert!(details.contains("dev up0"), "{details}");
    // iproute2 shows an external device as `id 0` (as for `ip link add vx0
    // type vxlan external dstport 8472`): no VNI of its own.
    assert!(details.contains("vxlan external id 0 "), "no VNI of its own: {details}");
    assert!(details.contains("NOARP") && details.contains(",UP,"), "{details}");

    // Again: the same device (a restart keeps it).
    let (again, _) = run(ensure).unwrap();
    assert_eq!(again, first, "kept, not recreated");

    // A foreign device of that name (fixed VNI, other port) is replaced.
    ns.exec(&["ip", "link", "del", vxlan::DEVICE]).unwrap();
    ns.exec(&["ip", "link", "add", vxlan::DEVICE, "type", "vxlan", "id", "42", "dstport", "4789", "dev", "up0"])
        .unwrap();
    let (replaced, _) = run(ensure).unwrap();
    let details = ns.exec(&["ip", "-d", "link", "show", vxlan::DEVICE]).unwrap();
    assert!(details.contains("vxlan external") && details.contains("dstport 8472"), "{details}");
    let _ = replaced;

    // Deleted; deleting again is fine.
    fn delete(nl: sluice_node::net::netlink::Netlink, uplink: u32) -> Step {
        Box::pin(async move {
            nl.delete_link(vxlan::DEVICE).await?;
            nl.delete_link(vxlan::DEVICE).await?;
            assert_eq!(nl.vxlan_mismatches(vxlan::DEVICE, uplink).await?, None);
            Ok((0, 0))
        })
    }
    run(delete).unwrap();
    assert!(ns.exec(&["ip", "link", "show", vxlan::DEVICE]).is_err());
}
