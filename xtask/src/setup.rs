//! `cargo xtask setup`: everything sluice needs on a fresh Debian 12
//! machine, installed only from Debian's packages and crates.io.
//! Idempotent: each step checks first and says what it skips.
use std::process::Command;

use anyhow::{Context, Result};

use crate::shell::{self, output, require_root};

/// Debian packages: the eBPF toolchain (rustc 1.96 with std sources and
/// LLVM 22 for bpf-linker), and the tools the tests and lab use.
pub const DEBIAN_PACKAGES: &[&str] = &[
    // eBPF toolchain
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    // networking and test tools
    "iproute2",
    "iputils-ping",
    "tcpdump",
    "bpftool",
    "socat",
    "iptables",
    "nftables",
    "conntrack",
    "procps",
    // CNI chaining and real-runtime tests
    "containernetworking-plugins",
    "containerd",
    "runc",
    "busybox-static",
    // the guest runner (`cargo xtask guest`; qemu comes from backports,
    // see `install_qemu`): the kernel package's modules are .ko.xz
    "xz-utils",
    // benchmarks
    "iperf3",
    // metrics: a real Prometheus scrapes the lab agents
    "prometheus",
];

pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub fn run() -> Result<()> {
    require_root("cargo xtask setup")?;
    install_debian_packages()?;
    install_qemu()?;
    install_bpf_linker()?;
    install_python_tools()?;
    mount_bpffs()?;
    eprintln!("setup: done");
    Ok(())
}

/// Where the agent pins (its default `--bpffs`).
pub const BPFFS: &str = "/sys/fs/bpf";

/// The host's bpffs at /sys/fs/bpf, as systemd mounts it at boot on every
/// Kubernetes node; a machine booted without it (some VMs, minimal init)
/// gets it here. The agent itself refuses to start without it.
fn mount_bpffs() -> Result<()> {
    let fs_type = output(Command::new("stat").args(["-f", "-c", "%T", BPFFS])).unwrap_or_default();
    if fs_type.trim() == "bpf_fs" {
        eprintln!("setup: {BPFFS} is a bpffs, skipping");
        return Ok(());
    }
    eprintln!("setup: mounting the host's bpffs at {BPFFS}");
    std::fs::create_dir_all(BPFFS).with_context(|| format!("create {BPFFS}"))?;
    shell::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

/// Debian's own archive, where the sources file of bookworm-backports is
/// written when no source names that suite yet.
const SOURCES_DIR: &str = "/etc/apt/sources.list.d";
const DEBIAN_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";
const BACKPORTS: &str = "bookworm-backports";
/// The guest runner's emulator. bookworm's qemu 7.2 conflicts with the
/// backports `qemu-utils` Debian images carry, so it comes from backports
/// (10.0.x), without recommends (~100 MB instead of ~1 GB).
const QEMU_PACKAGE: &str = "qemu-system-x86";

/// qemu-system-x86 from bookworm-backports, adding that suite as a
/// sources file of its own (the URI and keyring of debian.sources) when
/// no source names it.
fn install_qemu() -> Result<()> {
    if is_installed(QEMU_PACKAGE) {
        eprintln!("setup: {QEMU_PACKAGE} present, skipping");
        return Ok(());
    }
    let mut listed = Vec::new();
    for entry in std::fs::read_dir(SOURCES_DIR).with_context(|| format!("read {SOURCES_DIR}"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "sources" || x == "list") {
            listed.push(std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?);
        }
    }
    listed.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    if listed.iter().any(|text| names_suite(text, BACKPORTS)) {
        eprintln!("setup: {BACKPORTS} is already an apt source");
    } else {
        let debian = std::fs::read_to_string(DEBIAN_SOURCES).with_context(|| format!("read {DEBIAN_SOURCES}"))?;
        let stanza = backports_stanza(&debian)?;
        eprintln!("setup: adding {BACKPORTS} as {BACKPORTS_SOURCES}");
        std::fs::write(BACKPORTS_SOURCES, stanza).with_context(|| format!("write {BACKPORTS_SOURCES}"))?;
    }
    eprintln!("setup: installing {QEMU_PACKAGE} from {BACKPORTS} (for the guest kernels)");
    shell::run(Command::new("apt-get").arg("update"))?;
    shell::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=600", "install", "-y", "--no-install-recommends", "-t", BACKPORTS])
            .arg(QEMU_PACKAGE),
    )
}

/// The fields of each deb822 stanza (comments dropped; continuation lines
/// joined).
fn deb822_stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stanzas = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                stanzas.push(std::mem::take(&mut current));
            }
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            current.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    if !current.is_empty() {
        stanzas.push(current);
    }
    stanzas
}

/// Whether an apt source (deb822 `.sources` or one-line `.list`) enables
/// `suite`.
fn names_suite(text: &str, suite: &str) -> bool {
    let one_line = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb ") || l.starts_with("deb-src "))
        .any(|l| l.split_whitespace().any(|w| w == suite));
    let deb822 = deb822_stanzas(text).iter().any(|fields| {
        let enabled = !fields.iter().any(|(k, v)| k.eq_ignore_ascii_case("Enabled") && v == "no");
        enabled
            && fields.iter().any(|(k, v)| k.eq_ignore_ascii_case("Suites") && v.split_whitespace().any(|s| s == suite))
    });
    one_line || deb822
}

/// A sources file for bookworm-backports: the URIs and keyring of
/// debian.sources' stanza for bookworm (not the security archive's).
fn backports_stanza(debian_sources: &str) -> Result<String> {
    let field = |fields: &[(String, String)], key: &str| {
        fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.clone())
    };
    let main = deb822_stanzas(debian_sources)
        .into_iter()
        .find(|f| field(f, "Suites").is_some_and(|s| s.split_whitespace().any(|s| s == "bookworm")))
        .with_context(|| format!("{DEBIAN_SOURCES} has no stanza for bookworm to take {BACKPORTS}' URI from"))?;
    let uris = field(&main, "URIs").context("bookworm's stanza has no URIs")?;
    let mut out = format!("Types: deb\nURIs: {uris}\nSuites: {BACKPORTS}\nComponents: main\n");
    if let Some(keyring) = field(&main, "Signed-By") {
        out.push_str(&format!("Signed-By: {keyring}\n"));
    }
    Ok(out)
}

fn is_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .map(|s| s.contains("install ok installed"))
        .unwrap_or(false)
}

fn install_debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES.iter().copied().filter(|p| !is_installed(p)).collect();
    if missing.is_empty() {
        eprintln!("setup: Debian packages present ({} checked), skipping", DEBIAN_PACKAGES.len());
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    shell::run(Command::new("apt-get").arg("update"))?;
    shell::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=600", "install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}

pub fn bpf_linker_path() -> Option<std::path::PathBuf> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from)?;
    let p = home.join(".cargo/bin/bpf-linker");
    p.exists().then_some(p)
}

fn install_bpf_linker() -> Result<()> {
    if let Some(p) = bpf_linker_path() {
        let v = output(Command::new(&p).arg("--version")).unwrap_or_default();
        if v.contains(BPF_LINKER_VERSION) {
            eprintln!("setup: bpf-linker {BPF_LINKER_VERSION} present, skipping");
            return Ok(());
        }
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    shell::run(
        Command::new("cargo")
            .env("PATH", path)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
    .context("install bpf-linker")
}

/// PyPI tools the tests use, in a virtualenv under target/ (pinned).
pub const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.33.0";
/// Draws the benchmark chart.
pub const MATPLOTLIB: &str = "matplotlib==3.9.2";

pub fn venv_dir() -> std::path::PathBuf {
    crate::repo_root().join("target/tools/venv")
}

fn install_python_tools() -> Result<()> {
    let venv = venv_dir();
    let marker = venv.join(format!(".installed-{KUBERNETES_VALIDATE}-{MATPLOTLIB}"));
    if marker.exists() {
        eprintln!("setup: {KUBERNETES_VALIDATE} and {MATPLOTLIB} present, skipping");
        return Ok(());
    }
    eprintln!("setup: installing {KUBERNETES_VALIDATE} and {MATPLOTLIB} into {}", venv.display());
    shell::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    shell::run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", KUBERNETES_VALIDATE, MATPLOTLIB]))?;
    std::fs::write(&marker, b"")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{backports_stanza, names_suite};

    /// debian.sources as Debian 12's images ship it (with the snapshot
    /// comments this machine's has).
    const DEBIAN_SOURCES: &str = "Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

    #[test]
    fn backports_take_the_main_archives_uri_and_keyring() {
        assert_eq!(
            backports_stanza(DEBIAN_SOURCES).unwrap(),
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        let only_security = DEBIAN_SOURCES.split("\n\n").nth(1).unwrap();
        let e = backports_stanza(only_security).unwrap_err().to_string();
        assert!(e.contains("no stanza for bookworm"), "{e}");
    }

    #[test]
    fn a_suite_is_named_by_deb822_or_one_line_sources_unless_disabled() {
        assert!(!names_suite(DEBIAN_SOURCES, "bookworm-backports"));
        assert!(names_suite(DEBIAN_SOURCES, "bookworm-updates"));
        assert!(names_suite(&backports_stanza(DEBIAN_SOURCES).unwrap(), "bookworm-backports"));
        assert!(names_suite("deb http://deb.debian.org/debian bookworm-backports main\n", "bookworm-backports"));
        assert!(!names_suite("# deb http://deb.debian.org/debian bookworm-backports main\n", "bookworm-backports"));
        let disabled = "Types: deb\nURIs: http://x\nSuites: bookworm-backports\nEnabled: no\n";
        assert!(!names_suite(disabled, "bookworm-backports"));
    }
}
