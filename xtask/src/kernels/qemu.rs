//! One boot of a kernel under QEMU (TCG: KVM does not work on this machine kind), with no
//! network device at all: the guest's serial console, read line by line with a hard
//! deadline, and the QEMU process killed whatever happens.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cniguard_kernel_scenario::Report;

/// A QEMU process, killed and reaped on drop.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one boot printed.
pub struct Boot {
    pub reports: Vec<Report>,
    /// Why the boot ended without the scenario's `done`, if it did.
    pub incomplete: Option<String>,
}

/// Boots `vmlinuz` with `initramfs`, writes the serial console to `console_log`, and
/// returns the scenario's reports once it powers off, or when `deadline` has passed.
pub fn boot(vmlinuz: &Path, initramfs: &Path, console_log: &Path, deadline: Duration) -> Result<Boot> {
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args(["-accel", "tcg", "-nic", "none", "-nographic", "-no-reboot", "-m", "1G", "-smp", "1"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        // panic=-1: a kernel panic reboots, which -no-reboot turns into QEMU exiting.
        .args(["-append", "console=ttyS0 quiet loglevel=3 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe. QEMU dies with the thread that started it, so
    // that even an xtask killed outright (where no drop guard runs) leaves no QEMU behind.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut qemu =
        Qemu(command.spawn().context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?);
    let (lines, received) = mpsc::channel();
    let stdout = qemu.0.stdout.take().context("qemu's stdout")?;
    let stderr = qemu.0.stderr.take().context("qemu's stderr")?;
    for stream in [Box::new(stdout) as Box<dyn std::io::Read + Send>, Box::new(stderr)] {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                if lines.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                    break;
                }
            }
        });
    }
    drop(lines);
    let mut log =
        std::fs::File::create(console_log).with_context(|| format!("creating {}", console_log.display()))?;
    let end = Instant::now() + deadline;
    let mut reports = Vec::new();
    let incomplete = loop {
        let left = end.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                writeln!(log, "{}", line.trim_end_matches('\r'))?;
                if let Some(report) = Report::parse(&line) {
                    let done = report == Report::Done;
                    reports.push(report);
                    if done {
                        break None;
                    }
                }
            }
            // Both streams closed: QEMU exited (the guest powered off, or it crashed).
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Some(format!(
                    "the guest stopped before the scenario finished ({})",
                    exit_status(&mut qemu)
                ));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Some(format!("no end of the scenario within {}s: QEMU killed", deadline.as_secs()));
            }
        }
    };
    // After `done` the guest powers off by itself; give it a moment, then the guard kills it.
    let grace = Instant::now() + Duration::from_secs(10);
    while incomplete.is_none() && Instant::now() < grace && qemu.0.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Boot { reports, incomplete })
}

fn exit_status(qemu: &mut Qemu) -> String {
    match qemu.0.wait() {
        Ok(status) => format!("QEMU {status}"),
        Err(err) => format!("QEMU: {err}"),
    }
}
