//! Foundation: the first program in the kernel. Attach `count_packets` with
//! the agent's loader to one end of a veth between two namespaces, send real
//! pings, and read the per-CPU counter back.
use sluice_common::maps::programs;
use sluice_node::{
    datapath::{links, pinned_maps as maps, pins::PinDir, Datapath},
    net::netns,
};
use sluice_tests::{ifindex, mac, ping_received, require_root, Netns, PinDirGuard};

const SENT: u32 = 7;

#[test]
fn count_packets_counts_every_ping_and_stops_when_detached() {
    require_root();
    let a = Netns::new("slA").unwrap();
    let b = Netns::new("slB").unwrap();
    let pin_guard = PinDirGuard::new().unwrap();
    let pins = PinDir::new(&pin_guard.path);

    // a: veth0 10.99.0.1  <->  b: veth0 10.99.0.2, static neighbours so the
    // only packets are our pings.
    sluice_tests::sh(
        "ip",
        &["link", "add", "veth0", "netns", &a.name, "type", "veth", "peer", "name", "veth0", "netns", &b.name],
    )
    .unwrap();
    for (ns, ip) in [(&a, "10.99.0.1/24"), (&b, "10.99.0.2/24")] {
        ns.exec(&["ip", "addr", "add", ip, "dev", "veth0"]).unwrap();
        ns.exec(&["ip", "link", "set", "veth0", "up"]).unwrap();
    }
    let mac = |ns: &Netns| mac(ns, "veth0").unwrap();
    a.exec(&["ip", "neigh", "replace", "10.99.0.2", "lladdr", &mac(&b), "dev", "veth0", "nud", "permanent"]).unwrap();
    b.exec(&["ip", "neigh", "replace", "10.99.0.1", "lladdr", &mac(&a), "dev", "veth0", "nud", "permanent"]).unwrap();
    let b_ifindex = ifindex(&b, "veth0").unwrap();

    // Load and attach inside b's network namespace; pins land on the root bpffs.
    let attach_pins = pins.clone();
    netns::run_in(&b.path(), move || {
        let mut dp = Datapath::load(&attach_pins)?;
        dp.attach(programs::COUNT_PACKETS, "veth0")
    })
    .unwrap();
    let link_pin = pins.link(programs::COUNT_PACKETS, "veth0");
    assert!(link_pin.exists(), "link pinned at {}", link_pin.display());

    let ping = |n: u32| {
        let out = a.exec(&["ping", "-c", &n.to_string(), "-i", "0.01", "-W", "1", "10.99.0.2"]).unwrap();
        assert_eq!(ping_received(&out), Some(n), "ping output: {out}");
    };
    let before = maps::iface_packets(&pins, b_ifindex).unwrap();
    ping(SENT);
    let after = maps::iface_packets(&pins, b_ifindex).unwrap();
    assert_eq!(after - before, SENT as u64, "counter moved by the number of echo requests sent");

    // The loader process is gone (its thread ended), the pinned link keeps
    // the program attached: more pings still count.
    ping(3);
    assert_eq!(maps::iface_packets(&pins, b_ifindex).unwrap(), after + 3);

    // Detach (remove the link pin): the counter must stop, which shows the
    // assertions above depend on the program being attached.
    links::unpin_link(&link_pin).unwrap();
    let detached = maps::iface_packets(&pins, b_ifindex).unwrap();
    ping(SENT);
    assert_eq!(maps::iface_packets(&pins, b_ifindex).unwrap(), detached, "no counting once detached");
}
