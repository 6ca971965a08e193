//! `cargo xtask setup`: everything a fresh Debian machine needs to build and test cniguard.
//!
//! Building Rust for `bpfel-unknown-none` needs a compiler that can rebuild `core`
//! (`-Z build-std=core`, so the library source must be installed) and a `bpf-linker` built
//! against the same LLVM major version as that compiler. Two routes give that:
//!
//! * **rustup**: a rustup toolchain (nightly) that has the `rust-src` component;
//! * **debian**: Debian's `rustc-web`, `cargo-web` and `rust-web-src` packages, which ship
//!   the library source with the compiler.
//!
//! Whichever applies is linked as the rustup toolchain [`BPF_TOOLCHAIN`], which
//! `daemon/build.rs` hands to aya-build, so the rest of the build never needs to know the
//! route. Every step checks first and only installs what is missing.
//!
//! Besides the Debian packages the tests run as real peers, the tests and the lab run the
//! real MLServer: `mlserver` pinned at [`cniguard_lab::mlserver::VERSION`], from PyPI, into
//! a virtualenv at `target/mlserver-venv` made with the machine's `python3` (about two
//! minutes the first time; Debian's `python3-venv` where the venv module is missing).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{checks, cmd};

/// The live page's npm package (uPlot), which `daemon/build.rs` embeds.
const LIVE_PAGE: &str = "daemon/page";

/// The rustup toolchain name that `daemon/build.rs` builds the eBPF programs with.
pub const BPF_TOOLCHAIN: &str = "cniguard-bpf";

/// Debian packages the integration tests and the lab run as real peers, and why.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip and tc: network namespaces, veth pairs, qdiscs and filters"),
    ("prometheus", "promtool, and the lab's Prometheus"),
    ("bird2", "the BGP daemon Calico runs, for the lab's BGP sessions"),
    ("dnsmasq", "the lab's cluster DNS server"),
    ("nftables", "the lab's injected faults (dropping VXLAN, blocking a port)"),
    (
        "prometheus-alertmanager",
        "delivers the rollback alert to `cniguard rollback-hook` in its tests and the lab",
    ),
    ("buildah", "`cargo xtask image`: the Containerfile's final stage from the binary built here"),
    (
        "runc",
        "the container tests: the DaemonSets' pods as an OCI runtime runs them (crun and podman run are refused by this machine's cgroups)",
    ),
    ("qemu-system-x86", "boots Debian's kernels for the kernel matrix (`cargo xtask kernels`, TCG)"),
    ("busybox-static", "the kernel matrix guests' init, shell, mount and insmod"),
    ("xz-utils", "decompresses the kernel matrix's `.ko.xz` modules"),
    ("zstd", "decompresses the kernel matrix's `.ko.zst` modules"),
    ("binutils", "readelf: checks that the kernel matrix's cniguard is statically linked"),
    ("chromium", "the live page's and the demo report's tests, in a real browser (headless)"),
    ("tcpdump", "`cargo xtask bench udp`: a packet capture on the same traffic, next to cniguard"),
];

/// Debian packages that hold a compiler able to build `core` for the BPF target.
const DEBIAN_COMPILER_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "rust-web-src"];

/// Where rustc looks for the `core` source that `-Z build-std=core` rebuilds.
const LIBRARY_SOURCE: &str = "lib/rustlib/src/rust/library/core";

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Only the build toolchain; skip the packages the tests need.
    #[arg(long)]
    pub build_only: bool,
}

pub fn run(args: &SetupArgs) -> Result<()> {
    preflight()?;
    let mut apt = Apt::default();

    let compiler = compiler_route(&mut apt)?;
    println!("setup: eBPF compiler route: {compiler}");
    link_toolchain(&compiler.sysroot)?;
    let llvm_major = llvm_major(BPF_TOOLCHAIN)?;

    let mut packages = vec![format!("llvm-{llvm_major}-dev"), "zlib1g-dev".into(), "libzstd-dev".into()];
    if !args.build_only {
        packages.extend(TEST_PACKAGES.iter().map(|(name, _)| (*name).to_owned()));
    }
    apt.install(&packages, "bpf-linker's LLVM, and the tests' real peers")?;
    install_bpf_linker(llvm_major)?;
    install_node(&mut apt)?;
    npm_ci(LIVE_PAGE, "uplot, the live page's charting library, embedded in cniguard at build time")?;
    if !args.build_only {
        npm_ci(
            checks::DASHBOARD_VALIDATOR,
            "@grafana/schema and typescript, the dashboards' schema validator",
        )?;
        install_mlserver(&mut apt)?;
    }
    mount_kernel_filesystems()?;
    println!("setup: done (eBPF toolchain `{BPF_TOOLCHAIN}`, LLVM {llvm_major})");
    Ok(())
}

fn preflight() -> Result<()> {
    if std::env::consts::OS != "linux" {
        bail!("cniguard builds and runs on Linux only (eBPF); this is {}", std::env::consts::OS);
    }
    if !cmd::on_path("apt-get") || !Path::new("/etc/debian_version").exists() {
        bail!(
            "unsupported system: `cargo xtask setup` installs Debian packages with apt-get \
             (Debian 12 or newer). Elsewhere install by hand: a nightly rustup toolchain with \
             rust-src, bpf-linker built for that toolchain's LLVM, iproute2 and promtool; then \
             run `rustup toolchain link {BPF_TOOLCHAIN} <that toolchain's sysroot>`"
        );
    }
    if !cmd::on_path("rustup") {
        bail!(
            "rustup is not on PATH: install it from https://rustup.rs (the host toolchain comes from rustup)"
        );
    }
    if !is_root() {
        bail!("setup installs packages and mounts kernel filesystems: run it as root");
    }
    Ok(())
}

fn is_root() -> bool {
    // `id -u` avoids a libc dependency for one call.
    cmd::output(Command::new("id").arg("-u")).as_deref() == Some("0")
}

/// A compiler that can build `core` for the BPF target, and how it was found.
struct CompilerRoute {
    name: String,
    sysroot: PathBuf,
}

impl std::fmt::Display for CompilerRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.sysroot.display())
    }
}

fn compiler_route(apt: &mut Apt) -> Result<CompilerRoute> {
    if let Some(sysroot) = std::env::var_os("CNIGUARD_BPF_SYSROOT") {
        let sysroot = PathBuf::from(sysroot);
        if !sysroot.join(LIBRARY_SOURCE).is_dir() {
            bail!("CNIGUARD_BPF_SYSROOT={} has no {LIBRARY_SOURCE}", sysroot.display());
        }
        return Ok(CompilerRoute { name: "CNIGUARD_BPF_SYSROOT".into(), sysroot });
    }
    let toolchains = cmd::output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    for toolchain in toolchains.lines().filter_map(|line| line.split_whitespace().next()) {
        if toolchain == BPF_TOOLCHAIN || !toolchain.starts_with("nightly") {
            continue;
        }
        if let Some(sysroot) = sysroot_of(toolchain)
            && sysroot.join(LIBRARY_SOURCE).is_dir()
        {
            return Ok(CompilerRoute {
                name: format!("rustup toolchain {toolchain} with rust-src"),
                sysroot,
            });
        }
    }
    println!(
        "setup: no rustup nightly with rust-src here; using Debian's Rust, which ships the library source"
    );
    apt.install(
        &DEBIAN_COMPILER_PACKAGES.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>(),
        "a Rust compiler with the core library source",
    )?;
    let sysroot = PathBuf::from("/usr");
    if !sysroot.join(LIBRARY_SOURCE).is_dir() {
        bail!(
            "installed {} but /usr/{LIBRARY_SOURCE} is missing; this Debian release's rust-web-src \
             does not ship the library source. Install a nightly toolchain with rust-src instead \
             (`rustup toolchain install nightly --component rust-src`)",
            DEBIAN_COMPILER_PACKAGES.join(", ")
        );
    }
    Ok(CompilerRoute { name: "Debian rustc-web".into(), sysroot })
}

fn sysroot_of(toolchain: &str) -> Option<PathBuf> {
    cmd::output(Command::new("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]))
        .map(PathBuf::from)
}

/// Links `sysroot` as [`BPF_TOOLCHAIN`] unless that link already points there.
fn link_toolchain(sysroot: &Path) -> Result<()> {
    if sysroot_of(BPF_TOOLCHAIN).is_some_and(|current| same_path(&current, sysroot)) {
        println!("setup: rustup toolchain {BPF_TOOLCHAIN} -> {} (already linked)", sysroot.display());
        return Ok(());
    }
    println!("setup: linking rustup toolchain {BPF_TOOLCHAIN} -> {}", sysroot.display());
    cmd::run(Command::new("rustup").args(["toolchain", "link", BPF_TOOLCHAIN]).arg(sysroot))
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The LLVM major version `toolchain`'s rustc emits bitcode for.
fn llvm_major(toolchain: &str) -> Result<u32> {
    let verbose = cmd::output(Command::new("rustup").args(["run", toolchain, "rustc", "-vV"]))
        .with_context(|| format!("`rustup run {toolchain} rustc -vV` failed"))?;
    parse_llvm_major(&verbose)
        .with_context(|| format!("no LLVM version in `rustc -vV` of {toolchain}:\n{verbose}"))
}

fn parse_llvm_major(rustc_verbose_version: &str) -> Option<u32> {
    let version = rustc_verbose_version.lines().find_map(|line| line.strip_prefix("LLVM version: "))?;
    version.split('.').next()?.trim().parse().ok()
}

/// Installs bpf-linker against LLVM `major` unless one built for that LLVM is already there.
///
/// bpf-linker does not print the LLVM it links, so a marker next to the binary records it.
fn install_bpf_linker(major: u32) -> Result<()> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let marker = cargo_home.join("bin").join(".bpf-linker-llvm");
    let installed = cargo_home.join("bin").join("bpf-linker");
    if installed.is_file() && std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == major.to_string()) {
        println!("setup: bpf-linker for LLVM {major} already installed");
        return Ok(());
    }
    println!("setup: installing bpf-linker built against LLVM {major} (cargo install, about a minute)");
    let llvm_bin = format!("/usr/lib/llvm-{major}/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![PathBuf::from(&llvm_bin)];
    paths.extend(std::env::split_paths(&path));
    cmd::run(
        Command::new("cargo")
            .env("PATH", std::env::join_paths(paths)?)
            .args(["install", "--locked", "--force", "bpf-linker", "--no-default-features", "--features"])
            .arg(format!("llvm-{major}")),
    )?;
    std::fs::write(&marker, format!("{major}\n")).with_context(|| format!("writing {}", marker.display()))
}

/// Node.js and npm, for the npm packages below.
fn install_node(apt: &mut Apt) -> Result<()> {
    if !cmd::on_path("node") || !cmd::on_path("npm") {
        apt.install(
            &["nodejs".into(), "npm".into()],
            "Node.js and npm, for the npm packages the build and the checks use",
        )?;
    }
    Ok(())
}

/// The npm packages the lock file in `dir` (from the workspace root) pins: `npm ci` runs
/// only when the lock file differs from the one last installed, recorded in
/// `node_modules/.cniguard-installed-lock`.
fn npm_ci(dir: &str, what: &str) -> Result<()> {
    let dir = crate::workspace::workspace_root().join(dir);
    let lock_path = dir.join("package-lock.json");
    let lock = std::fs::read(&lock_path).with_context(|| format!("reading {}", lock_path.display()))?;
    let marker = dir.join("node_modules").join(".cniguard-installed-lock");
    if std::fs::read(&marker).is_ok_and(|installed| installed == lock) {
        println!("setup: npm packages of {} present", lock_path.display());
        return Ok(());
    }
    println!("setup: installing the npm packages {} pins ({what}): npm ci", lock_path.display());
    cmd::run(Command::new("npm").current_dir(&dir).args([
        "ci",
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
    ]))?;
    std::fs::write(&marker, lock).with_context(|| format!("writing {}", marker.display()))
}

/// The real MLServer, pinned, in its own virtualenv under `target/` (never the system's
/// site-packages): `pip install mlserver==<VERSION>` runs only when the virtualenv's marker
/// names another version or its `mlserver` is missing.
fn install_mlserver(apt: &mut Apt) -> Result<()> {
    use cniguard_lab::mlserver::{VENV, VERSION};
    let requirement = format!("mlserver=={VERSION}");
    let venv = crate::workspace::workspace_root().join("target").join(VENV);
    let marker = venv.join(".cniguard-installed");
    if venv.join("bin").join("mlserver").is_file()
        && std::fs::read_to_string(&marker).is_ok_and(|installed| installed.trim() == requirement)
    {
        println!("setup: {requirement} present in {}", venv.display());
        return Ok(());
    }
    if !cmd::on_path("python3") {
        apt.install(&["python3".into()], "Python for the real MLServer")?;
    }
    let has_venv = |python: &str| {
        Command::new(python)
            .args(["-c", "import venv, ensurepip"])
            .status()
            .is_ok_and(|status| status.success())
    };
    if !has_venv("python3") {
        apt.install(&["python3-venv".into()], "the venv module, for MLServer's virtualenv")?;
    }
    println!(
        "setup: installing {requirement} from PyPI into {} (the real MLServer the lab and the localhost tests run; about 2 minutes)",
        venv.display()
    );
    cmd::run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv))?;
    cmd::run(
        Command::new(venv.join("bin").join("python"))
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"])
            .arg(&requirement),
    )?;
    std::fs::write(&marker, format!("{requirement}\n"))
        .with_context(|| format!("writing {}", marker.display()))
}

/// bpffs (for pinned maps), mounted where the kernel expects it. (The tracepoint probes are
/// raw tracepoints: they need no tracefs.)
fn mount_kernel_filesystems() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_, mount_point, kind) = (fields.next(), fields.next(), fields.next());
        mount_point == Some("/sys/fs/bpf") && kind == Some("bpf")
    });
    if mounted {
        println!("setup: bpffs is mounted at /sys/fs/bpf");
    } else {
        println!("setup: mounting bpffs at /sys/fs/bpf");
        cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}

/// apt-get, with `apt-get update` run at most once and only when something is missing.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn install(&mut self, packages: &[String], why: &str) -> Result<()> {
        let missing: Vec<&String> = packages.iter().filter(|p| !is_installed(p)).collect();
        if missing.is_empty() {
            println!("setup: apt packages present: {}", packages.join(" "));
            return Ok(());
        }
        let names: Vec<&str> = missing.iter().map(|p| p.as_str()).collect();
        println!("setup: installing apt packages ({why}): {}", names.join(" "));
        if !self.updated {
            cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        cmd::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&names),
        )
    }
}

fn is_installed(package: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.ends_with("install ok installed"))
}

#[cfg(test)]
mod tests {
    use super::parse_llvm_major;

    #[test]
    fn llvm_major_from_rustc_verbose_version() {
        let text = "rustc 1.96.0 (abc 2026-05-01)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.8\n";
        assert_eq!(parse_llvm_major(text), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0\n"), None);
    }
}
