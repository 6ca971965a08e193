//! Debian's kernel packages, fetched through a private apt configuration under
//! `target/kernels/apt/<suite>/` (its own sources list, lists and cache), so that the
//! machine's own apt sources stay as they are and no kernel is installed on it. The mirrors
//! are the ones the machine's apt configuration names, read at run time.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// A kernel of the matrix: which Debian suite carries it and which upstream series.
pub struct Kernel {
    /// The column label, and the directory its files are prepared in.
    pub label: &'static str,
    pub suite: &'static str,
    /// Packages `linux-image-<series>.*-amd64` qualify; the newest is taken.
    pub series: &'static str,
}

/// Lists newer than this are used as they are: a second run the same day downloads nothing.
const LISTS_FRESH_FOR: Duration = Duration::from_hours(24);

/// The kernel modules the scenario needs that Debian builds as modules (their dependencies
/// follow from each module's `depends`): veth pairs, VXLAN devices, the clsact qdisc and
/// cls_bpf for netlink-attached classifiers, and nftables for the injected drops.
/// `crc32c_generic` comes first: nf_tables needs libcrc32c, whose crc32c is only a soft
/// dependency (`softdep=pre: crc32c`, a crypto alias that `depends` does not name).
pub const MODULES: &[&str] = &["veth", "vxlan", "sch_ingress", "cls_bpf", "crc32c_generic", "nf_tables"];

/// A kernel ready to boot: its image and its modules in load order, decompressed.
pub struct Prepared {
    pub release: String,
    pub package: String,
    pub vmlinuz: PathBuf,
    /// File names in `modules_dir`, dependencies first.
    pub modules: Vec<String>,
    pub modules_dir: PathBuf,
}

/// One apt source of the machine's own configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub uri: String,
    pub suites: Vec<String>,
    pub signed_by: Option<String>,
}

/// The machine's deb sources, from deb822 `.sources` files and one-line `.list` files.
pub fn machine_sources() -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut entries: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        files.extend(entries);
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => sources.extend(parse_deb822(&text)),
            _ if file.ends_with("sources.list") || file.extension().is_some_and(|e| e == "list") => {
                sources.extend(parse_one_line(&text));
            }
            _ => {}
        }
    }
    if sources.is_empty() {
        bail!(
            "no deb sources in /etc/apt/sources.list or /etc/apt/sources.list.d: no mirror to fetch kernels from"
        );
    }
    Ok(sources)
}

fn parse_deb822(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
            })
        };
        let enabled = field("Enabled").is_none_or(|v| !v.eq_ignore_ascii_case("no"));
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        if let (true, true, Some(uris), Some(suites)) = (enabled, is_deb, field("URIs"), field("Suites")) {
            for uri in uris.split_whitespace() {
                sources.push(Source {
                    uri: uri.to_owned(),
                    suites: suites.split_whitespace().map(str::to_owned).collect(),
                    signed_by: field("Signed-By").filter(|s| s.starts_with('/')),
                });
            }
        }
    }
    sources
}

fn parse_one_line(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| l.starts_with("deb ")) {
        let mut rest = line["deb ".len()..].trim();
        let mut signed_by = None;
        if let Some(options) = rest.strip_prefix('[') {
            let Some((options, after)) = options.split_once(']') else { continue };
            signed_by =
                options.split_whitespace().find_map(|o| o.strip_prefix("signed-by=")).map(str::to_owned);
            rest = after.trim();
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            sources.push(Source { uri: uri.to_owned(), suites: vec![suite.to_owned()], signed_by });
        }
    }
    sources
}

/// The machine's source for `suite`'s archive: the security archive for `*-security`
/// suites, the main archive for the others (found by a suite of the machine's own release
/// of the same kind, since the machine has no line for other releases).
pub fn source_for<'a>(sources: &'a [Source], suite: &str) -> Result<&'a Source> {
    let security = suite.ends_with("-security");
    sources
        .iter()
        .find(|s| s.suites.iter().any(|own| own.ends_with("-security") == security && !own.contains('/')))
        .with_context(|| {
            format!(
                "the machine's apt sources name no {} archive to fetch {suite} from",
                if security { "security" } else { "main" }
            )
        })
}

/// A private apt configuration for one suite.
pub struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    /// Writes `dir`'s sources list for `suite` from the machine's `source`.
    pub fn new(dir: PathBuf, source: &Source, suite: &str) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.display()))?;
        }
        let options = source.signed_by.as_ref().map(|key| format!("[signed-by={key}] ")).unwrap_or_default();
        let line = format!("deb {options}{} {suite} main\n", source.uri);
        let list = dir.join("sources.list");
        if std::fs::read_to_string(&list).ok().as_deref() != Some(&line) {
            std::fs::write(&list, line)?;
            // Lists of another source are stale.
            let _ = std::fs::remove_file(dir.join("updated"));
        }
        // An empty dpkg status: what the machine has installed plays no part here.
        let status = dir.join("status");
        if !status.exists() {
            std::fs::write(&status, "")?;
        }
        Ok(Self { dir })
    }

    /// `program` (apt-get or apt-cache) with this configuration in place of the machine's
    /// sources, lists and cache (the rest of the machine's apt configuration, such as a
    /// proxy, still applies).
    fn command(&self, program: &str) -> Command {
        let dir = &self.dir;
        let mut command = Command::new(program);
        for (key, value) in [
            ("Dir::Etc::SourceList", dir.join("sources.list")),
            ("Dir::Etc::SourceParts", PathBuf::from("/dev/null")),
            ("Dir::State", dir.clone()),
            ("Dir::State::Lists", dir.join("lists")),
            ("Dir::State::status", dir.join("status")),
            ("Dir::Cache", dir.join("cache")),
            ("APT::Architectures", PathBuf::from("amd64")),
            ("APT::Architectures::", PathBuf::from("amd64")),
            ("Acquire::Languages", PathBuf::from("none")),
            // Downloads land in target/, which apt's unprivileged `_apt` user cannot reach.
            ("APT::Sandbox::User", PathBuf::from("root")),
        ] {
            command.arg("-o").arg(format!("{key}={}", value.display()));
        }
        command
    }

    /// `apt-get update`, unless the lists are less than a day old.
    pub fn update(&self) -> Result<()> {
        let marker = self.dir.join("updated");
        let fresh = std::fs::metadata(&marker)
            .and_then(|m| m.modified())
            .is_ok_and(|at| SystemTime::now().duration_since(at).is_ok_and(|age| age < LISTS_FRESH_FOR));
        if fresh {
            return Ok(());
        }
        retried(|| cmd::run(self.command("apt-get").args(["update", "-q"])))?;
        std::fs::write(&marker, "")?;
        Ok(())
    }

    /// The newest `linux-image-<series>.*-amd64` package, its unsigned build if there is one.
    pub fn newest_image(&self, series: &str) -> Result<String> {
        let names = cmd::output(self.command("apt-cache").args(["pkgnames", "linux-image-"]))
            .context("apt-cache pkgnames failed")?;
        let mut best: Option<(Vec<u64>, String)> = None;
        let available: BTreeSet<&str> = names.lines().collect();
        for name in &available {
            let Some(release) = image_release(name, series) else { continue };
            let unsigned = format!("{name}-unsigned");
            let name = if available.contains(unsigned.as_str()) { unsigned } else { (*name).to_owned() };
            let key = version_key(release);
            if best.as_ref().is_none_or(|(k, _)| key > *k) {
                best = Some((key, name));
            }
        }
        best.map(|(_, name)| name)
            .with_context(|| format!("no linux-image-{series}.*-amd64 package in {}", self.dir.display()))
    }

    /// Downloads `package`'s .deb into `into` unless a .deb of it is there already.
    pub fn download(&self, package: &str, into: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(into)?;
        let version = cmd::output(self.command("apt-cache").args(["show", "--no-all-versions", package]))
            .and_then(|show| show.lines().find_map(|l| l.strip_prefix("Version: ").map(str::to_owned)))
            .with_context(|| format!("apt-cache show {package}"))?;
        // The file name apt gives it: `:` in an epoch becomes `%3a`.
        let file = into.join(format!("{package}_{}_amd64.deb", version.replace(':', "%3a")));
        if file.is_file() {
            println!("kernels: {} (cached)", file.display());
            return Ok(file);
        }
        retried(|| cmd::run(self.command("apt-get").current_dir(into).args(["download", "-q", package])))?;
        if !file.is_file() {
            bail!("apt-get download {package} left no {}", file.display());
        }
        Ok(file)
    }
}

/// Runs `step` up to three times: the mirror's handler now and then fails a request.
fn retried(mut step: impl FnMut() -> Result<()>) -> Result<()> {
    let mut last = None;
    for attempt in 1..=3 {
        match step() {
            Ok(()) => return Ok(()),
            Err(err) => {
                eprintln!("kernels: attempt {attempt} failed: {err:#}");
                last = Some(err);
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }
    Err(last.expect("three attempts"))
}

/// The release part of `linux-image-<release>-amd64` when it is of `series`
/// (`5.10.0-46`, `6.12.95+deb12`); flavours such as `cloud` or `rt` and debug packages
/// are not.
fn image_release<'a>(name: &'a str, series: &str) -> Option<&'a str> {
    let release = name.strip_prefix("linux-image-")?.strip_suffix("-amd64")?;
    let after = release.strip_prefix(series)?.strip_prefix('.')?;
    let plain = after.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
        && !after.contains("cloud")
        && !after.contains("rt");
    plain.then_some(release)
}

/// Orders releases by their numbers: `6.12.95+deb12` after `6.12.9+deb12`.
fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Extracts `deb` (dpkg-deb -x) and keeps what a boot needs in `dir`: the kernel image and
/// [`MODULES`] with their dependencies, decompressed. A `dir` prepared from the same
/// package is used as it is.
pub fn prepare(deb: &Path, dir: &Path) -> Result<Prepared> {
    let package = deb.file_name().context("a .deb file name")?.to_string_lossy().into_owned();
    let manifest = dir.join("prepared");
    if let Ok(text) = std::fs::read_to_string(&manifest)
        && let Some(prepared) = read_manifest(&text, dir, &package)
    {
        return Ok(prepared);
    }
    let _ = std::fs::remove_dir_all(dir);
    let mut scratch = dir.as_os_str().to_owned();
    scratch.push(".extract");
    let extracted = TempDir::new(PathBuf::from(scratch))?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&extracted.0))?;
    let boot = extracted.0.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .with_context(|| format!("no vmlinuz in {}", boot.display()))?;
    let release = vmlinuz.file_name().unwrap_or_default().to_string_lossy()["vmlinuz-".len()..].to_owned();
    let tree = extracted.0.join("lib/modules").join(&release);
    let modules = module_order(&tree, MODULES)?;
    let modules_dir = dir.join("modules");
    std::fs::create_dir_all(&modules_dir)?;
    std::fs::copy(&vmlinuz, dir.join("vmlinuz"))?;
    let mut names = Vec::new();
    for module in &modules {
        let name = format!("{}.ko", module_name(module));
        std::fs::write(modules_dir.join(&name), decompressed(module)?)?;
        names.push(name);
    }
    std::fs::write(&manifest, format!("{}\n{release}\n{}\n", manifest_key(&package), names.join(" ")))?;
    Ok(Prepared { release, package, vmlinuz: dir.join("vmlinuz"), modules: names, modules_dir })
}

/// What a prepared directory was made from: the package and the modules asked for.
fn manifest_key(package: &str) -> String {
    format!("{package} {}", MODULES.join(","))
}

fn read_manifest(text: &str, dir: &Path, package: &str) -> Option<Prepared> {
    let mut lines = text.lines();
    (lines.next()? == manifest_key(package)).then_some(())?;
    let release = lines.next()?.to_owned();
    let modules: Vec<String> = lines.next()?.split_whitespace().map(str::to_owned).collect();
    let modules_dir = dir.join("modules");
    let complete = dir.join("vmlinuz").is_file() && modules.iter().all(|m| modules_dir.join(m).is_file());
    complete.then(|| Prepared {
        release,
        package: package.to_owned(),
        vmlinuz: dir.join("vmlinuz"),
        modules,
        modules_dir,
    })
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(path: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A module's name as the kernel knows it (`-` and `_` are the same to it).
fn module_name(path: &Path) -> String {
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    file.split(".ko").next().unwrap_or_default().replace('-', "_")
}

/// The module files under `tree` for `wanted` and everything they depend on, dependencies
/// first; modules built into the kernel are left out.
pub fn module_order(tree: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    let mut files = std::collections::BTreeMap::new();
    collect_modules(&tree.join("kernel"), &mut files)?;
    let builtin: BTreeSet<String> = std::fs::read_to_string(tree.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(|line| module_name(Path::new(line)))
        .collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        visit(name, &files, &builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

fn collect_modules(dir: &Path, files: &mut std::collections::BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_modules(&path, files)?;
        } else if path.to_string_lossy().contains(".ko") {
            files.insert(module_name(&path), path);
        }
    }
    Ok(())
}

fn visit(
    name: &str,
    files: &std::collections::BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<PathBuf>,
) -> Result<()> {
    let name = name.replace('-', "_");
    if !seen.insert(name.clone()) || builtin.contains(&name) {
        return Ok(());
    }
    let file =
        files.get(&name).with_context(|| format!("no module {name} in this kernel, built in or not"))?;
    for dependency in depends(&decompressed(file)?)? {
        visit(&dependency, files, builtin, seen, order)?;
    }
    order.push(file.clone());
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo` section.
fn depends(module: &[u8]) -> Result<Vec<String>> {
    use object::{Object as _, ObjectSection as _};
    let elf = object::File::parse(module).context("parsing a kernel module")?;
    let modinfo = elf.section_by_name(".modinfo").context("a module without .modinfo")?.data()?;
    Ok(modinfo
        .split(|&b| b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|list| String::from_utf8_lossy(list).split(',').map(str::to_owned).collect::<Vec<_>>())
        .filter(|name| !name.is_empty())
        .collect())
}

/// A module file's ELF bytes (`.ko`, `.ko.xz` or `.ko.zst`).
fn decompressed(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        return std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    };
    let output = Command::new(tool)
        .args(["-d", "-c"])
        .arg(path)
        .output()
        .with_context(|| format!("running {tool} (cargo xtask setup installs it)"))?;
    if !output.status.success() {
        bail!("{tool} -d -c {}: {}", path.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::{Source, image_release, parse_deb822, parse_one_line, source_for, version_key};

    #[test]
    fn machine_sources_in_both_formats() {
        let deb822 = "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n\nTypes: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb-src\nURIs: http://src.invalid\nSuites: bookworm\n";
        let sources = parse_deb822(deb822);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].signed_by.as_deref(), Some("/usr/share/keyrings/k.gpg"));
        assert_eq!(
            source_for(&sources, "bullseye-security").unwrap().uri,
            "http://mirror.invalid/debian-security"
        );
        assert_eq!(source_for(&sources, "bookworm-backports").unwrap().uri, "http://mirror.invalid/debian");
        let lines =
            parse_one_line("# x\ndeb [arch=amd64 signed-by=/k.gpg] http://m.invalid/debian bookworm main\n");
        assert_eq!(
            lines,
            vec![Source {
                uri: "http://m.invalid/debian".into(),
                suites: vec!["bookworm".into()],
                signed_by: Some("/k.gpg".into())
            }]
        );
    }

    #[test]
    fn only_plain_amd64_images_of_the_series_qualify_and_the_newest_wins() {
        assert_eq!(image_release("linux-image-5.10.0-46-amd64", "5.10"), Some("5.10.0-46"));
        assert_eq!(image_release("linux-image-6.12.95+deb12-amd64", "6.12"), Some("6.12.95+deb12"));
        assert_eq!(image_release("linux-image-6.1.0-50-cloud-amd64", "6.1"), None);
        assert_eq!(image_release("linux-image-6.1.0-50-rt-amd64", "6.1"), None);
        assert_eq!(image_release("linux-image-6.12.9-amd64", "6.1"), None);
        assert_eq!(image_release("linux-image-6.1.0-50-amd64-dbg", "6.1"), None);
        assert!(version_key("6.12.95+deb12") > version_key("6.12.9+deb12"));
        assert!(version_key("5.10.0-46") > version_key("5.10.0-9"));
    }
}
