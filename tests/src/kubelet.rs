//! The kubelet's path to the pod network: containerd (Debian's, with runc)
//! with its CRI plugin on a lab node, driven over CRI (`crate::cri`) the
//! way the kubelet drives it. containerd's CRI plugin loads the conflist the
//! node's agent wrote (its `--cni-conf-dir`, no copy), runs the plugins
//! through go-cni, caches results and calls DEL when a sandbox stops.
//!
//! Nothing lands in the root namespaces or the real /etc, /var/lib, /run:
//! - each node has a mount namespace of its own (held by a `sleep` process,
//!   so it outlives containerd restarts as a real node's does), with a tmpfs
//!   over /run/containerd (runc's state and the shims' sockets) and the
//!   node's directory bound over /var/lib/cni (go-cni's result cache, which
//!   DEL after a restart reads);
//! - containerd runs in the node's network namespace and that mount
//!   namespace, with root, state and sockets under the node's directory; the
//!   pod namespaces it makes are mounted under its state directory
//!   (`netns_mounts_under_state_dir`), visible only in that mount namespace;
//! - sandboxes get cgroups under `/sluice-cri-<lab id>-<node>` (the cgroup
//!   parent, as the kubelet's cgroupfs driver gives `/kubepods/...`).
//!
//! Drop stops and removes every sandbox, kills containerd, force-deletes
//! whatever runc still runs, kills what is left in the mount namespace and
//! removes the cgroups: also when a test fails halfway.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{cri::CriClient, lab::Node, run, try_run};

/// The image containerd's CRI plugin runs as every pod's sandbox ("pause").
pub const PAUSE_IMAGE: &str = "docker.io/sluice/pause:test";
/// The image the pods' containers run.
pub const BUSYBOX_IMAGE: &str = "docker.io/sluice/busybox:test";
/// containerd's namespace for everything CRI makes (fixed by the plugin).
pub const K8S_NAMESPACE: &str = "k8s.io";

/// The two images, built offline from Debian's busybox-static: `(pause, busybox)` archives.
pub fn build_images(work: &Path) -> Result<(PathBuf, PathBuf)> {
    let rootfs = work.join("rootfs");
    crate::oci::busybox_rootfs(&rootfs)?;
    let pause_work = work.join("pause");
    let busybox_work = work.join("busybox");
    fs::create_dir_all(&pause_work)?;
    fs::create_dir_all(&busybox_work)?;
    // The sandbox only holds the namespaces; containerd stops it with SIGKILL.
    let pause = crate::oci::build_archive(&rootfs, PAUSE_IMAGE, &["/bin/sleep", "2147483647"], &pause_work)?;
    let busybox = crate::oci::build_archive(&rootfs, BUSYBOX_IMAGE, &["/bin/sh"], &busybox_work)?;
    Ok((pause, busybox))
}

pub struct CriNode {
    pub node: Node,
    /// root, state, socket, config, logs.
    pub dir: PathBuf,
    /// Where containerd loads CNI configuration from: the agent's `--cni-conf-dir`.
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    /// Top of this node's pod cgroups, e.g. `/sluice-cri-<lab>-n1`.
    pub cgroup_root: String,
    /// `sleep` holding the node's mount namespace.
    holder: Child,
    daemon: Option<Child>,
}

impl CriNode {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    /// The CRI plugin's state: the pod namespaces are mounted under `netns/`.
    pub fn cri_state_dir(&self) -> PathBuf {
        self.dir.join("state/io.containerd.grpc.v1.cri")
    }

    /// Set up the node's mount namespace and start containerd in it.
    pub fn start(node: &Node, lab_id: &str, cni_conf_dir: &Path, cni_bin_dir: &Path) -> Result<Self> {
        let dir = node.dir.join("cri");
        let cni_cache = dir.join("cni-cache");
        fs::create_dir_all(&cni_cache)?;
        fs::create_dir_all(dir.join("pods"))?;
        // Mount points (empty directories) for the node's private mounts.
        for p in ["/run/containerd", "/var/lib/cni"] {
            fs::create_dir_all(p)?;
        }
        // "slave": the root namespace's mounts still show up, ours never go back.
        let script = format!(
            "mount -n -t tmpfs sluice-cri /run/containerd && mount -n --bind {cache} /var/lib/cni && exec sleep 2147483647",
            cache = cni_cache.display()
        );
        let holder =
            crate::lab::ns_cmd(&node.netns, &["unshare", "--mount", "--propagation", "slave", "sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start the node's mount namespace holder")?;
        let mut me = Self {
            node: node.clone(),
            dir,
            cni_conf_dir: cni_conf_dir.to_path_buf(),
            cni_bin_dir: cni_bin_dir.to_path_buf(),
            cgroup_root: format!("/sluice-cri-{lab_id}-{}", node.name),
            holder,
            daemon: None,
        };
        // The holder is ready once the shell has exec'd sleep (mounts done).
        let start = Instant::now();
        loop {
            let comm = fs::read_to_string(format!("/proc/{}/comm", me.holder.id())).unwrap_or_default();
            if comm.trim() == "sleep" {
                break;
            }
            if let Ok(Some(status)) = me.holder.try_wait() {
                bail!("mount namespace holder for {} exited: {status}", node.name);
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("mount namespace holder for {} not ready", node.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        fs::write(me.dir.join("config.toml"), me.config())?;
        me.start_containerd()?;
        Ok(me)
    }

    /// containerd's configuration: the CRI plugin on, everything under the
    /// node's directory.
    fn config(&self) -> String {
        format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # Streaming (exec, attach, port-forward) on loopback of the node, any port.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # No AppArmor or SELinux here; hugetlb is not in every cgroup hierarchy.
  disable_apparmor = true
  enable_selinux = false
  disable_hugetlb_controller = true
  # Never ask for an OOM score below containerd's own (a nested machine may refuse).
  restrict_oom_score_adj = true
  # Pod network namespaces under the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # cgroupfs, as the kubelet's cgroupDriver: cgroupfs (no systemd here).
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            root = self.dir.join("root").display(),
            state = self.dir.join("state").display(),
            sock = self.socket().display(),
            pause = PAUSE_IMAGE,
            bin = self.cni_bin_dir.display(),
            conf = self.cni_conf_dir.display(),
        )
    }

    /// A command in the node's network and mount namespaces.
    pub fn node_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder.id().to_string(), "--mount", "--net", "--"]).args(args);
        c
    }

    /// Start containerd (again) and wait until it answers CRI Version.
    pub fn start_containerd(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("containerd.log"))?;
        let config = self.dir.join("config.toml").display().to_string();
        let daemon = self
            .node_cmd(&["containerd", "--config", &config])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start containerd")?;
        self.daemon = Some(daemon);
        let start = Instant::now();
        loop {
            let answered =
                self.socket().exists() && CriClient::connect(&self.socket()).and_then(|c| Ok(c.version()?)).is_ok();
            if answered {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.daemon.as_mut().map(Child::try_wait) {
                bail!("containerd on {} exited ({status}):\n{}", self.node.name, self.log_tail());
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("containerd on {} did not answer CRI:\n{}", self.node.name, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL containerd, as a crash would (shims and pods keep running).
    pub fn kill_containerd(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn client(&self) -> Result<CriClient> {
        CriClient::connect(&self.socket())
    }

    /// `ctr` against this containerd, in the CRI's namespace.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.args(["120", "ctr", "--address", &self.socket().display().to_string(), "--namespace", K8S_NAMESPACE]);
        c.args(args);
        c
    }

    /// Import an image archive where the CRI plugin looks for images.
    pub fn import(&self, archive: &Path) -> Result<()> {
        run(&mut self.ctr(&["images", "import", &archive.display().to_string()])).map(|_| ())
    }

    /// Where pod `name`'s container logs go (the sandbox's log directory).
    pub fn pod_log_dir(&self, name: &str) -> PathBuf {
        self.dir.join("pods").join(name)
    }

    /// Inode of the holder's mount namespace.
    fn mount_ns_ino(&self) -> Option<u64> {
        fs::metadata(format!("/proc/{}/ns/mnt", self.holder.id())).ok().map(|m| m.ino())
    }

    /// SIGKILL every process in the node's mount namespace but the holder
    /// (the shims; containers have mount namespaces of their own).
    fn kill_mount_ns_processes(&self) {
        let Some(ino) = self.mount_ns_ino() else { return };
        let Ok(procs) = fs::read_dir("/proc") else { return };
        for entry in procs.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            if pid == self.holder.id() || pid == std::process::id() {
                continue;
            }
            if fs::metadata(entry.path().join("ns/mnt")).is_ok_and(|m| m.ino() == ino) {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).output();
            }
        }
    }

    /// Remove this node's pod cgroups in every hierarchy, deepest first.
    fn remove_cgroups(&self) {
        fn rmdir_tree(p: &Path) {
            if let Ok(entries) = fs::read_dir(p) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        rmdir_tree(&e.path());
                    }
                }
            }
            let _ = fs::remove_dir(p);
        }
        let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else { return };
        let mut roots: Vec<PathBuf> =
            hierarchies.flatten().map(|h| h.path().join(self.cgroup_root.trim_start_matches('/'))).collect();
        // cgroup v2 alone: the root itself is the hierarchy.
        roots.push(Path::new("/sys/fs/cgroup").join(self.cgroup_root.trim_start_matches('/')));
        for root in roots {
            rmdir_tree(&root);
        }
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        // As the kubelet would on the way out: stop and remove every sandbox.
        if self.daemon.is_some() {
            if let Ok(client) = self.client() {
                for sandbox in client.list_pod_sandbox().unwrap_or_default() {
                    let _ = client.stop_pod_sandbox(&sandbox.id);
                    let _ = client.remove_pod_sandbox(&sandbox.id);
                }
            }
        }
        self.kill_containerd();
        // Whatever runc still runs (a test that failed before stopping its pods).
        let root = format!("/run/containerd/runc/{K8S_NAMESPACE}");
        if let Ok(out) = try_run(&mut self.node_cmd(&["runc", "--root", &root, "list", "-q"])) {
            for id in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()) {
                let _ = try_run(&mut self.node_cmd(&["runc", "--root", &root, "delete", "--force", id]));
            }
        }
        self.kill_mount_ns_processes();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // Killed shims are reaped by init; give the kernel a moment to free cgroups.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            self.remove_cgroups();
            let left = fs::read_dir("/sys/fs/cgroup")
                .map(|h| h.flatten().any(|h| h.path().join(self.cgroup_root.trim_start_matches('/')).exists()))
                .unwrap_or(false);
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
