//! The deployment, checked offline (no cluster runs here): manifests against
//! the Kubernetes OpenAPI schemas (kubernetes-validate, pinned), manifests
//! against the code (image name, paths, RBAC), the agent run with exactly the
//! DaemonSet's command and environment in the lab, the image under a real
//! runtime, and uninstall cleanup.
use std::{path::PathBuf, process::Command, sync::Arc};

mod manifest;

use manifest::{added_capabilities, daemonset_command, docs, find, repo, strings, venv_bin};
use serde_json::Value;
use sluice_tests::{
    bin,
    containerd::Containerd,
    lab::{ns_exec, Lab, LabOptions},
    oci, require_root, run, try_run, unique,
};

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let validate = |files: &[PathBuf]| {
        let mut c = Command::new(venv_bin("kubernetes-validate"));
        c.args(["--strict", "-k", "1.33.0"]).args(files);
        try_run(&mut c).unwrap()
    };
    let files = [repo().join("deploy/sluice.yaml"), repo().join("deploy/cleanup.yaml")];
    let out = validate(&files);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // The validator can fail: a misspelt field must be rejected.
    let broken = std::env::temp_dir().join(format!("{}.yaml", unique("sluice-broken-")));
    let text = std::fs::read_to_string(&files[0]).unwrap().replace("hostNetwork: true", "hostNetwerk: true");
    std::fs::write(&broken, text).unwrap();
    let bad = validate(std::slice::from_ref(&broken));
    let _ = std::fs::remove_file(&broken);
    assert!(!bad.status.success(), "a misspelt field passed validation");
}

#[test]
fn manifests_agree_with_the_code() {
    let d = docs("sluice.yaml");
    let ds = find(&d, "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    let containers: Vec<&Value> =
        spec["containers"].as_array().unwrap().iter().chain(spec["initContainers"].as_array().unwrap()).collect();
    for c in &containers {
        assert_eq!(c["image"], oci::SLUICE_IMAGE, "image of {} is what `cargo xtask image` builds", c["name"]);
    }
    assert_eq!(
        find(&docs("cleanup.yaml"), "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["image"],
        oci::SLUICE_IMAGE
    );
    let volumes = spec["volumes"].as_array().unwrap();
    let host_path = |name: &str| -> String {
        volumes.iter().find(|v| v["name"] == name).unwrap()["hostPath"]["path"].as_str().unwrap().to_string()
    };
    let agent = spec["containers"].as_array().unwrap().iter().find(|c| c["name"] == "agent").unwrap();
    let mounts = agent["volumeMounts"].as_array().unwrap();
    let mount_of = |path: &str| mounts.iter().find(|m| path.starts_with(m["mountPath"].as_str().unwrap())).cloned();
    let env = |name: &str| {
        agent["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap_or("").to_string())
    };
    // Paths the binaries use are mounted, and the ones the host-side CNI
    // plugin reads (pins, IPAM state) are at the same path on the host.
    for var in ["SLUICE_PIN_DIR", "SLUICE_DATA_DIR", "SLUICE_CNI_CONF_DIR"] {
        let path = env(var).unwrap_or_else(|| panic!("{var} not set"));
        let m = mount_of(&path).unwrap_or_else(|| panic!("{var}={path} is not on a mounted volume"));
        if var != "SLUICE_CNI_CONF_DIR" {
            assert_eq!(
                m["mountPath"].as_str().unwrap(),
                host_path(m["name"].as_str().unwrap()),
                "{var}: same path in and out"
            );
        }
    }
    // The socket load balancer attaches to the host's cgroup hierarchy,
    // never to the container's own cgroup (it would see no other process).
    let cgroup = env("SLUICE_CGROUP_ROOT").expect("SLUICE_CGROUP_ROOT set");
    let m = mount_of(&cgroup).unwrap_or_else(|| panic!("SLUICE_CGROUP_ROOT={cgroup} is not on a mounted volume"));
    assert_eq!(host_path(m["name"].as_str().unwrap()), "/sys/fs/cgroup", "the host's cgroup hierarchy");
    assert_eq!(host_path("cni-conf"), "/etc/cni/net.d");
    assert_eq!(host_path("cni-bin"), "/opt/cni/bin");
    // The agent sees the host's bpffs and namespaces; its own mounts (the
    // health endpoint's namespace) stay in its container. Bidirectional is
    // for privileged containers only, and the agent is not one.
    for (path, name) in [("/sys/fs/bpf", "bpffs"), ("/run/netns", "netns")] {
        let m = mount_of(path).unwrap();
        assert_eq!(m["name"], name);
        assert_eq!(m["mountPropagation"], "HostToContainer", "{path}: the host's mounts must reach the agent");
    }
    // The init container installs where the runtime looks.
    let init = manifest::container(spec, "install-cni");
    let cmd: Vec<&str> = init["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(&cmd[..2], ["sluice-agent", "install-cni"]);
    let bin_dir = cmd[cmd.iter().position(|a| *a == "--bin-dir").unwrap() + 1];
    let im = init["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| bin_dir.starts_with(m["mountPath"].as_str().unwrap()))
        .unwrap();
    assert_eq!(host_path(im["name"].as_str().unwrap()), "/opt/cni/bin");
    // RBAC: get/list/watch on nodes, services, endpointslices, pods,
    // namespaces and networkpolicies, nothing else.
    let role = find(&d, "ClusterRole");
    let rules: Vec<(Value, Value, Value)> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["apiGroups"].clone(), r["resources"].clone(), r["verbs"].clone()))
        .collect();
    let read = serde_json::json!(["get", "list", "watch"]);
    assert_eq!(
        rules,
        [
            (serde_json::json!([""]), serde_json::json!(["nodes"]), read.clone()),
            (serde_json::json!([""]), serde_json::json!(["services"]), read.clone()),
            (serde_json::json!(["discovery.k8s.io"]), serde_json::json!(["endpointslices"]), read.clone()),
            (serde_json::json!([""]), serde_json::json!(["pods"]), read.clone()),
            (serde_json::json!([""]), serde_json::json!(["namespaces"]), read.clone()),
            (serde_json::json!(["networking.k8s.io"]), serde_json::json!(["networkpolicies"]), read),
        ]
    );
    assert_eq!(
        find(&d, "ClusterRoleBinding")["subjects"][0]["name"],
        ds["spec"]["template"]["spec"]["serviceAccountName"]
    );
    // Probes and scheduling the issue asks for: readiness is `status`;
    // liveness only what a restart cures; a startup probe holds both back
    // until the agent is up, for as long as it may wait for its Node.
    assert_eq!(agent["readinessProbe"]["exec"]["command"], serde_json::json!(["sluice-agent", "status"]));
    let liveness = serde_json::json!(["sluice-agent", "status", "--liveness"]);
    assert_eq!(agent["livenessProbe"]["exec"]["command"], liveness);
    assert_eq!(agent["startupProbe"]["exec"]["command"], liveness);
    let budget = |p: &Value| p["periodSeconds"].as_u64().unwrap() * p["failureThreshold"].as_u64().unwrap();
    assert!(budget(&agent["startupProbe"]) >= 300, "the agent gets 5 minutes to come up");
    assert!(budget(&agent["livenessProbe"]) >= 30, "a slow pass is not a wedge");
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert!(agent[probe]["timeoutSeconds"].as_u64().unwrap() >= 5, "{probe}: status reads every pinned map");
    }
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["tolerations"][0]["operator"], "Exists");
    assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1);
}

/// Least privilege (issue 19): only init containers that do one thing and
/// exit are privileged; the agent runs with named capabilities, each one
/// exercised by tests/tests/privileges.rs; nothing writes into the image.
/// Without kube-proxy (README "Without kube-proxy"): the NodePort range
/// reaches the init container that reserves it and the agent, with
/// kube-apiserver's default; the API server address is a knob that, left
/// unset, leaves the variables Kubernetes injects.
#[test]
fn the_node_port_range_and_the_api_server_address_are_config_map_knobs() {
    let d = docs("sluice.yaml");
    let config = find(&d, "ConfigMap");
    assert_eq!(config["data"]["node-port-range"], "30000-32767", "kube-apiserver's default");
    for key in ["api-server-host", "api-server-port"] {
        assert!(config["data"][key].is_null(), "{key}: unset by default (kube-proxy's ClusterIP then works)");
    }
    let spec = &find(&d, "DaemonSet")["spec"]["template"]["spec"];
    let from_config = |container: &str, var: &str| -> (String, bool) {
        let c = manifest::container(spec, container);
        let e = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == var)
            .unwrap_or_else(|| panic!("{container}: no {var}"));
        let r = &e["valueFrom"]["configMapKeyRef"];
        assert_eq!(r["name"], "sluice-config", "{container} {var}");
        (r["key"].as_str().unwrap().to_string(), r["optional"] == true)
    };
    for c in ["agent", "reserve-ports"] {
        assert_eq!(from_config(c, "SLUICE_NODE_PORT_RANGE"), ("node-port-range".into(), true));
        assert_eq!(from_config(c, "SLUICE_KUBE_PROXY_REPLACEMENT"), ("kube-proxy-replacement".into(), true));
    }
    assert_eq!(from_config("agent", "KUBERNETES_SERVICE_HOST"), ("api-server-host".into(), true));
    assert_eq!(from_config("agent", "KUBERNETES_SERVICE_PORT"), ("api-server-port".into(), true));
}

#[test]
fn only_init_containers_are_privileged_and_the_agent_has_named_capabilities() {
    let spec = manifest::pod_spec("sluice.yaml");
    let agent = manifest::container(&spec, "agent");
    let sc = &agent["securityContext"];
    assert_ne!(sc["privileged"], true, "the agent container must not be privileged");
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "the agent drops every capability first");
    let caps = added_capabilities(agent);
    assert!(!caps.is_empty(), "the agent lists the capabilities it adds");
    for cap in &caps {
        assert!(
            manifest::exercised(cap).is_some(),
            "{cap}: tests/tests/privileges.rs does not exercise it (manifest::EXERCISED_CAPABILITIES)"
        );
    }
    let mut sorted = caps.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), caps.len(), "a capability listed twice: {caps:?}");
    // Seccomp: the runtime's default profile for the pod (privileged init
    // containers are left unconfined by the runtime).
    assert_eq!(spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    // Init containers: each runs one sluice-agent step and exits; only they
    // are privileged, and only they have Bidirectional mounts.
    let inits = spec["initContainers"].as_array().unwrap();
    let steps: Vec<String> = inits.iter().map(|c| strings(&c["command"])[1..].join(" ")).collect();
    let expected = [
        ("mount-bpffs", "node-init mount-bpffs --path /sys/fs/bpf", true),
        ("share-netns-dir", "node-init share-netns-dir --path /host/run/netns", true),
        ("ip-forward", "node-init ip-forward", true),
        ("reserve-ports", "node-init reserve-ports", true),
        ("install-cni", "install-cni --bin-dir /host/opt/cni/bin", false),
    ];
    assert_eq!(inits.len(), expected.len(), "init containers: {steps:?}");
    for (c, (name, step, privileged)) in inits.iter().zip(expected) {
        assert_eq!(c["name"], name);
        let cmd = strings(&c["command"]);
        assert_eq!(cmd[0], "sluice-agent", "{name} runs one sluice-agent step");
        assert_eq!(cmd[1..].join(" "), step, "{name} does one thing");
        assert!(c["args"].is_null(), "{name}: its whole command is in `command`");
        assert_eq!(c["securityContext"]["privileged"] == true, privileged, "{name}: privileged only if it must be");
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            if m["mountPropagation"] == "Bidirectional" {
                assert!(privileged, "{name}: Bidirectional needs privileged");
            }
        }
        if !privileged {
            assert_eq!(strings(&c["securityContext"]["capabilities"]["drop"]), ["ALL"], "{name}");
            assert!(c["securityContext"]["capabilities"]["add"].is_null(), "{name} needs no capability");
            assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false, "{name}");
        }
    }
    // The privileged steps' mounts are each on the host path they prepare.
    assert_eq!(
        manifest::host_path(&spec, manifest::container(&spec, "mount-bpffs"), "/sys/fs/bpf").unwrap(),
        "/sys/fs/bpf"
    );
    assert_eq!(
        manifest::host_path(&spec, manifest::container(&spec, "share-netns-dir"), "/host/run/netns").unwrap(),
        "/run/netns"
    );
    // No container writes into its image: the agent's writes (pins, IPAM
    // state, conflist, the health namespace) all go to host volumes.
    for c in spec["containers"].as_array().unwrap().iter().chain(inits) {
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{}: read-only root", c["name"]);
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            if c["name"] == "agent" {
                assert_ne!(m["mountPropagation"], "Bidirectional", "agent mount {}", m["mountPath"]);
            }
        }
    }
    // The cleanup DaemonSet calls no API: no service-account token.
    let cleanup = manifest::pod_spec("cleanup.yaml");
    assert_eq!(cleanup["automountServiceAccountToken"], false, "cleanup.yaml mounts a service-account token");
}

#[test]
fn agent_with_the_daemonsets_command_networks_pods_using_only_calls_rbac_allows() {
    require_root();
    let mut opts = LabOptions::new(3, 1, bin("sluice-agent").parent().unwrap().to_path_buf());
    opts.kubernetes = true;
    opts.default_route = true;
    opts.agent_command = Some(Arc::new(daemonset_command));
    let mut lab = Lab::up(&opts).unwrap();
    let m = lab.matrix();
    assert!(m.all_ok(), "{}", m.render());
    let s = lab.status(0).unwrap();
    assert_eq!(s["healthy"], true, "{s}");
    assert_eq!(s["agent"]["uplink"], "eth0", "uplink chosen from the default route");
    assert_eq!(s["agent"]["membership"], "kubernetes");
    // The probes, run as the kubelet would (the container's environment):
    // all pass on a running agent; with the agent gone, liveness fails.
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let out = run_probe(&lab, probe);
        assert!(out.status.success(), "{probe}: {}", String::from_utf8_lossy(&out.stdout));
    }
    lab.kill_agent(0).unwrap();
    let out = run_probe(&lab, "livenessProbe");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success() && text.starts_with("sluice agent: NOT LIVE: agent not running"), "{text}");
    // Every API call the agents made is allowed by the ClusterRole.
    let requests = lab.api.as_ref().unwrap().requests();
    assert!(!requests.is_empty());
    let denied = manifest::denied(&manifest::cluster_role_rules(), &requests);
    assert!(denied.is_empty(), "the agent made calls the ClusterRole does not allow: {denied:?}");
}

/// Run the agent container's `probe` (its exec command with the
/// container's environment) for node 0 of `lab`.
fn run_probe(lab: &Lab, probe: &str) -> std::process::Output {
    let d = manifest::docs("sluice.yaml");
    let spec = find(&d, "DaemonSet")["spec"]["template"]["spec"].clone();
    let mut agent = manifest::container(&spec, "agent").clone();
    agent["command"] = agent[probe]["exec"]["command"].clone();
    agent["args"] = Value::Null;
    let (argv, env) = manifest::command(&spec, &agent, &find(&d, "ConfigMap")["data"], &lab.state.nodes[0]);
    Command::new(&argv[0]).args(&argv[1..]).envs(env).output().unwrap()
}

/// The Service, EndpointSlice, Pod, Namespace and NetworkPolicy watchers
/// (and the Node watcher) against the test API server, no root: every call
/// they make is allowed by the ClusterRole, which grants exactly get, list
/// and watch on them, and without its rule for any kind the check fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusterrole_allows_every_call_the_watchers_make() {
    use sluice_agent::{
        membership::kubernetes::KubeNodes, policy::kubernetes::KubePolicy, services::kubernetes::KubeServices,
    };
    use sluice_tests::apiserver::{
        endpoint_slice_object, namespace_object, network_policy_object, service_object, ApiServer, PodObject,
    };

    let api = ApiServer::start("127.0.0.1:0", None).unwrap();
    api.upsert_node("n1", "172.30.0.1", Some("10.244.1.0/24"));
    api.upsert_service(service_object("default", "web", "10.96.0.10", &[("http", 80, 8080)]));
    api.upsert_endpoint_slice(endpoint_slice_object(
        "default",
        "web-1",
        "web",
        &[("http", 8080)],
        &[("10.244.1.5", "n1")],
    ));
    api.upsert_namespace(namespace_object("default", &[]));
    api.upsert_pod(PodObject::new("default", "web-0", "n1", "10.244.1.5").build());
    api.upsert_network_policy(network_policy_object("default", "deny", serde_json::json!({"podSelector": {}})));
    let client = kube::Client::try_from(kube::Config::new(format!("http://{}", api.addr).parse().unwrap())).unwrap();
    let nodes = KubeNodes::start(client.clone());
    let services = KubeServices::start(client.clone());
    let policy = KubePolicy::start(client);
    let start = std::time::Instant::now();
    // Listed, and watching: the watches are requests too.
    while !(nodes.snapshot().1.synced
        && services.snapshot().1.synced
        && policy.snapshot().1.synced
        && api.counters().1 >= 6)
    {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "not synced: {:?}", services.snapshot().1);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let requests = api.requests();
    for (verb, resource) in [
        ("list", "services"),
        ("watch", "services"),
        ("list", "endpointslices"),
        ("watch", "endpointslices"),
        ("list", "pods"),
        ("watch", "pods"),
        ("list", "namespaces"),
        ("watch", "namespaces"),
        ("list", "networkpolicies"),
        ("watch", "networkpolicies"),
    ] {
        assert!(
            requests.iter().any(|(v, p)| v == verb && p.ends_with(resource)),
            "no {verb} of {resource} made: {requests:?}"
        );
    }
    let rules = manifest::cluster_role_rules();
    let denied = manifest::denied(&rules, &requests);
    assert!(denied.is_empty(), "the watchers made calls the ClusterRole does not allow: {denied:?}");
    // Exactly get, list and watch on each kind the agent reads.
    for (group, resource) in [
        ("", "nodes"),
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "pods"),
        ("", "namespaces"),
        ("networking.k8s.io", "networkpolicies"),
    ] {
        let verbs: Vec<String> = rules
            .iter()
            .filter(|r| {
                strings(&r["apiGroups"]).contains(&group.to_string())
                    && strings(&r["resources"]).contains(&resource.to_string())
            })
            .flat_map(|r| strings(&r["verbs"]))
            .collect();
        assert_eq!(verbs, ["get", "list", "watch"], "{group}/{resource}");
    }
    // The check can fail: without the rule for any kind, its calls are denied.
    for resource in ["services", "endpointslices", "pods", "namespaces", "networkpolicies"] {
        let without: Vec<Value> =
            rules.iter().filter(|r| !strings(&r["resources"]).contains(&resource.to_string())).cloned().collect();
        let denied = manifest::denied(&without, &requests);
        assert!(!denied.is_empty() && denied.iter().all(|d| d.ends_with(resource)), "without {resource}: {denied:?}");
    }
}

#[test]
fn image_runs_the_agent_and_the_plugin_under_a_real_runtime() {
    require_root();
    let lab = Lab::up(&LabOptions::new(1, 0, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let work = lab.state.dir.join("sluice-image");
    let archive = oci::build_sluice_image(bin("sluice-agent").parent().unwrap(), &work).unwrap();
    let cni_bin =
        sluice_tests::runtime::cni_bin_dir(&lab.state.dir.join("cni-bin"), &bin("sluice-cni"), &["loopback"]).unwrap();
    let c = Containerd::start(&lab.state.nodes[0], &cni_bin).unwrap();
    c.import(&archive).unwrap();
    let fifo = c.dir.join("fifo").display().to_string();
    let out =
        run(&mut c.ctr(&["run", "--rm", "--fifo-dir", &fifo, oci::SLUICE_IMAGE, "v1", "sluice-agent", "--version"]))
            .unwrap();
    assert!(out.contains("sluice-agent 0.1.0"), "{out}");
    // The netfilter tools the agent drives run inside the image.
    let out =
        run(&mut c.ctr(&["run", "--rm", "--fifo-dir", &fifo, oci::SLUICE_IMAGE, "v3", "nft", "--version"])).unwrap();
    assert!(out.contains("nftables"), "{out}");
    let out = run(&mut c.ctr(&["run", "--rm", "--fifo-dir", &fifo, oci::SLUICE_IMAGE, "v4", "iptables", "--version"]))
        .unwrap();
    assert!(out.contains("nf_tables"), "{out}");
    let out = run(&mut c.ctr(&[
        "run",
        "--rm",
        "--fifo-dir",
        &fifo,
        "--env",
        "CNI_COMMAND=VERSION",
        oci::SLUICE_IMAGE,
        "v2",
        "sluice-cni",
    ]))
    .unwrap();
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(v["supportedVersions"].as_array().unwrap().iter().any(|x| x == "1.1.0"), "{v}");
}

#[test]
fn cleanup_leaves_the_node_clean() {
    require_root();
    let mut lab = Lab::up(&LabOptions::new(1, 2, bin("sluice-agent").parent().unwrap().to_path_buf())).unwrap();
    let node = lab.state.nodes[0].clone();
    let cni_bin = lab.state.dir.join("cni-bin-installed");
    let out = run(Command::new(bin("sluice-agent")).args(["install-cni", "--bin-dir", &cni_bin.display().to_string()]))
        .unwrap();
    assert!(out.contains("installed"));
    lab.kill_agent(0).unwrap();
    let out = ns_exec(
        &node.netns,
        &[
            &bin("sluice-agent").display().to_string(),
            "cleanup",
            "--pin-dir",
            &node.pin_dir.display().to_string(),
            "--data-dir",
            &node.dir.join("data").display().to_string(),
            "--cni-conf-dir",
            &node.dir.join("cni").display().to_string(),
            "--cni-bin-dir",
            &cni_bin.display().to_string(),
            "--health-netns",
            &Lab::health_netns(&node),
        ],
    )
    .unwrap();
    assert!(out.contains("removed"), "{out}");
    assert!(!node.pin_dir.exists(), "pins left");
    assert!(!Lab::conflist_path(&node).exists(), "conflist left");
    assert!(!cni_bin.join("sluice").exists(), "plugin left");
    assert!(!node.dir.join("data/ipam").exists(), "IPAM state left");
    let links = ns_exec(&node.netns, &["ip", "-o", "link", "show"]).unwrap();
    assert!(!links.contains("slc") && !links.contains("slhealth"), "interfaces left:\n{links}");
    assert!(!links.contains(sluice_node::net::vxlan::DEVICE), "VXLAN device left:\n{links}");
    let netns = run(Command::new("ip").args(["netns", "list"])).unwrap();
    assert!(!netns.contains(&Lab::health_netns(&node)), "health namespace left");
    // Pods lost their network: nothing of sluice is left to carry it.
    let p = &node.pods[0];
    assert!(!sluice_tests::lab::ping(&p.netns, &node.ip));
}
