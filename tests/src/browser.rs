//! A real browser for the live page's and the demo report's tests: Debian's Chromium,
//! headless, started inside a namespace (the lab's node, where the daemon listens) with
//! `nsenter --net`, as a person's browser on that node would reach it. What the page
//! shows is read from the DOM after its scripts ran (`--dump-dom`, with virtual time so
//! its fetches and timers have happened), and screenshots are written for a person to
//! look at.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

const CHROMIUM: &str = "/usr/bin/chromium";
/// How long the page runs in virtual time before the DOM is read: two refreshes of the
/// live page's 5 s.
const VIRTUAL_TIME_MS: &str = "12000";
/// A Chromium that has not finished in this long is stuck: killed, and the test fails.
const DEADLINE: Duration = Duration::from_secs(90);

/// Where screenshots go: `target/browser/`.
#[must_use]
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser")
}

/// Headless Chromium in the network namespace `netns` (or the test's own).
pub struct Browser {
    netns: Option<String>,
}

impl Browser {
    /// # Errors
    /// If Chromium is not installed (`cargo xtask setup` installs it).
    pub fn new(netns: Option<&str>) -> Result<Self> {
        if !Path::new(CHROMIUM).exists() {
            bail!("{CHROMIUM} is missing: run `cargo xtask setup` (it installs Debian's chromium)");
        }
        Ok(Self { netns: netns.map(str::to_owned) })
    }

    /// The DOM of `url` once its scripts have run.
    ///
    /// # Errors
    /// If Chromium fails or hangs.
    pub fn dom(&self, url: &str) -> Result<String> {
        self.run(&["--window-size=1280,800", "--dump-dom", url])
    }

    /// A screenshot of `url` at `width` x `height`, written to `path`.
    ///
    /// # Errors
    /// If Chromium fails or writes nothing.
    pub fn screenshot(&self, url: &str, (width, height): (u32, u32), path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(path);
        self.run(&[
            &format!("--window-size={width},{height}"),
            "--hide-scrollbars",
            &format!("--screenshot={}", path.display()),
            url,
        ])?;
        anyhow::ensure!(path.exists(), "Chromium wrote no screenshot to {}", path.display());
        Ok(())
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let profile = std::env::temp_dir().join(cniguard_lab::names::unique("chromium"));
        std::fs::create_dir_all(&profile)?;
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command.arg(format!("--net=/var/run/netns/{netns}")).arg(CHROMIUM);
                command
            }
            None => Command::new(CHROMIUM),
        };
        // Without the background-networking flags, Chromium keeps calling Google's hosts,
        // which this machine's closed network refuses; as root it needs --no-sandbox.
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                &format!("--user-data-dir={}", profile.display()),
                &format!("--virtual-time-budget={VIRTUAL_TIME_MS}"),
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = command.spawn().context("starting chromium")?;
        let output = wait_with_deadline(child);
        let _ = std::fs::remove_dir_all(&profile);
        let output = output?;
        if !output.status.success() {
            bail!("chromium {args:?} failed ({}):\n{}", output.status, first_lines(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn first_lines(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().take(20).collect::<Vec<_>>().join("\n")
}

/// The child's output, or an error once it has run past [`DEADLINE`] (it is killed).
fn wait_with_deadline(mut child: std::process::Child) -> Result<std::process::Output> {
    // Read both pipes meanwhile: a full pipe would stall Chromium.
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let reader = |pipe: &mut dyn std::io::Read| {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    };
    let started = Instant::now();
    std::thread::scope(|scope| {
        let out = scope.spawn(|| reader(&mut stdout));
        let err = scope.spawn(|| reader(&mut stderr));
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err.join().unwrap_or_default();
                bail!("chromium did not finish in {DEADLINE:?}:\n{}", first_lines(&stderr));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        Ok(std::process::Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    })
}

/// The opening tag of the first element of `dom` whose tag holds `attribute`
/// (`data-chart="vxlan"`), if any.
#[must_use]
pub fn tag_with<'a>(dom: &'a str, attribute: &str) -> Option<&'a str> {
    tags_with(dom, attribute).into_iter().next()
}

/// Every opening tag of `dom` that holds `attribute`.
#[must_use]
pub fn tags_with<'a>(dom: &'a str, attribute: &str) -> Vec<&'a str> {
    let mut tags = Vec::new();
    let mut from = 0;
    while let Some(found) = dom[from..].find(attribute) {
        let at = from + found;
        if let (Some(start), Some(end)) = (dom[..at].rfind('<'), dom[at..].find('>')) {
            tags.push(&dom[start..=at + end]);
        }
        from = at + attribute.len();
    }
    tags
}

/// The text of the first element with `id`, up to its first child element.
#[must_use]
pub fn text_of<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let tag = tag_with(dom, &format!("id=\"{id}\""))?;
    let start = dom.find(tag)? + tag.len();
    let end = start + dom[start..].find('<')?;
    Some(dom[start..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_text_are_found_by_attribute() {
        let dom = r#"<body data-ready="true"><div class="chart" data-chart="vxlan" data-drawn="true"></div><div class="chart" data-chart="bgp"></div><span id="phase">calico</span></body>"#;
        assert_eq!(tag_with(dom, "data-chart=\"bgp\""), Some(r#"<div class="chart" data-chart="bgp">"#));
        assert_eq!(tags_with(dom, "class=\"chart\"").len(), 2);
        assert_eq!(text_of(dom, "phase"), Some("calico"));
        assert_eq!(tag_with(dom, "data-chart=\"drops\""), None);
    }
}
