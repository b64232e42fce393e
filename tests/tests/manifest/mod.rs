//! `deploy/*.yaml` read as JSON, and its containers' commands mapped onto a
//! lab node: shared by `deploy.rs` (manifests vs code) and `privileges.rs`
//! (the agent run with exactly the manifest's capabilities), so the manifest
//! is the one source of truth for both.
#![allow(dead_code)] // each test file uses its part

use std::{path::PathBuf, process::Command};

use serde_json::Value;
use sluice_tests::{
    bin,
    lab::{Lab, LabState, Node},
    run,
};

/// The capabilities `privileges.rs` exercises, each with the refused call
/// that must show in the failure without it (beside the capability's name,
/// which the agent's hint gives). Every capability the agent container adds
/// must be one of these; CAP_BPF and CAP_PERFMON are what CAP_SYS_ADMIN
/// stands in for.
pub const EXERCISED_CAPABILITIES: &[(&str, &str)] = &[
    // Kernel routes are the first netlink change at start.
    ("CAP_NET_ADMIN", "Received a netlink error message Operation not permitted"),
    // Without it (and without CAP_BPF) the first bpf() call, a map, fails.
    ("CAP_SYS_ADMIN", "failed to create map"),
    ("CAP_NET_RAW", "raw ICMP socket: Operation not permitted"),
    ("CAP_BPF", "failed to create map"),
    ("CAP_PERFMON", "BPF_PROG_LOAD syscall returned Permission denied"),
];

/// The refused call `cap`'s removal must show.
pub fn exercised(cap: &str) -> Option<&'static str> {
    EXERCISED_CAPABILITIES.iter().find(|(c, _)| *c == cap).map(|(_, e)| *e)
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn venv_bin(name: &str) -> PathBuf {
    let p = repo().join("target/tools/venv/bin").join(name);
    assert!(p.exists(), "{} missing: run `cargo xtask setup` (installs kubernetes-validate)", p.display());
    p
}

/// Every document of a manifest file, as JSON (PyYAML from the same venv).
pub fn docs(file: &str) -> Vec<Value> {
    let out = run(Command::new(venv_bin("python")).args([
        "-c",
        "import sys, yaml, json; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        &repo().join("deploy").join(file).display().to_string(),
    ]))
    .unwrap();
    serde_json::from_str(&out).unwrap()
}

pub fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

/// The pod spec of the DaemonSet in `file`.
pub fn pod_spec(file: &str) -> Value {
    find(&docs(file), "DaemonSet")["spec"]["template"]["spec"].clone()
}

/// A container (or init container) of `spec` by name.
pub fn container<'a>(spec: &'a Value, name: &str) -> &'a Value {
    spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

/// `CAP_X` for Kubernetes' `X` (both spellings are accepted there).
pub fn cap_name(s: &str) -> String {
    let s = s.to_ascii_uppercase();
    if s.starts_with("CAP_") {
        s
    } else {
        format!("CAP_{s}")
    }
}

/// The capabilities a container adds (after `drop: [ALL]`), as `CAP_X`.
pub fn added_capabilities(c: &Value) -> Vec<String> {
    strings(&c["securityContext"]["capabilities"]["add"]).iter().map(|s| cap_name(s)).collect()
}

/// Where container path `path` of container `c` is on the host: through the
/// volume mounted at the longest prefix of it (`None`: not on a volume).
pub fn host_path(spec: &Value, c: &Value, path: &str) -> Option<String> {
    let mounts = c["volumeMounts"].as_array()?;
    let m = mounts
        .iter()
        .filter(|m| {
            let mp = m["mountPath"].as_str().unwrap();
            path == mp || path.starts_with(&format!("{mp}/"))
        })
        .max_by_key(|m| m["mountPath"].as_str().unwrap().len())?;
    let volume = spec["volumes"].as_array()?.iter().find(|v| v["name"] == m["name"])?;
    let host = volume["hostPath"]["path"].as_str()?;
    Some(format!("{host}{}", &path[m["mountPath"].as_str().unwrap().len()..]))
}

/// The lab node's stand-in for a host path: each lab node has its own
/// directories for what is per node (every lab node shares this machine's
/// filesystem, bpffs and /run/netns).
pub fn lab_path(node: &Node, host: &str) -> PathBuf {
    let own = |rest: &str, dir: PathBuf| if rest.is_empty() { dir } else { dir.join(rest.trim_start_matches('/')) };
    for (prefix, dir) in [
        ("/sys/fs/bpf/sluice", node.pin_dir.clone()),
        ("/var/lib/sluice", Lab::data_dir(node)),
        ("/etc/cni/net.d", node.dir.join("cni")),
        ("/opt/cni/bin", node.dir.join("cni-bin")),
    ] {
        if host == prefix || host.starts_with(&format!("{prefix}/")) {
            return own(&host[prefix.len()..], dir);
        }
    }
    PathBuf::from(host)
}

/// A value of the manifest (an argument, an env value) as the lab node
/// needs it: container paths on a volume become the node's paths for the
/// same host path; the health namespace gets the node's unique name.
pub fn map_value(spec: &Value, c: &Value, node: &Node, v: &str) -> String {
    if v == "sluice-health" {
        return Lab::health_netns(node);
    }
    if v.starts_with('/') {
        if let Some(host) = host_path(spec, c, v) {
            return lab_path(node, &host).display().to_string();
        }
    }
    v.to_string()
}

/// A container's argv and environment exactly as the manifest gives them,
/// mapped onto `node`: the binary from this build, paths via `map_value`,
/// ConfigMap values from `config`, `NODE_NAME` the node's. KUBECONFIG (set
/// by the lab) stands in for the in-cluster service account.
pub fn command(spec: &Value, c: &Value, config: &Value, node: &Node) -> (Vec<String>, Vec<(String, String)>) {
    let mut argv: Vec<String> = strings(&c["command"])
        .into_iter()
        .chain(strings(&c["args"]))
        .map(|a| {
            // `--flag=/path` as well as `--flag /path`.
            match a.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => format!("{flag}={}", map_value(spec, c, node, value)),
                _ => map_value(spec, c, node, &a),
            }
        })
        .collect();
    assert!(argv[0] == "sluice-agent", "{} runs {}, not sluice-agent", c["name"], argv[0]);
    argv[0] = bin("sluice-agent").display().to_string();
    let mut env = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            Some(map_value(spec, c, node, v))
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
            Some(node.name.clone())
        } else if let Some(key) = e["valueFrom"]["configMapKeyRef"]["key"].as_str() {
            match config[key].as_str() {
                Some(v) => Some(v.to_string()),
                None if e["valueFrom"]["configMapKeyRef"]["optional"] == true => None,
                None => panic!("ConfigMap lacks {key}"),
            }
        } else {
            panic!("unhandled env {e}")
        };
        if let Some(v) = value {
            env.push((name, v));
        }
    }
    (argv, env)
}

/// The agent's argv and environment exactly as the DaemonSet gives them.
pub fn daemonset_command(_state: &LabState, node: &Node) -> (Vec<String>, Vec<(String, String)>) {
    let d = docs("sluice.yaml");
    let spec = find(&d, "DaemonSet")["spec"]["template"]["spec"].clone();
    command(&spec, container(&spec, "agent"), &find(&d, "ConfigMap")["data"], node)
}

/// The ClusterRole's rules of `sluice.yaml`.
pub fn cluster_role_rules() -> Vec<Value> {
    find(&docs("sluice.yaml"), "ClusterRole")["rules"].as_array().unwrap().clone()
}

/// Does an RBAC rule list `want` (or `*`) under `field`?
fn rule_names(rule: &Value, field: &str, want: &str) -> bool {
    rule[field].as_array().into_iter().flatten().any(|x| x == want || x == "*")
}

/// The requests (RBAC verb, path, as the test API server logs them) that
/// no rule allows: each rule is matched on API group, resource and verb.
pub fn denied(rules: &[Value], requests: &[(String, String)]) -> Vec<String> {
    requests
        .iter()
        .filter(|(verb, path)| {
            let Some((group, resource)) = sluice_tests::apiserver::api_resource(path) else { return true };
            !rules.iter().any(|r| {
                rule_names(r, "apiGroups", &group)
                    && rule_names(r, "resources", &resource)
                    && rule_names(r, "verbs", verb)
            })
        })
        .map(|(verb, path)| format!("{verb} {path}"))
        .collect()
}
