//! The command line: `cniguard run` and `cniguard check`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{EbpfLogLevel, NetnsScope, Overrides, Settings, TcAttachMode};
use crate::preflight;

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
    match Cli::parse().command {
        Command::Check => {
            let report = preflight::run();
            print!("{report}");
            if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_PREFLIGHT) }
        }
        Command::Run(args) => run(args),
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cniguard: error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::daemon::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cniguard: error: {err:#}");
            ExitCode::FAILURE
        }
    }
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
