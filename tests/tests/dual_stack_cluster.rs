//! The cluster matrix over both families (issue 28): what `cargo xtask lab
//! up --ip-family dual` prints and must see all reached. On a dual-stack
//! lab with the cluster model (a world with IPv6, host-network servers on
//! both families, the demo Services dual-stack through kube-proxy's
//! iptables and ip6tables rules), every pod and node reaches every pod,
//! every node's host server (which sees the source's own address), the
//! demo Service over TCP and UDP, and the world (masqueraded to the node's
//! address), over IPv4 and over IPv6; also across the VXLAN router lab,
//! whose router forwards both families between the node networks but
//! knows no pod CIDR.
//!
//! Named after upstream's test/e2e/network/dual_stack.go cases the matrix
//! covers: "should function for pod-Service: http/udp", "should function
//! for node-Service: http/udp", "should function for endpoint-Service:
//! http/udp" (a backend reaching its own Service), "should function for
//! node-pod communication: http", "should be able to reach pod on ipv4 and
//! ipv6 ip".
use sluice_tests::{
    bin,
    cluster::{ClusterMatrix, IpFamily},
    lab::{Lab, LabOptions},
    require_root,
};

fn cluster_lab(nodes: usize, subnets: usize) -> Lab {
    require_root();
    let mut opts = LabOptions::new(nodes, 1, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.dual_stack = true;
    opts.cluster_model = true;
    opts.subnets = subnets;
    Lab::up(&opts).expect("dual-stack lab with the cluster model")
}

/// Both matrices of `lab`, each printed, each with every source to every
/// other pod and node, the Service and the world.
fn both_matrices(lab: &Lab) -> [ClusterMatrix; 2] {
    [IpFamily::V4, IpFamily::V6].map(|family| {
        let m = ClusterMatrix::probe_family(lab, family);
        eprint!("{}", m.render());
        let sources = lab.state.nodes.len() * 2;
        assert_eq!(m.rows.len(), sources, "{}: every pod and node is a source", family.name());
        assert_eq!(m.cells.len(), sources * (sources - 1 + 2), "{}: every path probed", family.name());
        m
    })
}

/// The cells of `m` in `row` whose column is in `columns`, failed ones.
fn failed_in(m: &ClusterMatrix, rows: &[&str], columns: &[&str]) -> Vec<String> {
    m.cells
        .iter()
        .filter(|((r, c), cell)| rows.contains(&r.as_str()) && columns.contains(&c.as_str()) && cell.contains('!'))
        .map(|((r, c), cell)| format!("{r} → {c}: {cell}"))
        .collect()
}

#[test]
fn should_function_for_pod_service_node_service_endpoint_service_and_node_pod_communication_on_both_families() {
    let lab = cluster_lab(2, 1);
    let [m4, m6] = both_matrices(&lab);
    let (pods, nodes) = (["n1p1", "n2p1"], ["n1", "n2"]);
    // Named groups first, so a failure says which upstream case broke.
    assert_eq!(failed_in(&m6, &pods, &["svc"]), Vec::<String>::new(), "pod-Service and endpoint-Service over IPv6");
    assert_eq!(failed_in(&m6, &nodes, &["svc"]), Vec::<String>::new(), "node-Service over IPv6");
    assert_eq!(failed_in(&m6, &nodes, &pods), Vec::<String>::new(), "node-pod communication over IPv6");
    assert_eq!(failed_in(&m6, &pods, &nodes), Vec::<String>::new(), "pod-node (host servers) over IPv6");
    assert_eq!(failed_in(&m6, &pods, &pods), Vec::<String>::new(), "pod-pod over IPv6");
    assert!(m6.all_ok(), "IPv6:\n{}", m6.render());
    assert!(m4.all_ok(), "IPv4:\n{}", m4.render());
}

/// The same over the VXLAN router lab: n1, n2 on one network, n3 on the
/// other; the router forwards both families between the node networks
/// and knows nothing of pod CIDRs, so the pods' IPv6 between the networks
/// crosses inside VXLAN over IPv4 while node addresses are routed
/// natively. Both families reach everything: pods every pod and the
/// Service; nodes the pods behind the router (the node's own packets
/// leave through the tunnel from its tunnel source, an address of its own
/// IPv6 pod CIDR on the VXLAN device, the tunneled routes' `src`, which
/// the far node lets in and answers through the tunnel); pods and nodes
/// every node's IPv6 address and the world across the router (a node's
/// answer to a pod behind the router comes back through the tunnel from
/// the node's own address, which the pod's node lets into its stack as
/// IPv4 does); n3 the Service's IPv6 ClusterIP (kube-proxy's DNAT on n3,
/// the backend through the tunnel, from n3's address).
#[test]
fn should_function_for_node_pod_communication_over_ipv6_across_the_vxlan_router() {
    let lab = cluster_lab(3, 2);
    let [m4, m6] = both_matrices(&lab);
    assert!(m4.all_ok(), "IPv4:\n{}", m4.render());
    let pods = ["n1p1", "n2p1", "n3p1"];
    assert_eq!(failed_in(&m6, &pods, &pods), Vec::<String>::new(), "pod-pod over IPv6 across the router");
    assert_eq!(failed_in(&m6, &pods, &["svc"]), Vec::<String>::new(), "pod-Service over IPv6 across the router");
    assert_eq!(
        failed_in(&m6, &["n1", "n2", "n3"], &pods),
        Vec::<String>::new(),
        "node-pod communication over IPv6 across the router"
    );
    assert_eq!(
        failed_in(&m6, &["n1p1", "n2p1", "n3p1", "n1", "n2", "n3"], &["n1", "n2", "n3"]),
        Vec::<String>::new(),
        "pod-node and node-node over IPv6 across the router"
    );
    assert_eq!(failed_in(&m6, &["n3p1", "n3"], &["world"]), Vec::<String>::new(), "the world over IPv6 from n3");
    assert_eq!(failed_in(&m6, &["n3"], &["svc"]), Vec::<String>::new(), "node-Service over IPv6 from n3");
    assert!(m6.all_ok(), "IPv6:\n{}", m6.render());

    // The tunnel source is n1's own IPv6 pod CIDR's network address, on
    // the VXLAN device, taken only through the tunneled routes: n1's own
    // packets to its local pod and to the world keep its uplink's address.
    let n1 = &lab.state.nodes[0];
    let n1_ip6 = n1.ip6.as_deref().unwrap();
    let source_to = |ip: &str| {
        let route = sluice_tests::lab::ns_exec(&n1.netns, &["ip", "-6", "route", "get", ip]).unwrap();
        // The last "src" (an encap route shows its tunnel's "src 0.0.0.0" first).
        route.rsplit(" src ").next().and_then(|r| r.split_whitespace().next()).unwrap_or_default().to_string()
    };
    let pod_ip6 = |node: usize| lab.state.nodes[node].pods[0].ip6.clone().unwrap();
    assert_eq!(source_to(&pod_ip6(2)), "fd00:244:0:1::", "n1 -> n3p1 (through the tunnel)");
    assert_eq!(source_to(&pod_ip6(0)), n1_ip6, "n1 -> its own pod");
    assert_eq!(source_to(&pod_ip6(1)), n1_ip6, "n1 -> n2p1 (natively)");
    assert_eq!(source_to(sluice_tests::cluster::WORLD_IP6), n1_ip6, "n1 -> the world");

    // connectivity-test on n1 probes n3 over IPv6 too: its health
    // endpoint through the tunnel (its IPv6 route is an encap route, no
    // gateway), from n1's health endpoint and from n1 itself, and n3's own
    // IPv6 address (from the agent's state: the route names only n3's
    // IPv4) from the health endpoint, as a host and on the demo NodePort.
    let node_port = sluice_tests::cluster::DEMO_NODE_PORT.to_string();
    let (_, v) = lab.connectivity_test(0, &["--node-port", &node_port]).unwrap();
    let n3_rows6 = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["target"]["node"] == "n3" && r["target"]["ip"].as_str().unwrap().contains(':'))
        .map(|r| (r["target"]["class"].as_str().unwrap(), r["target"]["path"].as_str(), r["ok"] == true))
        .collect::<Vec<_>>();
    let vxlan = Some("vxlan");
    assert_eq!(
        n3_rows6,
        [
            ("pod-to-pod", vxlan, true),
            ("pod-to-host", vxlan, true),
            ("host-to-pod", vxlan, true),
            ("pod-to-nodeport", vxlan, true)
        ],
        "n3's IPv6 rows: {v:#}"
    );
}
