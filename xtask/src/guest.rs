//! `cargo xtask guest <kernel> -- <command>`: run a command on another
//! Linux kernel (issue 26). Debian's own kernel package (`6.1`: bookworm's,
//! no TCX; `6.12`: bookworm-security's, netkit built in) boots in qemu
//! under TCG (this machine's KVM cannot run a stock kernel), with this
//! machine's root shared read-only over 9p under a tmpfs overlay, so the
//! binaries and test executables built here run there. The command runs
//! in the current directory as root; its exit status is the guest's.
//!
//! Cached under `target/guest/<package>/`: the extracted package (kernel,
//! modules, their index from `busybox depmod`) and the initramfs
//! (busybox-static, the kernel's own 9p and overlay modules, `init`).
//! A run writes `uname -r` and the command's status into a writable share
//! (`target/guest/run-<pid>/`), and the host checks the guest really ran
//! the kernel it names.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{repo_root, shell};

pub mod jobs;
pub mod results;
pub mod suite;

/// Modules the first stage needs (each only if the kernel has it as a
/// module; with what they depend on, from `modules.dep`).
const BOOT_MODULES: [&str; 4] = ["virtio_pci", "9pnet_virtio", "9p", "overlay"];

#[derive(clap::Args, Clone, Debug)]
pub struct GuestArgs {
    /// `6.1` or `6.12` (the newest such amd64 package apt knows), or a
    /// package name (`linux-image-...-amd64`).
    pub kernel: String,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 4096)]
    pub memory: u32,
    /// The command (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(args: &GuestArgs) -> Result<()> {
    let run = run_command(&args.kernel, args.memory, &args.command, &mut |line| println!("{line}"))?;
    if run.status != 0 {
        bail!("the command exited with status {} in the {} guest", run.status, run.version);
    }
    Ok(())
}

/// What a guest run came back with.
#[derive(Debug)]
pub struct GuestRun {
    /// The command's exit status in the guest.
    pub status: i32,
    /// The kernel the guest reported (`uname -r`), the one it names.
    pub version: String,
    /// Wall-clock time from qemu's start to its end.
    pub seconds: f64,
}

/// Boot `kernel` (`6.1`, `6.12` or a package name), run `command` there
/// and hand each line of the guest's console to `on_line`. Fails unless
/// the guest reports the kernel it names and the command's status.
pub fn run_command(kernel: &str, memory: u32, command: &[String], on_line: &mut dyn FnMut(&str)) -> Result<GuestRun> {
    shell::require_root("the guest runner (apt-get download, a 9p share of /)")?;
    let package = resolve_package(kernel)?;
    let root = repo_root().join("target/guest");
    let kernel = prepare(&root.join(&package), &package)?;
    boot(&root, &kernel, memory, command, on_line)
}

/// The newest amd64 kernel package of a series (`6.1`, `6.12`), or the
/// name as given.
fn resolve_package(kernel: &str) -> Result<String> {
    if kernel.starts_with("linux-image-") {
        return Ok(kernel.to_string());
    }
    let prefix = match kernel {
        "6.1" => "linux-image-6.1.0-",
        "6.12" => "linux-image-6.12.",
        other => bail!("unknown kernel {other}: say 6.1, 6.12 or a linux-image-... package"),
    };
    let found = shell::output(Command::new("apt-cache").args(["search", "--names-only", &format!("^{prefix}")]))?;
    let mut names: Vec<&str> = found
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.ends_with("-amd64") && !["cloud", "-rt-", "dbg", "unsigned"].iter().any(|x| n.contains(x)))
        .collect();
    names.sort_by_key(|n| version_key(n));
    names
        .last()
        .map(|n| n.to_string())
        .with_context(|| format!("apt knows no {prefix}*-amd64 package (apt-get update?)"))
}

/// The numbers in a package name, for ordering versions.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

struct Kernel {
    version: String,
    vmlinuz: PathBuf,
    initramfs: PathBuf,
    modules: PathBuf,
}

/// Download and extract `package` into `dir` (once), index its modules and
/// build the initramfs.
fn prepare(dir: &Path, package: &str) -> Result<Kernel> {
    let tree = dir.join("root");
    if !tree.join("boot").exists() {
        fs::create_dir_all(dir)?;
        shell::run(Command::new("apt-get").current_dir(dir).args(["download", package]))?;
        let deb = fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("apt-get download wrote no .deb")?;
        fs::create_dir_all(&tree)?;
        shell::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        fs::remove_file(&deb)?;
    }
    let vmlinuz = fs::read_dir(tree.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .context("no vmlinuz in the package")?;
    let version = vmlinuz.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
    let modules = tree.join("lib/modules").join(&version);
    if !modules.join("modules.dep").exists() {
        shell::run(Command::new("busybox").arg("depmod").arg("-b").arg(&tree).arg(&version))?;
    }
    let initramfs = dir.join("initramfs.cpio");
    if !initramfs.exists() {
        build_initramfs(&dir.join("initramfs"), &modules, &initramfs)?;
    }
    Ok(Kernel { version, vmlinuz, initramfs, modules })
}

/// busybox-static, the boot modules (decompressed) and `init`.
fn build_initramfs(work: &Path, modules: &Path, out: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(work);
    for d in ["bin", "modules", "proc", "sys", "dev", "host", "rw", "newroot", "result"] {
        fs::create_dir_all(work.join(d))?;
    }
    fs::copy("/usr/bin/busybox", work.join("bin/busybox"))
        .context("busybox-static (apt-get install busybox-static)")?;
    let dep = fs::read_to_string(modules.join("modules.dep"))?;
    let index: Vec<(String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(path, deps)| (path.to_string(), deps.split_whitespace().map(str::to_string).collect()))
        .collect();
    let name_of =
        |path: &str| path.rsplit('/').next().unwrap_or_default().split('.').next().unwrap_or_default().to_string();
    // Dependencies first (modules.dep lists them so that the last loads first).
    fn order(path: &str, index: &[(String, Vec<String>)], out: &mut Vec<String>) {
        if out.iter().any(|p| p == path) {
            return;
        }
        if let Some((_, deps)) = index.iter().find(|(p, _)| p == path) {
            for d in deps.iter().rev() {
                order(d, index, out);
            }
        }
        out.push(path.to_string());
    }
    let mut paths = Vec::new();
    for name in BOOT_MODULES {
        if let Some((path, _)) = index.iter().find(|(p, _)| name_of(p) == name) {
            order(path, &index, &mut paths);
        }
    }
    let mut loaded = Vec::new();
    for rel in &paths {
        let name = name_of(rel);
        let src = modules.join(rel);
        let dest = work.join("modules").join(format!("{name}.ko"));
        if rel.ends_with(".xz") {
            let out = Command::new("xz").arg("-dc").arg(&src).output().context("xz")?;
            if !out.status.success() {
                bail!("xz -dc {}: {}", src.display(), String::from_utf8_lossy(&out.stderr));
            }
            fs::write(&dest, out.stdout)?;
        } else {
            fs::copy(&src, &dest)?;
        }
        loaded.push(name);
    }
    let insmods: String = loaded.iter().map(|m| format!("insmod /modules/{m}.ko\n")).collect();
    // The result share's path (the same as on the host) comes on the
    // kernel's command line; the second stage is the script there.
    let init = format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{ echo "guest init: a step failed"; poweroff -f; }}
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
R=$(tr ' ' '\n' < /proc/cmdline | grep '^guest_result=' | cut -d= -f2)
{insmods}mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=1048576,cache=loose host /host || fail
mount -t tmpfs tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot || fail
mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576 result "/newroot$R" || fail
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh "$R/stage2"
"#
    );
    fs::write(work.join("init"), init)?;
    shell::run(Command::new("chmod").arg("755").arg(work.join("init")))?;
    let list = shell::output(Command::new("find").arg(".").current_dir(work))?;
    let cpio = Command::new("sh")
        .current_dir(work)
        .arg("-c")
        .arg(format!("busybox cpio -o -H newc > '{}'", out.display()))
        .stdin(std::process::Stdio::piped())
        .spawn();
    let mut child = cpio.context("busybox cpio")?;
    use std::io::Write;
    child.stdin.take().expect("piped").write_all(list.as_bytes())?;
    if !child.wait()?.success() {
        bail!("busybox cpio failed");
    }
    Ok(())
}

/// Boot the guest, run the command, return its status.
fn boot(
    root: &Path,
    kernel: &Kernel,
    memory: u32,
    command: &[String],
    on_line: &mut dyn FnMut(&str),
) -> Result<GuestRun> {
    let share = root.join(format!("run-{}", std::process::id()));
    let _ = fs::remove_dir_all(&share);
    fs::create_dir_all(share.join("bin"))?;
    std::os::unix::fs::symlink("/usr/bin/busybox", share.join("bin/modprobe"))?;
    let cwd = std::env::current_dir()?;
    let quoted: Vec<String> = command.iter().map(|a| format!("'{}'", a.replace('\'', r"'\''"))).collect();
    let stage2 = format!(
        r#"#!/bin/sh
R={share}
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || true
mount -t bpf bpf /sys/fs/bpf
mkdir -p /lib/modules/{ver} && mount --bind {modules} /lib/modules/{ver}
echo $R/bin/modprobe > /proc/sys/kernel/modprobe
uname -r > $R/uname
cd '{cwd}'
export PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
echo "guest: $(uname -r) running: {cmd}"
start=$(date +%s)
{cmd}
echo $? > $R/status
echo "guest: done in $(( $(date +%s) - start )) s, status $(cat $R/status)"
sync
busybox poweroff -f
"#,
        share = share.display(),
        ver = kernel.version,
        modules = kernel.modules.display(),
        cwd = cwd.display(),
        cmd = quoted.join(" "),
    );
    // The first stage mounts the share at the same path in the new root
    // and runs the second stage from there.
    fs::write(share.join("stage2"), stage2)?;
    let append = format!("console=ttyS0 panic=-1 quiet guest_result={}", share.display());
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", &memory.to_string()])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&kernel.initramfs)
        .args(["-append", &append])
        .args(["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap"])
        .arg("-virtfs")
        .arg(format!("local,path={},mount_tag=result,security_model=none", share.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let mut child =
        qemu.spawn().context("qemu-system-x86_64 (cargo xtask setup installs it from bookworm-backports)")?;
    // The serial console: the kernel's and the command's output, with the
    // terminal's carriage returns.
    let mut console = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut raw = Vec::new();
    while std::io::BufRead::read_until(&mut console, b'\n', &mut raw)? > 0 {
        on_line(String::from_utf8_lossy(&raw).trim_end_matches(['\r', '\n']));
        raw.clear();
    }
    let status = child.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("guest {}: {seconds:.0} s (qemu {status})", kernel.version);
    let uname = fs::read_to_string(share.join("uname")).unwrap_or_default();
    if uname.trim() != kernel.version {
        bail!(
            "the guest did not report kernel {} (uname: {:?}): it never ran the command",
            kernel.version,
            uname.trim()
        );
    }
    let code = fs::read_to_string(share.join("status"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .context("the guest wrote no status: the command did not finish")?;
    let _ = fs::remove_dir_all(&share);
    Ok(GuestRun { status: code, version: kernel.version.clone(), seconds })
}
