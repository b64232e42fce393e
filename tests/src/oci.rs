//! A one-layer OCI image archive built offline from files on this machine
//! (no registry, no daemon): what the real-runtime tests run.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};
use serde_json::json;

use crate::run;

/// sha256 of a file, hex, using coreutils.
fn sha256(path: &Path) -> Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    Ok(out.split_whitespace().next().context("sha256sum output")?.to_string())
}

fn put_blob(blobs: &Path, src: &Path) -> Result<(String, u64)> {
    let digest = sha256(src)?;
    let size = fs::metadata(src)?.len();
    fs::copy(src, blobs.join(&digest))?;
    Ok((format!("sha256:{digest}"), size))
}

fn put_json_blob(blobs: &Path, scratch: &Path, value: &serde_json::Value) -> Result<(String, u64)> {
    let p = scratch.join("blob.json");
    fs::write(&p, serde_json::to_vec(value)?)?;
    let r = put_blob(blobs, &p)?;
    fs::remove_file(&p)?;
    Ok(r)
}

/// Build `<work>/image.tar`: an OCI image layout whose one layer is
/// `rootfs` (a directory), named `name` (e.g. `docker.io/sluice/busybox:test`).
pub fn build_archive(rootfs: &Path, name: &str, cmd: &[&str], work: &Path) -> Result<PathBuf> {
    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let (layer_digest, layer_size) = put_blob(&blobs, &layer)?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put_json_blob(&blobs, work, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put_json_blob(&blobs, work, &manifest)?;
    let tag = name.rsplit(':').next().unwrap_or("latest");
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let archive = work.join("image.tar");
    run(Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&archive).arg("."))?;
    Ok(archive)
}

/// A root filesystem with Debian's static busybox and the applets the tests use.
pub fn busybox_rootfs(dir: &Path) -> Result<()> {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin)?;
    for d in ["etc", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy("/bin/busybox", bin.join("busybox")).context("copy /bin/busybox (Debian package busybox-static)")?;
    for applet in ["sh", "nc", "ping", "sleep", "cat", "echo", "ip", "hostname", "true"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    Ok(())
}

/// The name `cargo xtask image` gives sluice's image, and the DaemonSet uses.
pub const SLUICE_IMAGE: &str = "localhost/sluice:0.1.0";

/// Shared libraries `binary` loads, as absolute paths (from `ldd`).
fn shared_libs(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = run(Command::new("ldd").arg(binary))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Copy `src` to `<dir>/usr/bin/<name>` with the shared libraries it loads.
fn copy_with_libs(src: &Path, dir: &Path, name: &str) -> Result<()> {
    fs::copy(src, dir.join("usr/bin").join(name)).with_context(|| format!("copy {}", src.display()))?;
    for lib in shared_libs(src)? {
        let dest = dir.join(lib.strip_prefix("/").expect("absolute"));
        fs::create_dir_all(dest.parent().expect("has parent"))?;
        // Follow symlinks: copy the real file under the linked name.
        fs::copy(&lib, &dest).with_context(|| format!("copy {}", lib.display()))?;
    }
    Ok(())
}

/// Where Debian keeps iptables' match and target modules.
const XTABLES_MODULES: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// A root filesystem with sluice's two binaries in /usr/bin, the `nft` and
/// `iptables` (nft backend) the agent drives for masquerade and the forward
/// accept, and exactly the shared libraries (and xtables modules) they load,
/// copied from this Debian 12 host at the same paths: no shell, no package
/// manager, nothing else to patch.
pub fn sluice_rootfs(bin_dir: &Path, dir: &Path) -> Result<()> {
    let usr_bin = dir.join("usr/bin");
    fs::create_dir_all(&usr_bin)?;
    for d in ["etc", "proc", "sys", "dev", "tmp", "run", "var/lib"] {
        fs::create_dir_all(dir.join(d))?;
    }
    for name in ["sluice-agent", "sluice-cni"] {
        copy_with_libs(&bin_dir.join(name), dir, name)?;
    }
    copy_with_libs(Path::new("/usr/sbin/nft"), dir, "nft").context("Debian package nftables")?;
    copy_with_libs(Path::new("/usr/sbin/xtables-nft-multi"), dir, "xtables-nft-multi")
        .context("Debian package iptables")?;
    // The multi-call binary picks its tool by the name it is run as.
    for tool in ["iptables", "iptables-save", "iptables-restore"] {
        std::os::unix::fs::symlink("xtables-nft-multi", usr_bin.join(tool))?;
    }
    let modules = dir.join(XTABLES_MODULES.trim_start_matches('/'));
    fs::create_dir_all(&modules)?;
    for entry in fs::read_dir(XTABLES_MODULES).context("xtables modules (Debian package iptables)")? {
        let entry = entry?;
        fs::copy(entry.path(), modules.join(entry.file_name()))?;
    }
    Ok(())
}

/// sluice's image as an OCI archive at `<work>/image.tar`.
pub fn build_sluice_image(bin_dir: &Path, work: &Path) -> Result<PathBuf> {
    let _ = fs::remove_dir_all(work);
    fs::create_dir_all(work)?;
    let rootfs = work.join("rootfs");
    sluice_rootfs(bin_dir, &rootfs)?;
    build_archive(&rootfs, SLUICE_IMAGE, &["sluice-agent", "--help"], work)
}
