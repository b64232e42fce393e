//! containerd (Debian's, with runc) started inside a lab node's network
//! namespace, with its own root, state and socket under the lab directory
//! and the CRI plugin disabled, and `ctr` calls made the way a user would.
//!
//! `ctr run --cni` calls CNI plugins itself and reads their configuration
//! only from /etc/cni/net.d and binaries from /opt/cni/bin (results cached in
//! /var/lib/cni): every `ctr` call runs in a private mount namespace where
//! those paths are bind mounts of the node's own lab directories, so nothing
//! is written to the real ones.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{lab::Node, run, try_run};

pub struct Containerd {
    /// containerd namespace, unique per instance: runc's state directory is
    /// shared by every containerd on the machine and keyed by namespace.
    pub namespace: String,
    pub node_netns: String,
    pub dir: PathBuf,
    /// Directory bound over /etc/cni/net.d.
    pub cni_conf_dir: PathBuf,
    /// Directory bound over /opt/cni/bin.
    pub cni_bin_dir: PathBuf,
    daemon: Child,
}

impl Containerd {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    pub fn start(node: &Node, cni_bin_dir: &Path) -> Result<Self> {
        let dir = node.dir.join("containerd");
        fs::create_dir_all(dir.join("fifo"))?;
        fs::create_dir_all(dir.join("cni-cache"))?;
        // Mount points for the bind mounts (empty directories).
        for p in ["/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni"] {
            fs::create_dir_all(p)?;
        }
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = dir.join("c.sock").display(),
        );
        fs::write(dir.join("config.toml"), config)?;
        let log = fs::File::create(dir.join("containerd.log"))?;
        // Its own mount namespace, so the snapshotter's mounts stay in there;
        // "slave" so pod namespaces made later under /run/netns still show up
        // in it (with "private", runc finds an empty file, not the netns).
        let config = dir.join("config.toml").display().to_string();
        let daemon = crate::lab::ns_cmd(
            &node.netns,
            &["unshare", "--mount", "--propagation", "slave", "containerd", "--config", &config],
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start containerd")?;
        let c = Self {
            namespace: crate::unique("sluice-test-"),
            node_netns: node.netns.clone(),
            cni_conf_dir: node.dir.join("cni"),
            cni_bin_dir: cni_bin_dir.to_path_buf(),
            dir,
            daemon,
        };
        let start = Instant::now();
        while try_run(&mut c.ctr(&["version"])).map(|o| !o.status.success()).unwrap_or(true) {
            if start.elapsed() > Duration::from_secs(20) {
                let log = fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default();
                bail!("containerd did not come up:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }

    /// A `ctr` command in the node's network namespace with the CNI paths
    /// bound to this node's directories.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let script = format!(
            "mount -n --bind {conf} /etc/cni/net.d && mount -n --bind {bin} /opt/cni/bin && \
             mount -n --bind {cache} /var/lib/cni && exec timeout 120 ctr --address {sock} --namespace {ns} \"$@\"",
            conf = self.cni_conf_dir.display(),
            bin = self.cni_bin_dir.display(),
            cache = self.dir.join("cni-cache").display(),
            sock = self.socket().display(),
            ns = self.namespace,
        );
        let mut c = crate::lab::ns_cmd(
            &self.node_netns,
            &["unshare", "--mount", "--propagation", "private", "sh", "-c", &script, "ctr"],
        );
        c.args(args);
        c
    }

    pub fn import(&self, archive: &Path) -> Result<()> {
        run(&mut self.ctr(&["images", "import", &archive.display().to_string()])).map(|_| ())
    }

    /// `ctr run --rm --cni` in the foreground, as a child we keep: when the
    /// task is killed, ctr tears the network down with CNI DEL.
    pub fn run_container(&self, image: &str, id: &str, pod_netns: &str, shell: &str) -> Result<Child> {
        let fifo = self.dir.join("fifo").display().to_string();
        let netns = format!("network:/run/netns/{pod_netns}");
        let log = fs::File::create(self.dir.join(format!("{id}.log")))?;
        self.ctr(&["run", "--rm", "--cni", "--with-ns", &netns, "--fifo-dir", &fifo, image, id, "sh", "-c", shell])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("ctr run")
    }

    /// Run a command in a running container; (success, stdout).
    pub fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> Result<(bool, String)> {
        let fifo = self.dir.join("fifo").display().to_string();
        let mut full = vec!["task", "exec", "--exec-id", exec_id, "--fifo-dir", &fifo, id];
        full.extend_from_slice(args);
        let out = try_run(&mut self.ctr(&full))?;
        Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    pub fn kill(&self, id: &str) -> Result<()> {
        run(&mut self.ctr(&["task", "kill", "--signal", "SIGKILL", id])).map(|_| ())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Remove whatever is left, then stop the daemon.
        if let Ok(out) = try_run(&mut self.ctr(&["task", "list", "-q"])) {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = try_run(&mut self.ctr(&["task", "kill", "--signal", "SIGKILL", id]));
                std::thread::sleep(Duration::from_millis(200));
                let _ = try_run(&mut self.ctr(&["task", "rm", "-f", id]));
            }
        }
        if let Ok(out) = try_run(&mut self.ctr(&["containers", "list", "-q"])) {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = try_run(&mut self.ctr(&["containers", "rm", id]));
            }
        }
        let _ = Command::new("kill").args(["-TERM", &self.daemon.id().to_string()]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) && !matches!(self.daemon.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // runc made a cgroup named after the containerd namespace in every
        // hierarchy and leaves it behind.
        for hierarchy in fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            crate::cgroups::remove(&hierarchy.path().join(&self.namespace));
        }
    }
}
