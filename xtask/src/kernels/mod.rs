//! `cargo xtask kernels`: every probe on the kernels production nodes run (issue 12).
//!
//! Debian's own kernel packages are fetched through a private apt configuration
//! ([`debian`]), each booted under QEMU with an initramfs holding the static cniguard and
//! the scenario ([`initramfs`], [`qemu`]), and the scenario's exact counts make a kernel by
//! probe table: `right`, `wrong (...)` or `off: <the daemon's reason>`. Gaps that later
//! items of issue 12 close are listed in [`KNOWN_GAPS`]: the command fails on any other
//! gap, and also when a listed gap is gone, so that the list stays true.

mod debian;
mod initramfs;
mod qemu;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cniguard_kernel_scenario::{PROBES, Report};

use crate::cmd;
use debian::Kernel;

/// The kernels of the matrix (README "Kernels" says how to add one).
const KERNELS: &[Kernel] = &[
    Kernel { label: "5.10", suite: "bullseye-security", series: "5.10" },
    Kernel { label: "6.1", suite: "bookworm", series: "6.1" },
    Kernel { label: "6.12", suite: "bookworm-backports", series: "6.12" },
];

/// What a probe does on a kernel today, where that is not `right` yet.
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "no kernel of the matrix has a gap today; a new kernel's are listed with these"
    )
)]
#[derive(Debug, Clone, Copy)]
enum Today {
    /// The daemon turns it off with a reason containing this.
    Off(&'static str),
    /// It runs, but this count comes out as `got`.
    Counts { aspect: &'static str, got: u64 },
}

struct KnownGap {
    kernel: &'static str,
    probe: &'static str,
    today: Today,
    /// The item of issue 12 that closes it.
    closed_by: &'static str,
}

#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "no kernel of the matrix has a gap today; a new kernel's are listed with these"
    )
)]
const fn gap(kernel: &'static str, probe: &'static str, today: Today, closed_by: &'static str) -> KnownGap {
    KnownGap { kernel, probe, today, closed_by }
}

/// Whoever closes one of these removes its line here (the command fails until they do).
const KNOWN_GAPS: &[KnownGap] = &[];

/// Boots at a time: one per core of this 2-core machine.
const PARALLEL_BOOTS: usize = 2;
/// A boot that has not finished by then is killed: it bounds a hang (TCG takes about a
/// minute per boot here), it measures nothing.
const BOOT_DEADLINE: Duration = Duration::from_mins(8);

pub fn run() -> Result<()> {
    let started = Instant::now();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if let Err(missing) = prerequisites() {
        if ci {
            return Err(missing.context("kernels: cannot run the kernel matrix (CI=true: failing)"));
        }
        println!("kernels: SKIPPED, cannot run: {missing:#} (with CI=true this fails)");
        return Ok(());
    }
    let root = crate::workspace::workspace_root();
    let work = root.join("target/kernels");
    let kernels = fetch_kernels(&work)?;
    let programs = build_static_programs(&root)?;
    let run_dir = work.join("run");
    std::fs::create_dir_all(&run_dir)?;
    let mut boots = Vec::new();
    for (kernel, prepared) in KERNELS.iter().zip(&kernels) {
        let image = run_dir.join(format!("{}.cpio.gz", kernel.label));
        initramfs::build(prepared, &programs, &image)?;
        boots.push((kernel.label, prepared, image, run_dir.join(format!("{}.console.log", kernel.label))));
    }
    println!("kernels: booting {} kernels under QEMU (TCG), {PARALLEL_BOOTS} at a time", boots.len());
    let results = parallel(&boots, |(label, prepared, image, log)| {
        let began = Instant::now();
        let boot = qemu::boot(&prepared.vmlinuz, image, log, BOOT_DEADLINE);
        println!(
            "kernels: {label} ({}) booted and ran in {}s; console: {}",
            prepared.release,
            began.elapsed().as_secs(),
            log.display()
        );
        boot
    });
    let mut columns = Vec::new();
    let mut problems = Vec::new();
    for ((label, prepared, _, log), boot) in boots.iter().zip(results) {
        let boot = boot?;
        let errors: Vec<String> = boot
            .reports
            .iter()
            .filter_map(|r| match r {
                Report::Error(message) => Some(format!("{label}: {message} (see {})", log.display())),
                _ => None,
            })
            .collect();
        // A scenario that reported its error stops early; that is the problem to show.
        if let (Some(why), true) = (&boot.incomplete, errors.is_empty()) {
            problems.push(format!("{label}: {why} (see {})", log.display()));
        }
        problems.extend(errors);
        columns.push(Column { label, release: prepared.release.clone(), outcomes: outcomes(&boot.reports) });
    }
    let verdicts = judge(&columns, KNOWN_GAPS);
    print!("{}", table(&columns, &host_release()));
    for verdict in &verdicts {
        println!("kernels: {verdict}");
    }
    let failures: Vec<&Verdict> = verdicts.iter().filter(|v| v.fails()).collect();
    println!("kernels: the matrix took {}s", started.elapsed().as_secs());
    if !problems.is_empty() || !failures.is_empty() {
        for problem in &problems {
            println!("kernels: FAIL: {problem}");
        }
        bail!(
            "the kernel matrix failed: {} unexpected results, {} broken boots",
            failures.len(),
            problems.len()
        );
    }
    println!("kernels: every probe is right or a known gap");
    Ok(())
}

/// What the matrix needs from the machine: root (as everything here: apt-get, and the
/// private apt configuration's lock files), QEMU, and the tools the packages, the modules
/// and the initramfs are handled with.
fn prerequisites() -> Result<()> {
    let root = cmd::output(Command::new("id").arg("-u")).as_deref() == Some("0");
    if !root {
        bail!("not root (apt-get download and the private apt configuration need it)");
    }
    for program in ["qemu-system-x86_64", "apt-get", "apt-cache", "dpkg-deb", "xz", "zstd", "ldd", "readelf"]
    {
        if !cmd::on_path(program) {
            bail!("{program} is not installed: run `cargo xtask setup`");
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        bail!("/bin/busybox is missing: run `cargo xtask setup` (Debian's busybox-static)");
    }
    Ok(())
}

/// Each kernel's newest package, downloaded once and prepared for booting.
fn fetch_kernels(work: &Path) -> Result<Vec<debian::Prepared>> {
    let sources = debian::machine_sources()?;
    let mut prepared = Vec::new();
    let mut debs = Vec::new();
    for kernel in KERNELS {
        let source = debian::source_for(&sources, kernel.suite)?;
        let apt = debian::PrivateApt::new(work.join("apt").join(kernel.suite), source, kernel.suite)?;
        apt.update()?;
        let package = apt.newest_image(kernel.series)?;
        let deb = apt.download(&package, &work.join("debs"))?;
        debs.push(deb.clone());
        let ready = debian::prepare(&deb, &work.join(kernel.label))?;
        println!(
            "kernels: {}: {} ({}), modules: {}",
            kernel.label,
            ready.package,
            ready.release,
            ready.modules.join(" ")
        );
        prepared.push(ready);
    }
    // Packages an older run fetched, since replaced by newer ones, go.
    for entry in std::fs::read_dir(work.join("debs"))?.filter_map(Result::ok) {
        if !debs.contains(&entry.path()) {
            println!("kernels: removing {} (no longer the newest)", entry.path().display());
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(prepared)
}

/// cniguard, its workload and the scenario, statically linked as the Containerfile builds
/// cniguard, checked to need no shared library.
fn build_static_programs(root: &Path) -> Result<initramfs::StaticPrograms> {
    let dir = crate::static_build::build(root)?;
    let programs = initramfs::StaticPrograms {
        cniguard: dir.join("cniguard"),
        workload: dir.join("cniguard-workload"),
        scenario: dir.join("cniguard-kernel-scenario"),
        busybox: PathBuf::from("/bin/busybox"),
    };
    for program in [&programs.cniguard, &programs.workload, &programs.scenario, &programs.busybox] {
        let dynamic = cmd::output(Command::new("readelf").arg("-d").arg(program))
            .with_context(|| format!("readelf -d {}", program.display()))?;
        if dynamic.contains("(NEEDED)") {
            bail!("{} is not statically linked:\n{dynamic}", program.display());
        }
    }
    Ok(programs)
}

/// Runs `work` on every item, [`PARALLEL_BOOTS`] at a time; results in item order.
fn parallel<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_BOOTS.min(items.len()) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(index) else { break };
                    let result = work(item);
                    results.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(index, result);
                }
            });
        }
    });
    results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).into_values().collect()
}

/// A probe on one kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Right,
    /// The counts that came out wrong: (aspect, got, want).
    Wrong(Vec<(String, u64, u64)>),
    Off(String),
    /// The scenario never got to it.
    Missing,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Right => write!(f, "right"),
            Self::Wrong(counts) => {
                let counts: Vec<String> = counts
                    .iter()
                    .map(|(aspect, got, want)| format!("{aspect}: got {got}, want {want}"))
                    .collect();
                write!(f, "wrong ({})", counts.join("; "))
            }
            Self::Off(reason) => write!(f, "off: {reason}"),
            Self::Missing => write!(f, "not run"),
        }
    }
}

struct Column {
    label: &'static str,
    release: String,
    outcomes: BTreeMap<String, Outcome>,
}

/// Each probe's outcome from a boot's reports.
fn outcomes(reports: &[Report]) -> BTreeMap<String, Outcome> {
    let mut outcomes: BTreeMap<String, Outcome> =
        PROBES.iter().map(|p| ((*p).to_owned(), Outcome::Missing)).collect();
    for report in reports {
        match report {
            Report::Off { probe, reason } => {
                outcomes.insert(probe.clone(), Outcome::Off(reason.clone()));
            }
            Report::Check { probe, aspect, got, want } => {
                let outcome = outcomes.entry(probe.clone()).or_insert(Outcome::Missing);
                match outcome {
                    Outcome::Missing | Outcome::Right if got == want => *outcome = Outcome::Right,
                    Outcome::Missing | Outcome::Right => {
                        *outcome = Outcome::Wrong(vec![(aspect.clone(), *got, *want)]);
                    }
                    Outcome::Wrong(counts) if got != want => counts.push((aspect.clone(), *got, *want)),
                    Outcome::Wrong(_) | Outcome::Off(_) => {}
                }
            }
            Report::Kernel(_) | Report::Error(_) | Report::Done => {}
        }
    }
    outcomes
}

/// The judgement of one cell that is not plainly right.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A gap listed in [`KNOWN_GAPS`], as it is today.
    Known { kernel: String, probe: String, closed_by: &'static str },
    /// A listed gap that is gone: the list must lose its line.
    Closed { kernel: String, probe: String, closed_by: &'static str, now: String },
    /// Wrong, off or missing where no gap is listed, or otherwise than listed.
    Unexpected { kernel: String, probe: String, outcome: String },
}

impl Verdict {
    fn fails(&self) -> bool {
        !matches!(self, Self::Known { .. })
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Known { kernel, probe, closed_by } => {
                write!(f, "known gap: {probe} on {kernel} (as listed; {closed_by} closes it)")
            }
            Self::Closed { kernel, probe, closed_by, now } => write!(
                f,
                "FAIL: known gap closed: {probe} on {kernel} is now {now}; remove its line from KNOWN_GAPS in xtask/src/kernels/mod.rs and the README's table ({closed_by})"
            ),
            Self::Unexpected { kernel, probe, outcome } => {
                write!(f, "FAIL: {probe} on {kernel}: {outcome} (not a known gap)")
            }
        }
    }
}

/// Every cell that is not right, and every listed gap, judged against `gaps`.
fn judge(columns: &[Column], gaps: &[KnownGap]) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    for column in columns {
        for (probe, outcome) in &column.outcomes {
            let listed: Vec<&KnownGap> =
                gaps.iter().filter(|g| g.kernel == column.label && g.probe == probe).collect();
            let (kernel, probe_name) = (column.label.to_owned(), probe.clone());
            if listed.is_empty() {
                if *outcome != Outcome::Right {
                    verdicts.push(Verdict::Unexpected {
                        kernel,
                        probe: probe_name,
                        outcome: outcome.to_string(),
                    });
                }
                continue;
            }
            for gap in listed {
                let as_listed = match (gap.today, outcome) {
                    (Today::Off(reason), Outcome::Off(said)) => said.contains(reason),
                    // Only the listed count is wrong, and as listed.
                    (Today::Counts { aspect, got }, Outcome::Wrong(counts)) => {
                        counts.iter().any(|(a, g, _)| a == aspect && *g == got)
                            && counts.iter().all(|(a, _, _)| a == aspect)
                    }
                    _ => false,
                };
                let (kernel, probe) = (kernel.clone(), probe_name.clone());
                verdicts.push(if as_listed {
                    Verdict::Known { kernel, probe, closed_by: gap.closed_by }
                } else if *outcome == Outcome::Right {
                    Verdict::Closed { kernel, probe, closed_by: gap.closed_by, now: outcome.to_string() }
                } else {
                    Verdict::Unexpected { kernel, probe, outcome: outcome.to_string() }
                });
            }
        }
    }
    verdicts
}

/// The kernel by probe table, probes down and kernels across, with the host kernel's
/// column (the existing tests cover it).
fn table(columns: &[Column], host: &str) -> String {
    let mut header = vec!["probe".to_owned()];
    header.extend(columns.iter().map(|c| format!("{} ({})", c.label, c.release)));
    header.push(format!("{host} (host)"));
    let mut rows = vec![header];
    for probe in PROBES {
        let mut row = vec![(*probe).to_owned()];
        for column in columns {
            row.push(
                column.outcomes.get(*probe).map_or_else(|| Outcome::Missing.to_string(), ToString::to_string),
            );
        }
        row.push("covered by `cargo xtask test`".to_owned());
        rows.push(row);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut text = String::new();
    for (n, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, &w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(text, "| {} |", cells.join(" | "));
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
            let _ = writeln!(text, "|-{}-|", rule.join("-|-"));
        }
    }
    text
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|r| r.trim().to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::{Column, KnownGap, Outcome, Today, Verdict, gap, judge, outcomes};
    use cniguard_kernel_scenario::Report;

    fn check(probe: &str, aspect: &str, got: u64, want: u64) -> Report {
        Report::Check { probe: probe.into(), aspect: aspect.into(), got, want }
    }

    #[test]
    fn a_probe_is_right_when_every_count_is_and_off_wins() {
        let reports = [
            check("dns", "queries", 17, 17),
            check("dns", "timeouts", 3, 3),
            check("tcp_health", "retransmits", 2, 2),
            check("tcp_health", "resets_sent", 0, 4),
            Report::Off { probe: "drops".into(), reason: "no enum".into() },
        ];
        let outcomes = outcomes(&reports);
        assert_eq!(outcomes["dns"], Outcome::Right);
        assert_eq!(outcomes["tcp_health"], Outcome::Wrong(vec![("resets_sent".into(), 0, 4)]));
        assert_eq!(outcomes["tcp_health"].to_string(), "wrong (resets_sent: got 0, want 4)");
        assert_eq!(outcomes["drops"], Outcome::Off("no enum".into()));
        assert_eq!(outcomes["localhost"], Outcome::Missing);
    }

    fn column(outcomes: &[(&str, Outcome)]) -> Column {
        Column {
            label: "6.1",
            release: "6.1.0-50-amd64".into(),
            outcomes: outcomes.iter().map(|(p, o)| ((*p).to_owned(), o.clone())).collect(),
        }
    }

    const GAPS: &[KnownGap] = &[
        gap("6.1", "localhost", Today::Off("bpf_get_netns_cookie"), "item 2"),
        gap("6.1", "tcp_health", Today::Counts { aspect: "resets_sent", got: 0 }, "item 4"),
    ];

    #[test]
    fn known_gaps_pass_as_listed_and_fail_once_closed_or_changed() {
        let wrong = |aspect: &str, got| Outcome::Wrong(vec![(aspect.into(), got, 4)]);
        let today = column(&[
            ("localhost", Outcome::Off("unknown func bpf_get_netns_cookie#122".into())),
            ("tcp_health", wrong("resets_sent", 0)),
            ("dns", Outcome::Right),
        ]);
        assert!(judge(&[today], GAPS).iter().all(|v| matches!(v, Verdict::Known { .. })));

        let fixed = column(&[("localhost", Outcome::Right), ("tcp_health", Outcome::Right)]);
        let verdicts = judge(&[fixed], GAPS);
        assert_eq!(verdicts.len(), 2);
        assert!(verdicts.iter().all(|v| matches!(v, Verdict::Closed { .. }) && v.fails()), "{verdicts:?}");
        assert!(verdicts[0].to_string().contains("remove its line from KNOWN_GAPS"));

        let worse = column(&[
            ("localhost", Outcome::Off("no cgroup v2 mount".into())),
            ("tcp_health", wrong("retransmits", 1)),
            ("dns", Outcome::Missing),
        ]);
        let verdicts = judge(&[worse], GAPS);
        assert_eq!(verdicts.len(), 3);
        assert!(verdicts.iter().all(|v| matches!(v, Verdict::Unexpected { .. })), "{verdicts:?}");
    }
}
