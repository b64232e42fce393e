//! sluice first in a chain with the reference `portmap` and `bandwidth`
//! plugins (Debian's containernetworking-plugins): ADD, CHECK and DEL work,
//! and a hostPort on one node reaches the pod from another node.
use std::process::Stdio;

use serde_json::{json, Value};
use sluice_tests::{
    bin,
    lab::{ns_cmd, ns_exec, Lab, LabOptions, Node, ECHO_PORT},
    require_root,
    runtime::{chained_conflist, cni_bin_dir, ipv4_only_tools, Attachment, ChainRuntime},
    try_run, Netns,
};

const HOST_PORT: u16 = 30080;

#[test]
fn hostport_through_portmap_reaches_the_pod_and_the_chain_checks_and_deletes() {
    require_root();
    let mut lab = Lab::up(&LabOptions::new(2, 0, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    // A pod on the other node, to reach the hostPort from a pod too.
    let client_pod = lab.add_pod(1, "n2p1").unwrap();
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    // portmap DNATs in the node's stack, which forwards to the pod: Kubernetes
    // nodes run with forwarding on.
    ns_exec(&n1.netns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();
    // See `ipv4_only_tools`: works around a CHECK bug in Debian's portmap 1.1.1.
    let rt = chain_on(&lab, &n1, ipv4_only_tools(&lab.state.dir.join("v4tools")).unwrap());
    let pod_ns = Netns::new("slcp").unwrap();
    let pod = pod_ns.name.clone();
    let att = Attachment {
        container_id: pod.clone(),
        netns: format!("/run/netns/{pod}"),
        ifname: "eth0".into(),
        capabilities: json!({
            "portMappings": [{"hostPort": HOST_PORT, "containerPort": ECHO_PORT, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 1_000_000, "egressRate": 100_000_000, "egressBurst": 1_000_000},
        }),
    };
    let result = rt.add(&att).expect("chained ADD");
    assert!(result["ips"][0]["address"].as_str().unwrap().starts_with("10.244.1."), "{result}");

    let mut listener = pod_ns
        .cmd(&["socat", &format!("TCP-LISTEN:{ECHO_PORT},reuseaddr,fork"), "SYSTEM:echo hostport-ok"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sluice_tests::lab::wait_listening(&pod_ns.name, "tcp", ECHO_PORT).unwrap();
    // From another node, to node 1's address and the host port.
    let reached = tcp_probe_port(&n2.netns, &n1.ip, HOST_PORT);
    // From a pod on another node: portmap's DNAT on n1, the reply back
    // through n1's stack (a stack flow) and n2's.
    let from_pod = tcp_probe_port(&client_pod.netns, &n1.ip, HOST_PORT);
    let _ = listener.kill();
    let _ = listener.wait();
    assert_eq!(reached.as_deref(), Some("hostport-ok"), "hostPort {HOST_PORT} on {} did not reach the pod", n1.ip);
    assert_eq!(from_pod.as_deref(), Some("hostport-ok"), "hostPort from a pod on n2 did not reach the pod on n1");

    rt.check(&att, &result).expect("chained CHECK");
    // bandwidth shaped the host side (an ingress qdisc on the host veth).
    let host_if = result["interfaces"][0]["name"].as_str().unwrap().to_string();
    let qdisc = ns_exec(&n1.netns, &["tc", "qdisc", "show", "dev", &host_if]).unwrap();
    assert!(qdisc.contains("tbf"), "bandwidth did not shape {host_if}: {qdisc}");

    rt.del(&att, Some(&result)).expect("chained DEL");
    let nat = ns_exec(&n1.netns, &["iptables-save", "-t", "nat"]).unwrap();
    assert!(!nat.contains(&HOST_PORT.to_string()), "portmap rules left after DEL:\n{nat}");
    assert!(lab.pod_endpoints(0).unwrap().is_empty());
    drop(lab);
}

/// Issue 28: a hostPort over IPv6 through the reference portmap on a
/// dual-stack node (kube-proxy mode; without it sluice's own hostPort
/// serves IPv4 only). portmap writes ip6tables DNAT rules for the pod's IPv6
/// address; the node's stack forwards to the pod and the pod's replies go
/// back through the stack (`STACK_FLOWS6`), so conntrack reverses the DNAT:
/// from another node and from a pod on another node.
#[test]
fn hostport_through_portmap_over_ipv6_reaches_the_pod_from_a_node_and_a_pod() {
    require_root();
    let mut opts = LabOptions::new(2, 0, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.dual_stack = true;
    let mut lab = Lab::up(&opts).unwrap();
    let client_pod = lab.add_pod(1, "n2p1").unwrap();
    let (n1, n2) = (lab.state.nodes[0].clone(), lab.state.nodes[1].clone());
    let n1_ip6 = n1.ip6.clone().expect("a dual-stack lab's node has an IPv6 address");
    ns_exec(&n1.netns, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]).unwrap();
    // Both families' tools: the pod has an IPv6 address for portmap's
    // ip6tables rules.
    let rt = chain_on(&lab, &n1, "/usr/sbin:/sbin:/usr/bin:/bin".into());
    let pod_ns = Netns::new("slcp6").unwrap();
    let pod = pod_ns.name.clone();
    let att = Attachment {
        container_id: pod.clone(),
        netns: format!("/run/netns/{pod}"),
        ifname: "eth0".into(),
        capabilities: json!({
            "portMappings": [{"hostPort": HOST_PORT, "containerPort": ECHO_PORT, "protocol": "tcp"}],
        }),
    };
    let result = rt.add(&att).expect("chained ADD");
    let ips: Vec<&str> = result["ips"].as_array().unwrap().iter().filter_map(|ip| ip["address"].as_str()).collect();
    assert!(ips.iter().any(|a| a.contains(':')), "an IPv6 address for the pod: {result}");

    let mut listener = pod_ns
        .cmd(&["socat", &format!("TCP6-LISTEN:{ECHO_PORT},reuseaddr,fork"), "SYSTEM:echo hostport6-ok"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sluice_tests::lab::wait_listening(&pod_ns.name, "tcp", ECHO_PORT).unwrap();
    let target = format!("[{n1_ip6}]");
    let reached = tcp_probe_port(&n2.netns, &target, HOST_PORT);
    let from_pod = tcp_probe_port(&client_pod.netns, &target, HOST_PORT);
    let _ = listener.kill();
    let _ = listener.wait();
    assert_eq!(reached.as_deref(), Some("hostport6-ok"), "hostPort {HOST_PORT} on [{n1_ip6}] did not reach the pod");
    assert_eq!(from_pod.as_deref(), Some("hostport6-ok"), "IPv6 hostPort from a pod on n2 did not reach the pod on n1");

    // No CHECK here: Debian's portmap 1.1.1 compares a dual-stack pod's IPv6
    // DNAT chain with its IPv4 rules and reports them missing ("could not
    // check ipv6 dnat: rule [... --to-destination 10.244.1.2:7777] ... not
    // found"), a bug of that release (see `ipv4_only_tools`); CHECK of the
    // chain is covered over IPv4 above.
    rt.del(&att, Some(&result)).expect("chained DEL");
    let nat = ns_exec(&n1.netns, &["ip6tables-save", "-t", "nat"]).unwrap();
    assert!(!nat.contains(&HOST_PORT.to_string()), "portmap's IPv6 rules left after DEL:\n{nat}");
    drop(lab);
}

/// sluice's conflist of `node` with portmap and bandwidth chained after it,
/// run in the node's namespace with the tools on `path`.
fn chain_on(lab: &Lab, node: &Node, path: String) -> ChainRuntime {
    let sluice_conflist: Value = serde_json::from_slice(&std::fs::read(Lab::conflist_path(node)).unwrap()).unwrap();
    ChainRuntime {
        cni_path: cni_bin_dir(&lab.state.dir.join("cni-bin"), &bin("sluice-cni"), &["portmap", "bandwidth"]).unwrap(),
        conflist: chained_conflist(&sluice_conflist),
        node_netns: node.netns.clone(),
        path,
    }
}

fn tcp_probe_port(netns: &str, ip: &str, port: u16) -> Option<String> {
    let target = format!("TCP:{ip}:{port},connect-timeout=2");
    let out = try_run(&mut ns_cmd(netns, &["timeout", "5", "socat", "-T2", "-", &target])).ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
