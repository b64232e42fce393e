//! sluice first in a chain with the reference `portmap` and `bandwidth`
//! plugins (Debian's containernetworking-plugins): ADD, CHECK and DEL work,
//! and a hostPort on one node reaches the pod from another node.
use std::process::Stdio;

use serde_json::{json, Value};
use sluice_tests::{
    bin,
    lab::{ns_cmd, ns_exec, Lab, LabOptions, ECHO_PORT},
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
    let sluice_conflist: Value = serde_json::from_slice(&std::fs::read(Lab::conflist_path(&n1)).unwrap()).unwrap();
    let rt = ChainRuntime {
        cni_path: cni_bin_dir(&lab.state.dir.join("cni-bin"), &bin("sluice-cni"), &["portmap", "bandwidth"]).unwrap(),
        conflist: chained_conflist(&sluice_conflist),
        node_netns: n1.netns.clone(),
        // See `ipv4_only_tools`: works around a CHECK bug in Debian's portmap 1.1.1.
        path: ipv4_only_tools(&lab.state.dir.join("v4tools")).unwrap(),
    };
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

fn tcp_probe_port(netns: &str, ip: &str, port: u16) -> Option<String> {
    let target = format!("TCP:{ip}:{port},connect-timeout=2");
    let out = try_run(&mut ns_cmd(netns, &["timeout", "5", "socat", "-T2", "-", &target])).ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
