//! A minimal CNI runtime: runs a conflist's plugins the way containerd or
//! CRI-O do (ADD in order with each result as the next `prevResult`, CHECK
//! with the cached result, DEL in reverse), with `runtimeConfig` filled for
//! the capabilities each plugin declares. Used to test sluice chained with
//! the reference `portmap` and `bandwidth` plugins.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub struct ChainRuntime {
    /// CNI_PATH: where plugin binaries are found by their `type`.
    pub cni_path: PathBuf,
    pub conflist: Value,
    /// The node namespace the plugins run in.
    pub node_netns: String,
    /// PATH given to the plugins (runtimes pass one explicitly).
    pub path: String,
}

pub struct Attachment {
    pub container_id: String,
    /// Full path of the pod namespace.
    pub netns: String,
    pub ifname: String,
    /// `runtimeConfig` values by capability name (`portMappings`, `bandwidth`).
    pub capabilities: Value,
}

/// A CNI_PATH directory with the plugins a chain needs: `sluice` (our
/// binary under its type name) and the reference plugins from /usr/lib/cni.
pub fn cni_bin_dir(dir: &Path, sluice_cni: &Path, reference: &[&str]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let link = |target: &Path, name: &str| -> Result<()> {
        let at = dir.join(name);
        let _ = std::fs::remove_file(&at);
        std::os::unix::fs::symlink(target, &at).with_context(|| format!("link {}", at.display()))
    };
    link(sluice_cni, "sluice")?;
    for name in reference {
        let p = Path::new("/usr/lib/cni").join(name);
        if !p.exists() {
            bail!("{} missing: install Debian's containernetworking-plugins (cargo xtask setup)", p.display());
        }
        link(&p, name)?;
    }
    Ok(dir.to_path_buf())
}

impl ChainRuntime {
    fn plugin_conf(&self, plugin: &Value, att: &Attachment, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        if let Some(caps) = plugin["capabilities"].as_object() {
            let mut rc = serde_json::Map::new();
            for (cap, enabled) in caps {
                if enabled.as_bool() == Some(true) && !att.capabilities[cap].is_null() {
                    rc.insert(cap.clone(), att.capabilities[cap].clone());
                }
            }
            if !rc.is_empty() {
                conf["runtimeConfig"] = Value::Object(rc);
            }
        }
        conf
    }

    fn exec(&self, command: &str, plugin: &Value, att: &Attachment, conf: &Value) -> Result<String> {
        let kind = plugin["type"].as_str().context("plugin without type")?;
        let bin = self.cni_path.join(kind);
        let bin = bin.display().to_string();
        let mut cmd = crate::lab::ns_cmd(&self.node_netns, &[&bin]);
        cmd.env_clear()
            .env("PATH", &self.path)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("start {bin}"))?;
        child.stdin.take().expect("piped").write_all(&serde_json::to_vec(conf)?)?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("{kind} {command} failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(stdout)
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"].as_array().cloned().unwrap_or_default()
    }

    /// ADD through the chain; returns the final result.
    pub fn add(&self, att: &Attachment) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let conf = self.plugin_conf(&plugin, att, prev.as_ref());
            let out = self.exec("ADD", &plugin, att, &conf)?;
            prev = Some(serde_json::from_str(&out).with_context(|| format!("{} result: {out}", plugin["type"]))?);
        }
        prev.context("empty plugin list")
    }

    pub fn check(&self, att: &Attachment, result: &Value) -> Result<()> {
        for plugin in self.plugins() {
            let conf = self.plugin_conf(&plugin, att, Some(result));
            self.exec("CHECK", &plugin, att, &conf)?;
        }
        Ok(())
    }

    pub fn del(&self, att: &Attachment, result: Option<&Value>) -> Result<()> {
        let mut errors = Vec::new();
        for plugin in self.plugins().iter().rev() {
            let conf = self.plugin_conf(plugin, att, result);
            if let Err(e) = self.exec("DEL", plugin, att, &conf) {
                errors.push(format!("{e:#}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("{}", errors.join("; "))
        }
    }
}

/// A directory of the node tools an IPv4-only node offers plugins: the
/// iptables family without `ip6tables`.
///
/// Why: Debian's reference portmap (containernetworking-plugins 1.1.1) checks
/// IPv6 DNAT chains on CHECK whenever `ip6tables` is usable, even for an
/// IPv4-only pod whose ADD made none, and fails (fixed upstream in later
/// releases). Without `ip6tables` on its PATH it checks IPv4 only.
pub fn ipv4_only_tools(dir: &Path) -> Result<String> {
    std::fs::create_dir_all(dir)?;
    for tool in ["iptables", "iptables-save", "iptables-restore", "iptables-nft", "xtables-nft-multi", "tc"] {
        for base in ["/usr/sbin", "/sbin"] {
            let p = Path::new(base).join(tool);
            if p.exists() {
                let at = dir.join(tool);
                let _ = std::fs::remove_file(&at);
                std::os::unix::fs::symlink(&p, &at)?;
                break;
            }
        }
    }
    Ok(format!("{}:/usr/bin:/bin", dir.display()))
}

/// sluice's conflist for `node` with portmap and bandwidth chained after it.
pub fn chained_conflist(sluice_conflist: &Value) -> Value {
    let mut c = sluice_conflist.clone();
    let plugins = c["plugins"].as_array_mut().expect("plugins");
    plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}));
    plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    c
}
