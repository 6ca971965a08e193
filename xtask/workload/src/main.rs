//! The processes that run inside the migration lab's pod namespaces. The lab starts them in
//! the right namespace; each one binds or connects to what it is given, paces its traffic,
//! and keeps a stats file with exact counts of what it did.

mod agent;
mod dns;
mod grpc_server;
mod mlserver;
mod seldon_agent;
mod stats;
mod udp;

use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{Signal, SignalKind, signal};

#[derive(Parser)]
#[command(name = "cniguard-workload", about = "Pod workloads for the cniguard migration lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A Seldon MLServer stand-in: V2 health and inference endpoints over HTTP/1.1 (where
    /// the real MLServer cannot do the job: a server on any address a test names, with
    /// exact counts of what it answered, started in milliseconds).
    Mlserver(mlserver::Args),
    /// The Seldon agent: HTTP/1.1 requests to its MLServer at a fixed rate.
    Agent(agent::Args),
    /// The Seldon v2 agent against the real MLServer: gRPC readiness, model load and
    /// concurrent ModelInfer streams on one connection, HTTP/1.1 keep-alive infer.
    SeldonAgent(seldon_agent::Args),
    /// A gRPC server stand-in over HTTP/2 (where the real MLServer cannot run: the kernel
    /// matrix's machines have no Python): every call answered after a known delay.
    GrpcServer(grpc_server::Args),
    /// DNS A queries over UDP at a fixed rate.
    DnsClient(dns::Args),
    /// UDP datagrams at a fixed rate.
    UdpSend(udp::SendArgs),
    /// Counts the UDP datagrams that arrive.
    UdpSink(udp::SinkArgs),
}

/// Why a workload stopped early; startup failures get their own exit code so the lab can
/// tell "wrong arguments or address" from "broke while running".
pub enum Failure {
    Startup(anyhow::Error),
    Runtime(anyhow::Error),
}

/// SIGTERM or SIGINT, registered before the first stats file is written: once a reader
/// sees the file, stopping the process always ends with a final write.
pub struct Shutdown {
    terminate: Signal,
    interrupt: Signal,
}

impl Shutdown {
    fn install() -> anyhow::Result<Self> {
        Ok(Self { terminate: signal(SignalKind::terminate())?, interrupt: signal(SignalKind::interrupt())? })
    }

    /// Resolves once either signal arrived (also one that arrived while nobody waited).
    pub async fn requested(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// The interval between two sends at `rate` per second.
///
/// # Errors
/// If the rate is not a positive, finite number, or too small to have a period.
pub fn period_of(rate: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(rate.is_finite() && rate > 0.0, "--rate must be a positive number, got {rate}");
    Duration::try_from_secs_f64(1.0 / rate).map_err(|_| anyhow::anyhow!("--rate {rate} is too small"))
}

/// A ticker at `period` that, after a pause (SIGSTOP) or a slow attempt, carries on at the
/// same pace instead of bursting to catch up: the lab counts on every send being paced.
#[must_use]
pub fn pacer(period: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() || err.kind() == DisplayHelpOnMissingArgumentOrSubcommand => err.exit(),
        Err(err) => {
            // clap's first paragraph, on one line: the lab logs one line per failed start.
            let rendered = err.to_string();
            let lines: Vec<&str> =
                rendered.lines().take_while(|line| !line.trim().is_empty()).map(str::trim).collect();
            let message = lines.join(" ");
            eprintln!("cniguard-workload: {}", message.strip_prefix("error: ").unwrap_or(&message));
            return ExitCode::from(2);
        }
    };
    let kind = match &cli.command {
        Command::Mlserver(_) => mlserver::KIND,
        Command::Agent(_) => agent::KIND,
        Command::SeldonAgent(_) => seldon_agent::KIND,
        Command::GrpcServer(_) => grpc_server::KIND,
        Command::DnsClient(_) => dns::KIND,
        Command::UdpSend(_) => udp::SEND_KIND,
        Command::UdpSink(_) => udp::SINK_KIND,
    };
    // One thread is plenty for these loads, and a lab runs dozens of these processes.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cniguard-workload {kind}: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = Shutdown::install()
            .map_err(|err| Failure::Startup(err.context("cannot install SIGTERM/SIGINT handlers")))?;
        match cli.command {
            Command::Mlserver(args) => mlserver::run(args, shutdown).await,
            Command::Agent(args) => agent::run(args, shutdown).await,
            Command::SeldonAgent(args) => seldon_agent::run(args, shutdown).await,
            Command::GrpcServer(args) => grpc_server::run(args, shutdown).await,
            Command::DnsClient(args) => dns::run(args, shutdown).await,
            Command::UdpSend(args) => udp::send(args, shutdown).await,
            Command::UdpSink(args) => udp::sink(args, shutdown).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Startup(err)) => {
            eprintln!("cniguard-workload {kind}: {err:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(err)) => {
            eprintln!("cniguard-workload {kind}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
