//! The kubelet's path: containerd's CRI plugin runs sluice exactly as on a
//! Kubernetes node. A test kubelet (`sluice_tests::cri`) asks containerd
//! 1.6 for pod sandboxes over CRI; containerd loads the conflist the agent
//! wrote, runs `sluice-cni` (and `portmap` for hostPorts) with the pod's
//! CNI_ARGS, reports the address, and calls DEL when the sandbox stops,
//! also after containerd itself was restarted.
use std::{
    collections::HashMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    bin,
    cri::{api::SANDBOX_READY, CriClient, PodSpec},
    kubelet::{build_images, CriNode, BUSYBOX_IMAGE},
    lab::{ns_cmd, ns_exec, Lab, LabOptions, Node},
    require_root,
    runtime::cni_bin_dir,
    try_run, unique,
};

/// The port each pod's container answers on with its hostname.
const POD_PORT: u16 = 8080;
const HOST_PORT: u16 = 30080;
const NAMESPACE: &str = "sluice-e2e";

/// A lab, and containerd with CRI on each of its nodes. Fields drop in
/// order: containerd (and every pod it runs) before the lab.
struct Cluster {
    cri: Vec<CriNode>,
    lab: Lab,
}

fn cluster(nodes: usize) -> Cluster {
    let mut opts = LabOptions::new(nodes, 0, bin("sluice-agent").parent().unwrap().to_path_buf());
    // hostPorts: the conflist chains portmap after sluice.
    opts.extra_agent_args = vec!["--host-ports".into()];
    let lab = Lab::up(&opts).unwrap();
    let images = lab.state.dir.join("images");
    let (pause, busybox) = build_images(&images).unwrap();
    let cni_bin = cni_bin_dir(&lab.state.dir.join("cni-bin"), &bin("sluice-cni"), &["loopback", "portmap"]).unwrap();
    let mut cri = Vec::new();
    for node in &lab.state.nodes {
        // Kubernetes nodes forward (portmap's DNAT goes through the node's stack).
        ns_exec(&node.netns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();
        // The agent's own --cni-conf-dir is what containerd loads.
        let c = CriNode::start(node, &lab.state.id, &node.dir.join("cni"), &cni_bin).unwrap();
        c.import(&pause).unwrap();
        c.import(&busybox).unwrap();
        cri.push(c);
    }
    Cluster { cri, lab }
}

fn pod_spec(c: &CriNode, name: &str, host_ports: &[(u16, u16)]) -> PodSpec {
    let uid = unique("uid-");
    let log_directory = c.pod_log_dir(name);
    std::fs::create_dir_all(&log_directory).unwrap();
    PodSpec {
        name: name.into(),
        namespace: NAMESPACE.into(),
        hostname: name.into(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        host_ports: host_ports.to_vec(),
        cgroup_parent: format!("{}/pod{uid}", c.cgroup_root),
        log_directory: log_directory.display().to_string(),
        uid,
    }
}

/// A running pod: its sandbox and one busybox container answering on
/// `POD_PORT` with its hostname.
struct RunningPod {
    spec: PodSpec,
    sandbox: String,
    container: String,
    ip: String,
}

fn run_pod(client: &CriClient, spec: PodSpec) -> RunningPod {
    let config = spec.sandbox_config();
    let started = Instant::now();
    let sandbox = client.run_pod_sandbox(config.clone()).unwrap_or_else(|e| panic!("RunPodSandbox {}: {e}", spec.name));
    eprintln!("RunPodSandbox {}: {:?}", spec.name, started.elapsed());
    let serve = format!("while true; do hostname | nc -l -p {POD_PORT}; done");
    let container = client
        .start_container(&sandbox, &config, "web", BUSYBOX_IMAGE, &["sh", "-c", &serve])
        .unwrap_or_else(|e| panic!("start container in {}: {e}", spec.name));
    let ip = sandbox_ip(client, &sandbox);
    RunningPod { spec, sandbox, container, ip }
}

/// The pod IP containerd reports (from the CNI result it parsed).
fn sandbox_ip(client: &CriClient, sandbox: &str) -> String {
    let status = client.pod_sandbox_status(sandbox).unwrap().status.unwrap();
    assert_eq!(status.state, SANDBOX_READY, "sandbox {sandbox} not ready: {status:?}");
    status.network.map(|n| n.ip).unwrap_or_default()
}

/// `sluice-agent status --json --pods` on `node`.
fn status_pods(node: &Node) -> Value {
    let out = try_run(Command::new(bin("sluice-agent")).args([
        "status",
        "--json",
        "--pods",
        "--pin-dir",
        &node.pin_dir.display().to_string(),
        "--data-dir",
        &Lab::data_dir(node).display().to_string(),
    ]))
    .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --pods: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn host_veth_exists(node: &Node, sandbox: &str) -> bool {
    let veth = sluice_node::pod::names::host_veth(sandbox, "eth0");
    try_run(&mut ns_cmd(&node.netns, &["ip", "link", "show", "dev", &veth]))
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn lease_files(node: &Node) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for cidr in std::fs::read_dir(Lab::data_dir(node).join("ipam")).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(cidr.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.parse::<std::net::Ipv4Addr>().is_ok() {
                out.push((name, std::fs::read_to_string(f.path()).unwrap_or_default()));
            }
        }
    }
    out
}

/// TCP to `ip:port` from the node's namespace; what came back.
fn tcp_from_node(node: &Node, ip: &str, port: u16) -> String {
    let target = format!("TCP:{ip}:{port},connect-timeout=2");
    let out = try_run(&mut ns_cmd(&node.netns, &["timeout", "5", "socat", "-T2", "-", &target])).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Run in the container until the listener answers (it starts a moment after StartContainer).
fn exec_until(client: &CriClient, container: &str, cmd: &[&str], want: &str) -> String {
    let start = Instant::now();
    loop {
        let out = client.exec(container, cmd, 10).unwrap();
        if out.exit_code == 0 && out.stdout.trim() == want {
            return out.stdout;
        }
        if start.elapsed() > Duration::from_secs(10) {
            panic!("{cmd:?} in {container}: exit {} stdout {:?} stderr {:?}", out.exit_code, out.stdout, out.stderr);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_torn_down(lab: &Lab, i: usize, pod: &RunningPod) {
    let node = &lab.state.nodes[i];
    assert!(
        !lease_files(node).iter().any(|(ip, _)| *ip == pod.ip),
        "{}: lease of {} left after StopPodSandbox",
        pod.spec.name,
        pod.ip
    );
    assert!(!lab.pod_endpoints(i).unwrap().contains(&pod.ip), "{}: endpoint entry left", pod.spec.name);
    assert!(!host_veth_exists(node, &pod.sandbox), "{}: host veth left", pod.spec.name);
}

#[test]
fn pods_on_two_nodes_reach_each_other_and_a_host_port_and_are_torn_down_also_after_a_containerd_restart() {
    require_root();
    let started = Instant::now();
    let mut c = cluster(2);
    eprintln!("lab + 2 containerd with CRI + images: {:?}", started.elapsed());
    let (n1, n2) = (c.lab.state.nodes[0].clone(), c.lab.state.nodes[1].clone());
    let (cri1, cri2) = (c.cri[0].client().unwrap(), c.cri[1].client().unwrap());
    let v = cri1.version().unwrap();
    assert_eq!(v.runtime_name, "containerd");
    assert_eq!(v.runtime_api_version, "v1");
    // containerd found the agent's conflist.
    assert!(cri1.conditions().unwrap()["NetworkReady"].status, "{:?}", cri1.conditions());

    let a = run_pod(&cri1, pod_spec(&c.cri[0], "web-a", &[(POD_PORT, HOST_PORT)]));
    let b = run_pod(&cri2, pod_spec(&c.cri[1], "web-b", &[]));

    // Addresses from each node's pod CIDR, as containerd reports them.
    let cidr = |n: &Node| n.pod_cidr.parse::<ipnetwork::Ipv4Network>().unwrap();
    for (pod, node) in [(&a, &n1), (&b, &n2)] {
        let ip: std::net::Ipv4Addr = pod.ip.parse().unwrap_or_else(|_| panic!("{}: no IP reported", pod.spec.name));
        assert!(cidr(node).contains(ip), "{} got {ip}, outside {}", pod.spec.name, node.pod_cidr);
        // The pod's own eth0 holds the address containerd reported.
        let out = cri_client(&c, node).exec(&pod.container, &["ip", "-4", "addr", "show", "dev", "eth0"], 10).unwrap();
        assert!(out.stdout.contains(&format!("inet {ip}/32")), "{}: eth0 {}", pod.spec.name, out.stdout);
        // The lease names the sandbox, eth0 and the pod (CNI_ARGS).
        let lease = lease_files(node).into_iter().find(|(l, _)| *l == pod.ip).map(|(_, t)| t).unwrap_or_default();
        assert_eq!(lease, format!("{}\neth0\n{NAMESPACE}/{}\n", pod.sandbox, pod.spec.name));
        assert!(host_veth_exists(node, &pod.sandbox));
        // containerd parsed sluice's result (go-cni keeps it per interface)
        // and gave the plugin the namespace it made.
        let client = cri_client(&c, node);
        let info = client.pod_sandbox_status(&pod.sandbox).unwrap().info.remove("info").unwrap_or_default();
        let info: Value = serde_json::from_str(&info).unwrap_or(Value::Null);
        let eth0 = &info["cniResult"]["Interfaces"]["eth0"];
        assert_eq!(eth0["IPConfigs"][0]["IP"], pod.ip.as_str(), "cniResult: {}", info["cniResult"]);
        assert_eq!(eth0["IPConfigs"][0]["Gateway"], "169.254.1.1");
        let netns = cri_node(&c, node).cri_state_dir().join("netns");
        assert!(eth0["Sandbox"].as_str().is_some_and(|p| Path::new(p).starts_with(&netns)), "{eth0}");
    }
    // `status --pods` shows the pods by name.
    for (pod, node) in [(&a, &n1), (&b, &n2)] {
        let s = status_pods(node);
        let row = s["pods"].as_array().unwrap().iter().find(|r| r["ip"] == pod.ip.as_str()).cloned();
        let row = row.unwrap_or_else(|| panic!("{} not in status --pods: {s}", pod.spec.name));
        assert_eq!(row["pod"], format!("{NAMESPACE}/{}", pod.spec.name));
        assert_eq!(row["containerID"], pod.sandbox.as_str());
        assert_eq!(row["endpoint"], true);
    }
    let text = sluice_tests::run(Command::new(bin("sluice-agent")).args([
        "status",
        "--pods",
        "--pin-dir",
        &n1.pin_dir.display().to_string(),
        "--data-dir",
        &Lab::data_dir(&n1).display().to_string(),
    ]))
    .unwrap();
    eprintln!("{}", text.lines().skip_while(|l| !l.starts_with("pods (")).collect::<Vec<_>>().join("\n"));

    // Container to container across nodes, both ways: ICMP and TCP.
    for (from, from_client, to) in [(&a, &cri1, &b), (&b, &cri2, &a)] {
        let out = from_client.exec(&from.container, &["ping", "-c", "2", "-W", "2", &to.ip], 15).unwrap();
        assert_eq!(out.exit_code, 0, "{} -> {} ping: {}{}", from.spec.name, to.spec.name, out.stdout, out.stderr);
        let port = POD_PORT.to_string();
        exec_until(from_client, &from.container, &["nc", "-w", "2", &to.ip, &port], &to.spec.name);
    }
    // The hostPort on n1 reaches web-a from the other node, and from a pod there.
    assert_eq!(tcp_from_node(&n2, &n1.ip, HOST_PORT), "web-a", "hostPort {HOST_PORT} on {} from n2", n1.ip);
    exec_until(&cri2, &b.container, &["nc", "-w", "2", &n1.ip, &HOST_PORT.to_string()], "web-a");

    // containerd restarts (crash) between run and stop: it still knows the
    // pod, and its DEL (from go-cni's cached result) tears everything down.
    drop(cri1);
    c.cri[0].kill_containerd();
    c.cri[0].start_containerd().unwrap();
    let cri1 = c.cri[0].client().unwrap();
    assert_eq!(sandbox_ip(&cri1, &a.sandbox), a.ip, "containerd forgot web-a's address after a restart");

    for (pod, client, i) in [(&a, &cri1, 0), (&b, &cri2, 1)] {
        let t = Instant::now();
        client.stop_pod_sandbox(&pod.sandbox).unwrap();
        eprintln!("StopPodSandbox {}: {:?}", pod.spec.name, t.elapsed());
        assert_torn_down(&c.lab, i, pod);
        client.remove_pod_sandbox(&pod.sandbox).unwrap();
        assert!(client.list_pod_sandbox().unwrap().is_empty());
    }
    let nat = ns_exec(&n1.netns, &["iptables-save", "-t", "nat"]).unwrap();
    assert!(!nat.contains(&HOST_PORT.to_string()), "portmap's DNAT left after the pod stopped:\n{nat}");
    assert!(tcp_from_node(&n2, &n1.ip, HOST_PORT).is_empty());
    drop((cri1, cri2));
    eprintln!("whole test: {:?}", started.elapsed());
}

fn cri_node<'a>(c: &'a Cluster, node: &Node) -> &'a CriNode {
    c.cri.iter().find(|x| x.node.name == node.name).unwrap()
}

fn cri_client(c: &Cluster, node: &Node) -> CriClient {
    cri_node(c, node).client().unwrap()
}

#[test]
fn run_pod_sandbox_fails_with_sluices_message_until_the_agent_is_up() {
    require_root();
    let started = Instant::now();
    let mut c = cluster(1);
    let n1 = c.lab.state.nodes[0].clone();
    let data_dir = Lab::data_dir(&n1);
    // As after a reboot: the conflist is still in the runtime's directory,
    // bpffs is empty and the agent has not started yet.
    c.lab.kill_agent(0).unwrap();
    std::fs::remove_dir_all(&n1.pin_dir).unwrap();
    assert!(Lab::conflist_path(&n1).exists());
    let adds_refused =
        |d: &Path| sluice_node::cni_stats::read(d).verbs.get("ADD").and_then(|v| v.codes.get(&11).copied());
    assert_eq!(adds_refused(&data_dir), None);

    let client = c.cri[0].client().unwrap();
    let spec = pod_spec(&c.cri[0], "early", &[]);
    let err = client.run_pod_sandbox(spec.sandbox_config()).expect_err("RunPodSandbox with no datapath");
    eprintln!("RunPodSandbox before the agent is up: {:?}: {}", err.code(), err.message());
    // containerd's error carries the plugin's message (the CNI error's msg
    // and details), and the plugin answered code 11: try again later.
    assert!(
        err.message().contains("sluice datapath not ready on this node; try again later"),
        "containerd said: {err}"
    );
    assert_eq!(adds_refused(&data_dir), Some(1), "{:?}", sluice_node::cni_stats::read(&data_dir));
    // Nothing left behind: no address, no sandbox.
    assert!(lease_files(&n1).is_empty(), "{:?}", lease_files(&n1));
    assert!(client.list_pod_sandbox().unwrap().iter().all(|s| s.state != SANDBOX_READY));

    // The agent comes up: the kubelet's retry succeeds.
    c.lab.start_agent(0).unwrap();
    c.lab.wait_agent_ready(0).unwrap();
    let pod = run_pod(&client, pod_spec(&c.cri[0], "early", &[]));
    let ip: std::net::Ipv4Addr = pod.ip.parse().unwrap();
    assert!(n1.pod_cidr.parse::<ipnetwork::Ipv4Network>().unwrap().contains(ip));
    let start = Instant::now();
    while tcp_from_node(&n1, &pod.ip, POD_PORT) != "early" {
        assert!(start.elapsed() < Duration::from_secs(10), "pod {} does not answer from its node", pod.ip);
        std::thread::sleep(Duration::from_millis(200));
    }
    client.stop_pod_sandbox(&pod.sandbox).unwrap();
    assert_torn_down(&c.lab, 0, &pod);
    client.remove_pod_sandbox(&pod.sandbox).unwrap();
    eprintln!("whole test: {:?}", started.elapsed());
}
