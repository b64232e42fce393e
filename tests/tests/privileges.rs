//! Least privilege: the agent runs with exactly the capabilities
//! `deploy/sluice.yaml` gives its container, and each of them is needed.
//!
//! No Kubernetes runs here, so each container of the DaemonSet is modelled
//! on a lab node as far as a process can be:
//! - not privileged: root (uid 0) with the container's capabilities as its
//!   bounding, permitted and effective sets, nothing inheritable or ambient
//!   (what runc gives a root container with `drop: [ALL]` + `add`), set by
//!   `setpriv`; `--no-new-privs` for `allowPrivilegeEscalation: false`;
//! - its own mount namespace, every mount a slave of the host's
//!   (HostToContainer: the host's mounts reach it, its own never reach the
//!   host), `/sys` and `/proc/sys` read-only, and with
//!   `readOnlyRootFilesystem` every mount read-only except the container's
//!   volumes (mapped to the lab node's directories), `/dev` and `/proc`;
//! - the manifest's command and environment; `kubectl exec` (the readiness
//!   probe, `connectivity-test`) enters that mount namespace with the same
//!   capabilities;
//! - privileged init containers run as full root in the host's mount
//!   namespace (privileged + Bidirectional), before the node's agent first
//!   starts; the others like the agent.
//!
//! Not modelled there: the PID namespace, seccomp, AppArmor, cgroups.
//! `the_daemonset_runs_under_containerd_and_runc` runs the image's init and
//! agent containers under a real runtime instead (runc's capability
//! handling, containerd's default seccomp profile, read-only root, masked
//! /proc), for one node; `init_steps_prepare_a_node` checks the privileged
//! init steps' effect on a stand-in host in throwaway mount namespaces.
//! kubelet itself (pod spec to container spec) is nowhere here.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
};

mod manifest;

use manifest::{added_capabilities, cap_name, command, container, docs, find, host_path, lab_path, strings};
use serde_json::Value;
use sluice_tests::{
    bin,
    containerd::Containerd,
    lab::{ns_cmd, Lab, LabOptions, Node},
    oci, require_root, run, try_run,
};

/// One lab at a time: each test builds several.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A container of the manifest as this test runs it.
#[derive(Clone, Debug)]
struct Model {
    privileged: bool,
    /// `CAP_X` names: bounding = permitted = effective set.
    caps: Vec<String>,
    no_new_privs: bool,
    read_only_root: bool,
    /// Lab paths of its writable volumes.
    writable: Vec<PathBuf>,
}

fn model(spec: &Value, c: &Value, node: &Node) -> Model {
    let sc = &c["securityContext"];
    let privileged = sc["privileged"] == true;
    if !privileged {
        assert_eq!(
            strings(&sc["capabilities"]["drop"]),
            ["ALL"],
            "{}: not privileged, so it must drop ALL (the runtime's default set is not modelled)",
            c["name"]
        );
    }
    let writable = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["readOnly"] != true)
        .map(|m| {
            let host = host_path(spec, c, m["mountPath"].as_str().unwrap()).expect("a hostPath volume");
            lab_path(node, &host)
        })
        .collect();
    Model {
        privileged,
        caps: added_capabilities(c),
        no_new_privs: sc["allowPrivilegeEscalation"] == false,
        read_only_root: sc["readOnlyRootFilesystem"] == true,
        writable,
    }
}

/// `setpriv` arguments giving exactly `caps`, as root.
fn setpriv(m: &Model) -> Vec<String> {
    let mut bounding = "-all".to_string();
    for c in &m.caps {
        bounding.push_str(&format!(",+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()));
    }
    let mut a: Vec<String> = ["setpriv", "--reuid=0", "--regid=0", "--clear-groups", "--inh-caps=-all"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push("--ambient-caps=-all".into());
    a.push(format!("--bounding-set={bounding}"));
    if m.no_new_privs {
        a.push("--no-new-privs".into());
    }
    a.push("--".into());
    a
}

/// The container's mount namespace: volumes bound writable (unless already
/// mount points), /proc/sys and /sys read-only, and with a read-only root
/// every other mount read-only too. Then `$@`.
const CONTAINER_MOUNTS: &str = r#"
ro=$1; shift
keep=" "
while [ "$1" != -- ]; do
  mkdir -p "$1"
  mountpoint -q "$1" || mount --rbind "$1" "$1"
  keep="$keep$1 "
  shift
done
shift
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
if [ "$ro" = 1 ]; then
  for m in $(findmnt -rn -o TARGET); do
    # Namespace files are no filesystem to write to; other tests create
    # and delete them meanwhile.
    case "$m" in /dev|/dev/*|/proc|/proc/*|/run/netns/*) continue ;; esac
    case "$keep" in *" $m "*) continue ;; esac
    # A mount another test removed since findmnt listed it is fine.
    mount -o remount,bind,ro "$m" || [ ! -e "$m" ] || exit 1
  done
else
  mount -o remount,bind,ro /sys
fi
exec "$@"
"#;

/// argv that runs `argv` as the container `m` would.
fn contained(m: &Model, argv: Vec<String>) -> Vec<String> {
    if m.privileged {
        return argv;
    }
    let mut a: Vec<String> =
        ["unshare", "--mount", "--propagation", "slave", "--", "sh", "-euc", CONTAINER_MOUNTS, "container"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    a.push(if m.read_only_root { "1" } else { "0" }.into());
    a.extend(m.writable.iter().map(|p| p.display().to_string()));
    a.push("--".into());
    a.extend(setpriv(m));
    a.extend(argv);
    a
}

/// The DaemonSet as this test runs it: its pod spec (whose agent container
/// a test may change) and the ConfigMap.
#[derive(Clone)]
struct Deployment {
    spec: Value,
    config: Value,
}

impl Deployment {
    fn from_manifest() -> Self {
        let d = docs("sluice.yaml");
        Self {
            spec: find(&d, "DaemonSet")["spec"]["template"]["spec"].clone(),
            config: find(&d, "ConfigMap")["data"].clone(),
        }
    }

    fn agent(&self) -> &Value {
        container(&self.spec, "agent")
    }

    /// The same, with `cap` taken out of the agent container's list.
    fn without(&self, cap: &str) -> Self {
        let mut d = self.clone();
        let agent = d.spec["containers"].as_array_mut().unwrap().iter_mut().find(|c| c["name"] == "agent").unwrap();
        let add = agent["securityContext"]["capabilities"]["add"].as_array_mut().unwrap();
        let before = add.len();
        add.retain(|c| cap_name(c.as_str().unwrap()) != cap);
        assert_eq!(add.len(), before - 1, "{cap} not in the agent's list");
        d
    }

    /// The same, with `cap` added to the agent container's list.
    fn with(&self, cap: &str) -> Self {
        let mut d = self.clone();
        let agent = d.spec["containers"].as_array_mut().unwrap().iter_mut().find(|c| c["name"] == "agent").unwrap();
        agent["securityContext"]["capabilities"]["add"]
            .as_array_mut()
            .unwrap()
            .push(Value::from(cap.trim_start_matches("CAP_")));
        d
    }

    /// Run the init containers on `node`, in order, each to completion.
    fn init_node(&self, node: &Node) {
        // A node as it comes: forwarding off, so the ip-forward step counts
        // (the agent's /proc/sys is read-only).
        run(&mut ns_cmd(&node.netns, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])).unwrap();
        for c in self.spec["initContainers"].as_array().unwrap() {
            let (argv, env) = command(&self.spec, c, &self.config, node);
            let argv = contained(&model(&self.spec, c, node), argv);
            let args: Vec<&str> = argv.iter().map(String::as_str).collect();
            let out = try_run(ns_cmd(&node.netns, &args).envs(env)).unwrap();
            assert!(
                out.status.success(),
                "init container {} failed on {}: {}{}",
                c["name"],
                node.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// A lab whose agents run as this deployment's agent container, each
    /// node's init containers first.
    fn lab(&self, nodes: usize) -> anyhow::Result<Lab> {
        let mut opts = LabOptions::new(nodes, 1, bin("sluice-agent").parent().unwrap().to_path_buf());
        opts.kubernetes = true;
        opts.default_route = true;
        let done = Arc::new(Mutex::new(HashSet::new()));
        let me = self.clone();
        opts.agent_command = Some(Arc::new(move |_state, node| {
            // Init containers run once per pod, not on a container restart.
            if done.lock().unwrap().insert(node.name.clone()) {
                me.init_node(node);
            }
            let agent = me.agent();
            let (argv, env) = command(&me.spec, agent, &me.config, node);
            (contained(&model(&me.spec, agent, node), argv), env)
        }));
        Lab::up(&opts)
    }

    /// `kubectl exec` into node `i`'s agent container: its mount namespace,
    /// capabilities and environment. (success, stdout + stderr)
    fn exec(&self, lab: &Lab, i: usize, args: &[&str]) -> (bool, String) {
        let node = &lab.state.nodes[i];
        let pid = node.agent_pid.expect("agent running").to_string();
        let agent = self.agent();
        let (_, env) = command(&self.spec, agent, &self.config, node);
        assert_eq!(args[0], "sluice-agent");
        let mut argv: Vec<String> = ["nsenter", "-t", &pid, "-m", "-n", "--"].iter().map(|s| s.to_string()).collect();
        argv.extend(setpriv(&model(&self.spec, agent, node)));
        argv.push(bin("sluice-agent").display().to_string());
        argv.extend(args[1..].iter().map(|s| s.to_string()));
        let out = try_run(Command::new(&argv[0]).args(&argv[1..]).envs(env)).unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    /// What a node's agent container must do: be ready, carry pods across
    /// nodes, pass its readiness probe and `connectivity-test`, and after a
    /// SIGKILL and restart do it all again. The first failure, with what
    /// the agent said.
    fn exercise(&self) -> Result<(), String> {
        let mut lab = self.lab(2).map_err(|e| format!("lab up (agents starting): {e:#}"))?;
        for i in 0..lab.state.nodes.len() {
            check_capabilities(&lab, i, &model(&self.spec, self.agent(), &lab.state.nodes[i]).caps);
        }
        self.check_node(&lab, "first start")?;
        lab.kill_agent(0).unwrap();
        lab.start_agent(0).unwrap();
        lab.wait_agent_ready(0).map_err(|e| format!("restart after SIGKILL: {e:#}"))?;
        check_capabilities(&lab, 0, &model(&self.spec, self.agent(), &lab.state.nodes[0]).caps);
        self.check_node(&lab, "after SIGKILL and restart")
    }

    fn check_node(&self, lab: &Lab, when: &str) -> Result<(), String> {
        let m = lab.matrix();
        if !m.all_ok() {
            return Err(format!("{when}: pods do not reach each other:\n{}\n{}", m.render(), logs(lab)));
        }
        let probe = strings(&self.agent()["readinessProbe"]["exec"]["command"]);
        let probe: Vec<&str> = probe.iter().map(String::as_str).collect();
        for i in 0..lab.state.nodes.len() {
            let (ok, out) = self.exec(lab, i, &probe);
            if !ok {
                return Err(format!("{when}: readiness probe {probe:?} fails on {}:\n{out}", lab.state.nodes[i].name));
            }
            let (ok, out) = self.exec(lab, i, &["sluice-agent", "connectivity-test", "--json"]);
            if !ok {
                return Err(format!("{when}: connectivity-test fails on {}:\n{out}", lab.state.nodes[i].name));
            }
            // The datapath monitor (a ring buffer read from the pins).
            let (ok, out) = self.exec(lab, i, &["sluice-agent", "monitor", "--type", "all", "--duration-ms", "300"]);
            if !ok {
                return Err(format!("{when}: monitor fails on {}:\n{out}", lab.state.nodes[i].name));
            }
        }
        Ok(())
    }
}

fn logs(lab: &Lab) -> String {
    lab.state
        .nodes
        .iter()
        .map(|n| {
            format!("{} agent.log:\n{}", n.name, std::fs::read_to_string(n.dir.join("agent.log")).unwrap_or_default())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Capability sets of a process, from /proc/<pid>/status.
fn cap_sets(pid: u32) -> Vec<(String, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .filter(|l| l.starts_with("Cap"))
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.to_string(), u64::from_str_radix(v.trim(), 16).unwrap())
        })
        .collect()
}

fn cap_bit(name: &str) -> u32 {
    // linux/capability.h; only those a manifest here may name.
    match name {
        "CAP_NET_ADMIN" => 12,
        "CAP_NET_RAW" => 13,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("{other}: add its bit to cap_bit"),
    }
}

/// The running agent has exactly `caps` (bounding, permitted, effective),
/// nothing inheritable or ambient, and a read-only root.
fn check_capabilities(lab: &Lab, i: usize, caps: &[String]) {
    let pid = lab.state.nodes[i].agent_pid.unwrap();
    let want = caps.iter().fold(0u64, |s, c| s | 1 << cap_bit(c));
    for (set, value) in cap_sets(pid) {
        let expect = if set == "CapInh" || set == "CapAmb" { 0 } else { want };
        assert_eq!(
            value, expect,
            "agent on {}: {set} {value:x}, expected {expect:x} ({caps:?})",
            lab.state.nodes[i].name
        );
    }
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts.lines().find(|l| l.split(' ').nth(4) == Some("/")).unwrap();
    assert!(root.split(' ').nth(5).unwrap().split(',').any(|o| o == "ro"), "agent's root is writable: {root}");
}

#[test]
fn the_agent_works_with_exactly_the_manifests_capabilities() {
    require_root();
    let _one = serial();
    let d = Deployment::from_manifest();
    let caps = added_capabilities(d.agent());
    assert!(!caps.is_empty());
    eprintln!("agent container capabilities: {caps:?}");
    if let Err(e) = d.exercise() {
        panic!("the agent with exactly {caps:?} does not work: {e}");
    }
}

#[test]
fn each_capability_of_the_manifest_is_needed() {
    require_root();
    let _one = serial();
    let d = Deployment::from_manifest();
    let caps = added_capabilities(d.agent());
    let mut summary = Vec::new();
    for cap in &caps {
        let expect = manifest::exercised(cap)
            .unwrap_or_else(|| panic!("{cap}: the manifest adds it, and this test does not know what needs it"));
        let failure = match d.without(cap).exercise() {
            Ok(()) => panic!("the agent works without {cap}: it is not needed; remove it from deploy/sluice.yaml"),
            Err(e) => e,
        };
        assert!(hinted(&failure).contains(cap), "without {cap}, the agent's hint must name it:\n{failure}");
        assert!(
            failure.contains(cap.as_str()) && failure.contains(expect),
            "without {cap}, the failure must name it and say {expect:?}:\n{failure}"
        );
        summary.push(format!("without {cap}:\n  {}", what_failed(&failure, expect)));
    }
    eprintln!("{}", summary.join("\n"));
}

/// The capabilities the agent's hint says it runs without.
fn hinted(failure: &str) -> Vec<String> {
    failure
        .lines()
        .filter_map(|l| l.split_once("runs without ").and_then(|(_, rest)| rest.split_once(';')))
        .flat_map(|(caps, _)| caps.split(", ").map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// The failure's gist: the agent's error and hint lines, or the line with
/// `expect` in it.
fn what_failed(failure: &str, expect: &str) -> String {
    let mut lines: Vec<&str> = failure
        .lines()
        .filter(|l| l.starts_with("error:") || l.contains("hint:") || l.contains(expect))
        .map(|l| l.trim())
        .collect();
    lines.dedup();
    lines.join("\n  ")
}

#[test]
fn sys_admin_stands_in_for_bpf_and_perfmon() {
    // The kernel takes CAP_SYS_ADMIN for bpf() (bpf_capable) and for the
    // verifier's pointer checks (perfmon_capable). The agent needs it for
    // its health endpoint's namespace anyway; without it, it would need
    // CAP_BPF and CAP_PERFMON for its datapath, as this shows.
    require_root();
    let _one = serial();
    let d = Deployment::from_manifest();
    assert!(added_capabilities(d.agent()).contains(&"CAP_SYS_ADMIN".to_string()));
    let base = d.without("CAP_SYS_ADMIN").with("CAP_BPF").with("CAP_PERFMON");
    // With CAP_BPF and CAP_PERFMON the datapath loads and attaches; only the
    // health endpoint's namespace is refused.
    let e = base.exercise().unwrap_err();
    eprintln!("CAP_BPF + CAP_PERFMON instead of CAP_SYS_ADMIN:\n  {}", what_failed(&e, "datapath ready"));
    assert!(e.contains("datapath ready"), "{e}");
    assert!(e.contains("unshare network namespace: EPERM"), "{e}");
    assert_eq!(hinted(&e), ["CAP_SYS_ADMIN"], "{e}");
    // Without CAP_PERFMON too, the verifier refuses the programs.
    let e = base.without("CAP_PERFMON").exercise().unwrap_err();
    eprintln!("and without CAP_PERFMON:\n  {}", what_failed(&e, "@@"));
    assert!(!e.contains("datapath ready"), "{e}");
    assert!(e.contains(manifest::exercised("CAP_PERFMON").unwrap()), "{e}");
    assert!(e.contains("CAP_PERFMON or CAP_SYS_ADMIN for BPF_PROG_LOAD"), "{e}");
    // Without CAP_BPF (with CAP_PERFMON), bpf() refuses the first map.
    let e = base.without("CAP_BPF").exercise().unwrap_err();
    eprintln!("CAP_PERFMON without CAP_BPF:\n  {}", what_failed(&e, "@@"));
    assert!(!e.contains("datapath ready"), "{e}");
    assert!(e.contains(manifest::exercised("CAP_BPF").unwrap()), "{e}");
    assert!(e.contains("CAP_BPF or CAP_SYS_ADMIN for bpf()"), "{e}");
}

/// Where a throwaway mount namespace keeps its stand-in "host" (an empty
/// directory here: the namespace mounts a tmpfs on it), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let p = std::env::temp_dir().join(sluice_tests::unique("sluice-init-"));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run `script` as root in a mount namespace of its own (private: nothing
/// reaches the real host), with `$AGENT` the agent binary and `$D` a
/// directory.
fn in_private_mount_ns(d: &Path, script: &str) -> String {
    let full = format!("set -eu\nexport D={} AGENT={}\n{script}", d.display(), bin("sluice-agent").display());
    run(Command::new("timeout").args(["20", "unshare", "--mount", "--propagation", "private", "sh", "-c", &full]))
        .unwrap()
}

#[test]
fn init_steps_prepare_a_node() {
    require_root();
    let spec = manifest::pod_spec("sluice.yaml");
    let step = |name: &str| strings(&container(&spec, name)["command"])[1..].join(" ");
    let scratch = Scratch::new();
    let d = &scratch.0;
    // mount-bpffs: a "host" whose /sys/fs/bpf has no bpffs; the init
    // container sees it through a Bidirectional volume (a mount namespace
    // whose copy is a peer of the host's). It mounts bpffs, shared, and the
    // host has it; a second run (pod restart) mounts nothing more; an agent
    // container (a slave namespace) started after sees it.
    let bpffs_step = step("mount-bpffs").replace("/sys/fs/bpf", "$D/sys/fs/bpf");
    let out = in_private_mount_ns(
        d,
        &format!(
            "mount -t tmpfs host $D && mount --make-shared $D && mkdir -p $D/sys/fs/bpf\n\
             unshare --mount --propagation unchanged $AGENT {bpffs_step}\n\
             unshare --mount --propagation unchanged $AGENT {bpffs_step}\n\
             echo host: $(findmnt -rn -o FSTYPE,PROPAGATION $D/sys/fs/bpf)\n\
             echo agent: $(unshare --mount --propagation slave findmnt -rn -o FSTYPE $D/sys/fs/bpf)"
        ),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("mounted bpffs at"), "{out}");
    assert!(lines[1].starts_with("bpffs already mounted"), "{out}");
    assert_eq!(lines[2], "host: bpf shared", "{out}");
    assert_eq!(lines[3], "agent: bpf", "{out}");
    // share-netns-dir: the host's /run (a shared mount, as systemd makes it)
    // through a Bidirectional volume at /host/run: /run/netns becomes a
    // shared mount point on the host, once however often it runs, and a
    // namespace mounted there afterwards shows in an agent container.
    let netns_step = step("share-netns-dir");
    assert!(netns_step.contains("/host/run/netns"), "{netns_step}");
    let netns_step = netns_step.replace("/host/run", "$D/run");
    let out = in_private_mount_ns(
        d,
        &format!(
            "mount -t tmpfs host $D && mount --make-shared $D && mkdir -p $D/run/netns\n\
             unshare --mount --propagation unchanged $AGENT {netns_step}\n\
             unshare --mount --propagation unchanged $AGENT {netns_step}\n\
             echo host: $(findmnt -rn -o PROPAGATION $D/run/netns) $(findmnt -rn $D/run/netns | wc -l)\n\
             mkdir $D/flags\n\
             unshare --mount --propagation slave sh -c \
               'touch $D/flags/up; while [ ! -e $D/flags/go ]; do sleep 0.05; done; \
                echo agent: $(stat -f -c %T $D/run/netns/x)' &\n\
             while [ ! -e $D/flags/up ]; do sleep 0.05; done\n\
             touch $D/run/netns/x && mount --bind /proc/self/ns/net $D/run/netns/x && touch $D/flags/go\n\
             wait"
        ),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].ends_with("is now a shared mount point"), "{out}");
    assert!(lines[1].ends_with("was a mount point already; made shared"), "{out}");
    assert_eq!(lines[2], "host: shared 1", "{out}");
    assert_eq!(lines[3], "agent: nsfs", "{out}");
    // ip-forward: only the init container's /proc/sys is writable.
    let ns = sluice_tests::Netns::new("slpriv").unwrap();
    ns.sysctl("net.ipv4.ip_forward", "0").unwrap();
    let out = run(&mut ns.cmd(&[&bin("sluice-agent").display().to_string(), "node-init", "ip-forward"])).unwrap();
    assert_eq!(out.trim(), "net.ipv4.ip_forward=1");
    assert_eq!(ns.exec(&["sysctl", "-n", "net.ipv4.ip_forward"]).unwrap().trim(), "1");
}

/// `ctr run` flags for container `c` of the manifest on `node`: host
/// network, its securityContext (capabilities, privileged, read-only root,
/// no-new-privileges, the pod's RuntimeDefault seccomp profile, which is
/// containerd's default profile, as `--seccomp` gives), its volumes bound
/// with their propagation (at the lab node's paths, which its argv and
/// environment use), and its environment.
fn ctr_flags(spec: &Value, c: &Value, node: &Node, env: &[(String, String)]) -> Vec<String> {
    let m = model(spec, c, node);
    let mut f: Vec<String> = vec!["--net-host".into()];
    // ctr sets no_new_privs unless told; kubelet only for
    // `allowPrivilegeEscalation: false`.
    if !m.no_new_privs {
        f.push("--allow-new-privs".into());
    }
    if m.privileged {
        f.push("--privileged".into());
    } else {
        if spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault" {
            f.push("--seccomp".into());
        }
        // ctr starts from its default set (Docker's); drop every one of
        // those, then add the container's.
        for cap in DEFAULT_CAPS {
            if !m.caps.iter().any(|c| c == cap) {
                f.extend(["--cap-drop".into(), cap.to_string()]);
            }
        }
        for cap in &m.caps {
            f.extend(["--cap-add".into(), cap.clone()]);
        }
    }
    if m.read_only_root {
        f.push("--read-only".into());
    }
    for v in c["volumeMounts"].as_array().into_iter().flatten() {
        let host = host_path(spec, c, v["mountPath"].as_str().unwrap()).unwrap();
        let path = lab_path(node, &host).display().to_string();
        std::fs::create_dir_all(&path).unwrap();
        let propagation = match v["mountPropagation"].as_str() {
            Some("Bidirectional") => "rshared",
            Some("HostToContainer") => "rslave",
            _ => "rprivate",
        };
        let ro = if v["readOnly"] == true { ":ro" } else { "" };
        f.extend(["--mount".into(), format!("type=bind,src={path},dst={path},options=rbind:{propagation}{ro}")]);
    }
    for (k, v) in env {
        f.extend(["--env".into(), format!("{k}={v}")]);
    }
    f
}

/// The capabilities `ctr run` gives a container by default.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The DaemonSet's containers on node 0 under containerd + runc (the image
/// from `cargo xtask image`): the init containers, then the agent, which
/// takes over from the lab's agent, with the runtime's own capability
/// handling, containerd's default seccomp profile, a read-only root, masked
/// and read-only /proc paths and rslave volumes. kubelet is not here: its
/// part (the pod spec to a container spec) is done by `ctr_flags`.
#[test]
fn the_daemonset_runs_under_containerd_and_runc() {
    require_root();
    let _one = serial();
    let d = Deployment::from_manifest();
    let mut lab = d.lab(2).unwrap();
    let node = lab.state.nodes[0].clone();
    let bin_dir = bin("sluice-agent").parent().unwrap().to_path_buf();
    let archive = oci::build_sluice_image(&bin_dir, &lab.state.dir.join("sluice-image")).unwrap();
    let c = Containerd::start(&node, &node.dir.join("cni-bin")).unwrap();
    c.import(&archive).unwrap();
    let kubeconfig = lab.state.kubeconfig.clone().unwrap();
    let ctr_command = |container: &Value| {
        let (mut argv, mut env) = command(&d.spec, container, &d.config, &node);
        argv[0] = "sluice-agent".into(); // the image's
        env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        let mut flags = ctr_flags(&d.spec, container, &node, &env);
        // The stand-in for the service account: the lab's kubeconfig, and
        // CA certificates (kube's TLS setup wants some when the kubeconfig
        // names no CA, as the lab's plain-HTTP one does; in a cluster the
        // service account's CA is used).
        for ro in [kubeconfig.display().to_string(), "/etc/ssl/certs".to_string()] {
            flags.extend(["--mount".into(), format!("type=bind,src={ro},dst={ro},options=rbind:ro")]);
        }
        (flags, argv)
    };
    // Init containers: each runs to completion.
    for (i, init) in d.spec["initContainers"].as_array().unwrap().iter().enumerate() {
        let (flags, argv) = ctr_command(init);
        let id = format!("init{i}");
        let mut args: Vec<&str> = vec!["run", "--rm"];
        args.extend(flags.iter().map(String::as_str));
        args.extend([oci::SLUICE_IMAGE, &id]);
        args.extend(argv.iter().map(String::as_str));
        let out = try_run(&mut c.ctr(&args)).unwrap();
        assert!(
            out.status.success(),
            "init container {}: {}{}",
            init["name"],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("init container {}: {}", init["name"], String::from_utf8_lossy(&out.stdout).trim());
    }
    assert!(node.dir.join("cni-bin/sluice").exists(), "install-cni put no plugin in place");
    // The agent container replaces the lab's agent on node 0.
    lab.kill_agent(0).unwrap();
    let log = |start: u32| node.dir.join(format!("agent-container-{start}.log"));
    let start_agent = |id: &str, start: u32| {
        let (flags, argv) = ctr_command(d.agent());
        let uri = format!("file://{}", log(start).display());
        let mut args: Vec<&str> = vec!["run", "-d", "--log-uri", &uri];
        args.extend(flags.iter().map(String::as_str));
        args.extend([oci::SLUICE_IMAGE, id]);
        args.extend(argv.iter().map(String::as_str));
        run(&mut c.ctr(&args)).unwrap();
    };
    let probe = strings(&d.agent()["readinessProbe"]["exec"]["command"]);
    // `kubectl exec`: the container's process spec (capabilities,
    // environment) with other arguments. (success, stdout + stderr)
    let exec = |id: &str, n: usize, args: &[&str]| {
        let fifo = c.dir.join("fifo").display().to_string();
        let exec_id = format!("e{n}");
        let mut full = vec!["task", "exec", "--exec-id", &exec_id, "--fifo-dir", &fifo, id];
        full.extend(args);
        let out = try_run(&mut c.ctr(&full)).unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    // Ready: this agent has written its conflist (its start-up is over: a
    // restarted agent is pid 1 again, so the state file an earlier one left
    // passes the probe for a moment) and the readiness probe passes.
    let ready = |id: &str, start: u32| {
        let began = std::time::Instant::now();
        let mut n = 0;
        loop {
            n += 1;
            let probe: Vec<&str> = probe.iter().map(String::as_str).collect();
            let log = std::fs::read_to_string(log(start)).unwrap_or_default();
            let (ok, out) = exec(id, n, &probe);
            if ok && log.contains("CNI config written") {
                return;
            }
            if began.elapsed() > std::time::Duration::from_secs(30) {
                panic!("agent container not ready: {out}\n{log}");
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    };
    let check = |id: &str, when: &str| {
        // The runtime gave exactly the manifest's capabilities, seccomp on.
        let out = run(&mut c.ctr(&["task", "ls"])).unwrap();
        let pid: u32 = out
            .lines()
            .find(|l| l.starts_with(id))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no task {id}: {out}"));
        let want = added_capabilities(d.agent()).iter().fold(0u64, |s, c| s | 1 << cap_bit(c));
        let sets = cap_sets(pid);
        for (set, value) in &sets {
            let expect = if set == "CapInh" || set == "CapAmb" { 0 } else { want };
            assert_eq!(*value, expect, "{when}: agent container {set} {value:x}, expected {expect:x}");
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{when}: no seccomp filter:\n{status}");
        assert!(status.lines().any(|l| l == "NoNewPrivs:\t0"), "{when}: no_new_privs, unlike kubelet's:\n{status}");
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let root = mounts.lines().find(|l| l.split(' ').nth(4) == Some("/")).unwrap();
        assert!(root.split(' ').nth(5).unwrap().split(',').any(|o| o == "ro"), "{when}: writable root: {root}");
        let (ok, out) = exec(id, 900, &["sluice-agent", "connectivity-test"]);
        assert!(ok, "{when}: connectivity-test in the agent container:\n{out}");
    };
    start_agent("agent", 1);
    ready("agent", 1);
    check("agent", "first start");
    // A pod added now gets its network from what this agent set up.
    lab.add_pod(0, "n1p9").unwrap();
    let m = lab.matrix();
    assert!(m.all_ok(), "{}", m.render());
    // SIGKILL, and a new container, as kubelet restarts one.
    c.kill("agent").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = try_run(&mut c.ctr(&["task", "rm", "-f", "agent"]));
    run(&mut c.ctr(&["containers", "rm", "agent"])).unwrap();
    start_agent("agent", 2);
    ready("agent", 2);
    check("agent", "after SIGKILL and restart");
    let m = lab.matrix();
    assert!(m.all_ok(), "{}", m.render());
}
