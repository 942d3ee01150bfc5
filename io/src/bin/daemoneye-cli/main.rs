//! daemoneye-cli: the operator's tool for the DaemonEye broker.
//!
//! One module per command family: [`publish`] (`pub`), [`messaging`] (`sub`, `req`),
//! [`reply`], [`collectors`]
//! (`collectors list|start|stop|restart|pause|resume|config`), [`status`] (`stats`, `health`),
//! [`events`] (`events query`) and [`bench`]; [`connection`] opens the broker connection they share and [`error`] says
//! what can go wrong. To add a command: an `#[derive(clap::Args)]` struct and an
//! `async fn run` in its family's module (or a new module), then one variant of
//! [`Command`] and its arm in [`Command::run`] below. Flags that name a protocol value
//! (QoS, queue strategy, overflow) take the protocol's own names (`daemoneye_proto::names`).

mod alerts;
mod bench;
mod bridge;
mod collectors;
mod connection;
mod detection;
mod error;
mod events;
mod messaging;
mod publish;
mod reply;
mod status;
mod tasks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::CliError;

/// DaemonEye command-line client: publish, subscribe, request, and inspect the broker.
///
/// The broker socket is --socket (before or after the command), else
/// DAEMONEYE_BROKER_SOCKET, else the agent's default path for this user.
#[derive(Debug, Parser)]
#[command(
    name = "daemoneye-cli",
    version = daemoneye_io::VERSION,
    after_help = "Exit status: 0 on success, 1 on an error, 2 on a usage error; `pub` and \
        `health` say in their --help what else they return."
)]
struct Cli {
    /// Broker socket path.
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish a message (from MESSAGE, or standard input when it is absent).
    Pub(publish::PubArgs),
    /// Subscribe and print messages until --count or --timeout (a normal exit).
    Sub(messaging::SubArgs),
    /// Send a request and print the first reply.
    Req(messaging::ReqArgs),
    /// Answer requests on a topic (a responder for `req`): with BODY, --echo or --command.
    Reply(reply::ReplyArgs),
    /// Broker statistics.
    Stats(status::StatsArgs),
    /// Supervised collectors: list them, start, stop, restart, pause or resume one, or
    /// change a running one's settings (`config`).
    Collectors {
        #[command(subcommand)]
        command: collectors::CollectorsCommand,
    },
    /// Agent health: broker and collectors.
    Health(status::HealthArgs),
    /// The event store: `events query --since 10m --exe '*/curl'`.
    Events {
        #[command(subcommand)]
        command: events::EventsCommand,
    },
    /// Tasks for collectors through the agent's coordinator: `tasks submit performance
    /// load --wait`, `tasks list`, `tasks cancel ID`.
    Tasks {
        #[command(subcommand)]
        command: tasks::TasksCommand,
    },
    /// The agent's detection rules: `detection status`, `detection reload`.
    Detection {
        #[command(subcommand)]
        command: detection::DetectionCommand,
    },
    /// The agent's NATS bridge: `bridge status [--json]`.
    Bridge {
        #[command(subcommand)]
        command: bridge::BridgeCommand,
    },
    /// Alerts: `alerts list --since 1h --level high`, `alerts follow`.
    Alerts {
        #[command(subcommand)]
        command: alerts::AlertsCommand,
    },
    /// Measure throughput and latency with separate publisher and subscriber connections.
    Bench(bench::BenchArgs),
    /// Print a shell completion script, e.g. `daemoneye-cli completions bash >
    /// /etc/bash_completion.d/daemoneye-cli`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Command {
    async fn run(self, socket: Option<PathBuf>) -> Result<(), CliError> {
        let socket = socket.as_deref();
        match self {
            Command::Pub(args) => publish::publish(socket, args).await,
            Command::Sub(args) => messaging::subscribe(socket, args).await,
            Command::Req(args) => messaging::request(socket, args).await,
            Command::Reply(args) => reply::run(socket, args).await,
            Command::Stats(args) => status::stats(socket, args).await,
            Command::Collectors { command } => collectors::run(socket, command).await,
            Command::Health(args) => status::health(socket, args).await,
            Command::Events { command } => events::run(socket, command).await,
            Command::Tasks { command } => tasks::run(socket, command).await,
            Command::Detection { command } => detection::run(socket, command).await,
            Command::Alerts { command } => alerts::run(socket, command).await,
            Command::Bridge { command } => bridge::run(socket, command).await,
            Command::Bench(args) => bench::run(socket, args).await,
            Command::Completions { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "daemoneye-cli",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
        }
    }
}

fn main() -> ExitCode {
    let cli: Cli = daemoneye_io::args::parse_or_exit(<Cli as clap::CommandFactory>::command());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("daemoneye-cli: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.command.run(cli.socket)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("daemoneye-cli: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
