//! The command line: `cniguard run`, `check`, `status`, `rollback-hook` and `echo`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Overrides, Settings};
use crate::node::ebpf::EbpfLogLevel;
use crate::node::namespaces::NetnsScope;
use crate::node::preflight;
use crate::probes::attach::TcAttachMode;

/// Exit code for a configuration mistake (as clap uses for bad flags).
const EXIT_CONFIG: u8 = 2;
/// Exit code when the machine or process lacks something required (see `cniguard check`).
const EXIT_PREFLIGHT: u8 = 3;

#[derive(Debug, Parser)]
#[command(name = "cniguard", version, about = "eBPF network diagnostics for a Flannel to Calico CNI cutover")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the probes, follow interfaces and serve /metrics until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Check the kernel and this process for what `run` needs; one line per requirement.
    Check,
    /// Print a running daemon's rollback triggers (state, how long, the numbers behind
    /// them), its active checks and its phase.
    Status(StatusArgs),
    /// Print a running daemon's findings: the named causes of a failing cutover, each with
    /// its evidence and the fix in one line.
    Diagnose(StatusArgs),
    /// Receive Alertmanager webhooks and run the rollback command once the rollback alert
    /// has fired long enough. Dry-run (logs what it would run) until --arm.
    RollbackHook(RollbackHookArgs),
    /// Answer HTTP on an address: the target other nodes' pod-to-pod checks connect to.
    Echo(EchoArgs),
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The daemon's listen address.
    #[arg(long, value_name = "ADDR", default_value = crate::config::DEFAULT_LISTEN)]
    address: std::net::SocketAddr,
    /// Print the status as JSON (what GET /status answers) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct RollbackHookArgs {
    /// Address for the webhook (POST /webhook), /metrics and /healthz.
    #[arg(long, value_name = "ADDR", default_value = crate::rollback_hook::DEFAULT_LISTEN)]
    listen: std::net::SocketAddr,
    /// File holding the bearer token Alertmanager sends (http_config.authorization).
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// The alert that calls for the rollback.
    #[arg(long, value_name = "NAME", default_value = crate::rollback_hook::DEFAULT_ALERT)]
    alert: String,
    /// How long the alert must have been firing (since its startsAt) before the command runs.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    firing_for_seconds: u64,
    /// Run the command. Without it, the hook only logs what it would run.
    #[arg(long)]
    arm: bool,
    /// The command (its whole process group) is ended after this long and counted as failed.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    command_timeout_seconds: u64,
    /// On SIGTERM, how long to wait for a running command before exiting and leaving it
    /// running (keep it below the pod's terminationGracePeriodSeconds, 30 by default).
    #[arg(long, value_name = "SECONDS", default_value_t = 25)]
    shutdown_grace_seconds: u64,
    /// Webhook bodies over this many bytes are refused (413) without being read whole.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// How long a client has to send a request's headers, and again its body.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    request_timeout_seconds: u64,
    /// Connections served at once; more wait in the listen backlog.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_connections: usize,
    /// Where the hook records that the rollback ran (so it never runs twice).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/cniguard/rollback-hook")]
    state_dir: PathBuf,
    /// The rollback command and its arguments, after `--`; run as given, without a shell,
    /// with nothing from the alert added.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct EchoArgs {
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9465")]
    listen: std::net::SocketAddr,
    /// A file created once the socket listens (for supervisors that wait for it).
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// TOML configuration file (see config/cniguard.toml for every field).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address for /metrics, /healthz and /readyz [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Interface name patterns to attach to, replacing the configured list
    /// [default: veth* cali* cni0 flannel.1 vxlan.calico].
    #[arg(long, value_name = "PATTERN", num_args = 1.., value_delimiter = ',')]
    interfaces: Option<Vec<String>>,
    /// How classifiers attach [default: auto].
    #[arg(long, value_enum)]
    tc_attach: Option<TcAttachMode>,
    /// Level of the eBPF programs' own messages [default: off].
    #[arg(long, value_enum)]
    ebpf_log_level: Option<EbpfLogLevel>,
    /// Which namespaces to watch: every one of the host, or this node's own and its pods'
    /// (when several nodes share a kernel) [default: host].
    #[arg(long, value_enum)]
    netns_scope: Option<NetnsScope>,
    /// Directory for state kept across restarts (the pre-cutover baselines)
    /// [default: /var/lib/cniguard].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Kubernetes API credentials for cluster mode outside a pod (in a pod, the service
    /// account is used without it).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
}

#[must_use]
pub fn main() -> ExitCode {
    // First of all: glibc fixes its arena limit when a second thread first needs one.
    crate::heap::one_arena();
    match Cli::parse().command {
        Command::Check => {
            let report = preflight::run();
            print!("{report}");
            // Probes load only once the requirements hold: a missing CAP_BPF is one failure.
            let probes_ok = if report.passed() {
                print_probe_checks()
            } else {
                println!("skip  {:<14} not loaded until the failures above are fixed", "probes");
                true
            };
            if report.passed() && probes_ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_PREFLIGHT) }
        }
        Command::Run(args) => run(args),
        Command::Status(args) => status(&args),
        Command::Diagnose(args) => diagnose(&args),
        Command::RollbackHook(args) => rollback_hook(args),
        Command::Echo(args) => echo(&args),
    }
}

/// One line per probe, `on` or `off: <why>` with what the operator loses, found by loading
/// each probe's programs. False when a required probe cannot run (optional ones only cost
/// their signal).
fn print_probe_checks() -> bool {
    let checks = match crate::probes::registry::check_all(EbpfLogLevel::Off) {
        Ok(checks) => checks,
        Err(err) => {
            println!("FAIL  {:<14} the eBPF object did not load: {err:#}", "probes");
            return false;
        }
    };
    let mut ok = true;
    for check in checks {
        let spec = check.spec;
        match check.found {
            Ok(None) => println!("pass  probe {:<12} on", spec.name),
            Ok(Some(hook)) => println!("pass  probe {:<12} on (hook {hook})", spec.name),
            Err(why) => {
                let status = if spec.required { "FAIL" } else { "warn" };
                ok &= !spec.required;
                println!("{status}  probe {:<12} off: {why}; loses {}", spec.name, spec.loses);
            }
        }
    }
    ok
}

fn status(args: &StatusArgs) -> ExitCode {
    match crate::judgement::status::fetch(args.address) {
        Ok(status) if args.json => match serde_json::to_string_pretty(&status) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("cniguard: error: {err}");
                ExitCode::FAILURE
            }
        },
        Ok(status) => {
            print!("{}", crate::judgement::status::render(&status));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("cniguard: error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn diagnose(args: &StatusArgs) -> ExitCode {
    let report: Result<crate::diagnose::Report, String> =
        crate::judgement::status::fetch_json(args.address, "/diagnose", "cniguard findings");
    let text = report.and_then(|report| {
        if args.json {
            serde_json::to_string_pretty(&report).map(|text| text + "\n").map_err(|err| err.to_string())
        } else {
            Ok(crate::diagnose::render(&report))
        }
    });
    match text {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("cniguard: error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn rollback_hook(args: RollbackHookArgs) -> ExitCode {
    init_logging();
    let token = match crate::rollback_hook::read_token(&args.token_file) {
        Ok(token) => token,
        Err(err) => {
            eprintln!("cniguard: error: --token-file: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let settings = crate::rollback_hook::HookSettings {
        listen: args.listen,
        token,
        alert: args.alert,
        firing_for: std::time::Duration::from_secs(args.firing_for_seconds),
        command: args.command,
        armed: args.arm,
        command_timeout: std::time::Duration::from_secs(args.command_timeout_seconds.max(1)),
        state_dir: args.state_dir,
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace_seconds),
        limits: crate::rollback_hook::Limits {
            max_body_bytes: args.max_body_bytes.max(1),
            request_timeout: std::time::Duration::from_secs(args.request_timeout_seconds.max(1)),
            max_connections: args.max_connections.max(1),
            // Open connections get a few seconds, never more than the grace period.
            drain: std::time::Duration::from_secs(args.shutdown_grace_seconds.min(5)),
        },
    };
    block_on(crate::rollback_hook::run(settings))
}

fn echo(args: &EchoArgs) -> ExitCode {
    init_logging();
    let (listen, ready_file) = (args.listen, args.ready_file.clone());
    block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|err| anyhow::anyhow!("cannot listen on {listen}: {err} (set another with --listen)"))?;
        if let Some(file) = ready_file {
            std::fs::write(&file, "listening\n")
                .map_err(|err| anyhow::anyhow!("cannot write --ready-file {}: {err}", file.display()))?;
        }
        tracing::info!(%listen, "echo: answering every HTTP request with 200");
        let app = axum::Router::new().fallback(|| async { "cniguard echo\n" });
        // As a container's pid 1 it gets no default action for SIGTERM: without a handler
        // the kubelet would wait out the grace period and kill it.
        let mut stop = crate::daemon::StopSignals::new()?;
        axum::serve(listener, app).with_graceful_shutdown(async move { stop.recv().await }).await?;
        Ok(())
    })
}

/// Runs `task` on a new runtime; errors are printed, and exit 1.
fn block_on(task: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    match tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(task))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cniguard: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    init_logging();
    let overrides = Overrides {
        listen: args.listen,
        interfaces: args.interfaces,
        tc_attach: args.tc_attach,
        ebpf_log_level: args.ebpf_log_level,
        netns_scope: args.netns_scope,
        state_dir: args.state_dir,
        kubeconfig: args.kubeconfig,
    };
    let settings = match Settings::load(args.config.as_deref(), overrides) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("cniguard: error: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let report = preflight::run();
    if !report.passed() {
        for failure in report.failures() {
            eprintln!("{failure}");
        }
        eprintln!("cniguard: error: refusing to start; `cniguard check` lists every requirement");
        return ExitCode::from(EXIT_PREFLIGHT);
    }
    block_on(crate::daemon::run(settings))
}

/// Logs go to stderr; `RUST_LOG` overrides the default `info` (e.g. `RUST_LOG=cniguard=debug`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
