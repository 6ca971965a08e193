//! One lab node's agent in its pod: `cniguard-pod --id ID -- <the lab's command line>`.
//!
//! The lab starts a node's cniguard as `/usr/bin/env NODE_NAME=<node> <cniguard> run
//! --listen <address>:9464 --config <file> --state-dir <dir> [more]`, inside the node's
//! network namespace. This runs the image's cniguard instead, under runc, with the OCI spec
//! made from `deploy/daemonset.yaml` (`cniguard_tests::pod`): the manifest's own args, the
//! node's address as `status.hostIP`, the lab's configuration file as the ConfigMap, its
//! state directory as the `/var/lib/cniguard` hostPath, and this process's network
//! namespace as the node's network. SIGTERM and SIGINT go to the container through
//! `runc kill`, as the runtime sends them; it exits with the container's code, after
//! deleting the container and its bundle.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use cniguard_tests::pod::{Container, Edits, Image, Manifest, Node};
use nix::sys::signal::{SigSet, Signal};

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("cniguard-pod: {err:#}");
            ExitCode::from(125)
        }
    }
}

/// What the lab's command line says.
struct LabCommand {
    node: String,
    host_ip: String,
    config: String,
    state_dir: String,
    more: Vec<String>,
}

fn parse(args: &[String]) -> Result<LabCommand> {
    let mut node = None;
    let mut listen = None;
    let mut config = None;
    let mut state_dir = None;
    let mut more = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--listen" => listen = rest.next().cloned(),
            "--config" => config = rest.next().cloned(),
            "--state-dir" => state_dir = rest.next().cloned(),
            "run" | "/usr/bin/env" => {}
            other if other.starts_with("NODE_NAME=") => node = Some(other["NODE_NAME=".len()..].to_owned()),
            other if other.ends_with("/cniguard") => {}
            other => more.push(other.to_owned()),
        }
    }
    let listen = listen.context("no --listen")?;
    let (host_ip, port) = listen.rsplit_once(':').context("--listen without a port")?;
    ensure!(port == "9464", "the lab listens on {port}, the manifest on 9464");
    Ok(LabCommand {
        node: node.context("no NODE_NAME")?,
        host_ip: host_ip.to_owned(),
        config: config.context("no --config")?,
        state_dir: state_dir.context("no --state-dir")?,
        more,
    })
}

fn run() -> Result<u8> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(split) = args.iter().position(|a| a == "--") else {
        bail!("usage: cniguard-pod --id ID -- COMMAND")
    };
    let id = match &args[..split] {
        [flag, id] if flag == "--id" => id.clone(),
        _ => bail!("usage: cniguard-pod --id ID -- COMMAND"),
    };
    let lab = parse(&args[split + 1..])?;
    let image = Image::exported().context("no image in target/image/: run `cargo xtask image`")?;
    let manifest = Manifest::daemonset("daemonset.yaml");

    // Block the signals before any thread starts, so that only the forwarding thread
    // takes them (std resets the mask in runc, the child).
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block()?;

    let lab_dir = Path::new(&lab.config).parent().context("--config has no directory")?.to_owned();
    let bundle = Container::bundle_named(&image, &id)?;
    let config_dir = bundle.join("configmap");
    std::fs::create_dir_all(&config_dir)?;
    std::fs::copy(&lab.config, config_dir.join("cniguard.toml")).with_context(|| lab.config.clone())?;
    let node = Node {
        name: lab.node,
        host_ip: lab.host_ip,
        netns: Some(format!("/proc/{}/ns/net", std::process::id()).into()),
        host_paths: BTreeMap::from([("/var/lib/cniguard".to_owned(), lab.state_dir.into())]),
        config_maps: BTreeMap::from([("config".to_owned(), config_dir)]),
        // The lab's directory, where its check targets file is (the configuration names it).
        extra_read_only: vec![lab_dir],
    };
    let mut container_args: Vec<String> = manifest.container_args();
    container_args.extend(lab.more);
    let edits = Edits { args: Some(container_args), ..Edits::default() };
    let spec = manifest.oci_spec(&image.config, &bundle.join("rootfs"), &node, &edits)?;
    let mut container = Container::start_inheriting(bundle, &spec)?;

    let forward_to = id.clone();
    std::thread::spawn(move || {
        while let Ok(signal) = signals.wait() {
            let name = if signal == Signal::SIGINT { "INT" } else { "TERM" };
            let _ = std::process::Command::new("runc").args(["kill", &forward_to, name]).status();
        }
    });
    let status = container.wait(Duration::from_secs(u64::from(u32::MAX)))?;
    Ok(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(128))
}
