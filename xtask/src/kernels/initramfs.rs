//! The guest's whole userland, as a gzip-compressed cpio (newc) archive: busybox, the
//! static cniguard, its workload and the scenario, `ip`, `bridge` and `nft` with their
//! shared libraries, a kernel's modules, and an init that runs the scenario and powers off.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::debian::Prepared;

/// busybox's applets the init script and the harness call.
const APPLETS: &[&str] = &["sh", "mount", "mkdir", "insmod", "poweroff", "sysctl", "cat", "ln", "sleep"];

/// Programs taken from the machine with their libraries: the lab's harness drives
/// namespaces, links and neighbours with `ip` and `bridge`, the scenario's drops with `nft`.
pub const HOST_PROGRAMS: &[&str] = &["ip", "bridge", "nft"];

/// The statically linked programs the scenario runs, by their name in the guest's /bin.
pub struct StaticPrograms {
    pub cniguard: PathBuf,
    pub workload: PathBuf,
    pub scenario: PathBuf,
    pub busybox: PathBuf,
}

/// Runs in the guest as PID 1: kernel filesystems, the kernel's modules, the scenario,
/// power off. Everything it prints goes to the serial console the host reads.
fn init_script(modules: &[String]) -> String {
    let mut insmod = String::new();
    for module in modules {
        let _ = writeln!(
            insmod,
            "insmod /lib/modules/{module} || echo \"{} error insmod {module} failed\"",
            cniguard_kernel_scenario::PREFIX
        );
    }
    format!(
        "#!/bin/sh\n\
         export PATH=/bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t tmpfs tmpfs /tmp\n\
         mount -t tmpfs tmpfs /run\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mount -t tracefs tracefs /sys/kernel/tracing\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         {insmod}\
         CNIGUARD_BIN=/bin/cniguard CNIGUARD_WORKLOAD_BIN=/bin/cniguard-workload RUST_LOG=cniguard=debug,info \\\n\
           /bin/cniguard-kernel-scenario\n\
         poweroff -f\n"
    )
}

/// An archive entry: a file's bytes (taken from a path when written), a directory or a
/// symbolic link.
enum Entry {
    File { source: PathBuf, mode: u32 },
    Bytes { bytes: Vec<u8>, mode: u32 },
    Dir,
    Symlink(String),
}

/// Writes the initramfs for `kernel` to `output`.
pub fn build(kernel: &Prepared, programs: &StaticPrograms, output: &Path) -> Result<()> {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for dir in ["bin", "dev", "proc", "sys", "tmp", "run", "etc", "lib", "lib/modules", "lib64", "var"] {
        entries.insert(dir.to_owned(), Entry::Dir);
    }
    entries.insert("var/run".into(), Entry::Symlink("../run".into()));
    entries.insert(
        "init".into(),
        Entry::Bytes { bytes: init_script(&kernel.modules).into_bytes(), mode: 0o755 },
    );
    for (name, source) in [
        ("busybox", &programs.busybox),
        ("cniguard", &programs.cniguard),
        ("cniguard-workload", &programs.workload),
        ("cniguard-kernel-scenario", &programs.scenario),
    ] {
        entries.insert(format!("bin/{name}"), Entry::File { source: source.clone(), mode: 0o755 });
    }
    for applet in APPLETS {
        entries.insert(format!("bin/{applet}"), Entry::Symlink("busybox".into()));
    }
    for program in HOST_PROGRAMS {
        let path = which(program)?;
        entries.insert(format!("bin/{program}"), Entry::File { source: path.clone(), mode: 0o755 });
        for library in shared_libraries(&path)? {
            let inside = library.strip_prefix("/").unwrap_or(&library).to_string_lossy().into_owned();
            add_parents(&mut entries, &inside);
            entries.insert(inside, Entry::File { source: library, mode: 0o755 });
        }
    }
    for module in &kernel.modules {
        entries.insert(
            format!("lib/modules/{module}"),
            Entry::File { source: kernel.modules_dir.join(module), mode: 0o644 },
        );
    }
    write(&entries, output)
}

fn add_parents(entries: &mut BTreeMap<String, Entry>, path: &str) {
    let mut parent = Path::new(path).parent();
    while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
        entries.entry(dir.to_string_lossy().into_owned()).or_insert(Entry::Dir);
        parent = dir.parent();
    }
}

fn which(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} is not installed (cargo xtask setup installs it)"))
}

/// The shared libraries `program` loads, and its ELF interpreter, as `ldd` resolves them.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(program).output().context("running ldd")?;
    if !output.status.success() {
        bail!("ldd {}: {}", program.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// The archive, entries in path order (parents before children), root-owned.
fn write(entries: &BTreeMap<String, Entry>, output: &Path) -> Result<()> {
    let file = std::fs::File::create(output).with_context(|| format!("creating {}", output.display()))?;
    // Level 1: the guest unpacks it under emulation, where a smaller archive saves little.
    let mut gzip = flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::fast());
    for (inode, (name, entry)) in (1..).zip(entries) {
        let builder = cpio::newc::Builder::new(name).ino(inode).uid(0).gid(0).nlink(1);
        let (builder, bytes) = match entry {
            Entry::File { source, mode } => (
                builder.mode(0o100_000 | mode),
                std::fs::read(source).with_context(|| format!("reading {}", source.display()))?,
            ),
            Entry::Bytes { bytes, mode } => (builder.mode(0o100_000 | mode), bytes.clone()),
            Entry::Dir => (builder.mode(0o040_755).nlink(2), Vec::new()),
            Entry::Symlink(target) => (builder.mode(0o120_777), target.as_bytes().to_vec()),
        };
        let mut writer = builder.write(&mut gzip, u32::try_from(bytes.len())?);
        writer.write_all(&bytes)?;
        writer.finish()?;
    }
    cpio::newc::trailer(&mut gzip)?;
    gzip.finish()?.flush()?;
    Ok(())
}
