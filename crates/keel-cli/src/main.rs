//! `keel`: the one command-line entry point of Keel.
//!
//! Offline admin commands take `--data-dir DIR` and work on a stopped
//! node's data. Every command prints human output by default and JSON with
//! `--json`; exit codes are 0 (success), 1 (failed or found problems) and
//! 2 (usage error or could not start).

mod cmd;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use output::Output;

#[derive(Parser, Debug)]
#[command(name = "keel", version, about = "Keel: a replicated, self-healing state store", long_about = None)]
struct Cli {
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a store and found a cluster with it (see --standalone).
    Init(cmd::init::InitArgs),
    /// Run a node.
    Serve(cmd::cluster::ServeArgs),
    /// Add a new node (empty data directory) to a cluster.
    Join(cmd::cluster::JoinArgs),
    /// Remove the node at --endpoint from its cluster.
    Leave(cmd::cluster::EndpointArg),
    /// Manage members.
    #[command(subcommand)]
    Member(cmd::cluster::MemberCommand),
    /// Show the cluster: members, roles, progress, readiness, roots.
    Status(cmd::cluster::EndpointArg),
    /// Check every node's health: a verdict per check, the evidence, the escalation ladder.
    Diag(cmd::cluster::EndpointArg),
    /// Show a group's primary, its term and candidates; watch it; its history.
    Primary(cmd::primary::PrimaryArgs),
    /// Configure a primary group: candidates, priorities, cooldown, handover.
    #[command(subcommand)]
    Group(cmd::primary::GroupCommand),
    /// Run a command only while the local node is a group's primary.
    Run(cmd::run::RunArgs),
    /// Read and write keys.
    #[command(subcommand)]
    Kv(cmd::kv::KvCommand),
    /// List and create checkpoints.
    #[command(subcommand)]
    Checkpoint(cmd::checkpoint::CheckpointCommand),
    /// Reclaim space held by unreachable blobs.
    Gc(cmd::gc::GcArgs),
    /// Verify every object of a store (every blob read and hashed); repair or roll back.
    Fsck(cmd::fsck::FsckArgs),
    /// Write a portable, verified archive of a store's keys.
    Dump(cmd::dump::DumpArgs),
    /// Load a dump into a store (verified first; replaces its contents).
    Restore(cmd::dump::RestoreArgs),
    /// Measure performance on this machine.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Run a local demonstration.
    Demo(cmd::demo::DemoArgs),
    /// Tools for tests and investigations.
    #[command(subcommand, hide = true)]
    Debug(cmd::debug::DebugCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return output::report_usage_error(error),
    };
    init_logging(matches!(cli.command, Command::Serve(_)));
    let out = Output { json: cli.json };
    let result = match &cli.command {
        Command::Init(args) => cmd::init::run(args, out),
        Command::Serve(args) => cmd::cluster::serve(args),
        Command::Join(args) => cmd::cluster::join(args, out),
        Command::Leave(args) => cmd::cluster::leave(args, out),
        Command::Member(command) => cmd::cluster::member(command, out),
        Command::Status(args) => cmd::cluster::status(args, out),
        Command::Diag(args) => cmd::diag::run(args, out),
        Command::Primary(args) => cmd::primary::primary(args, out),
        Command::Group(command) => cmd::primary::group(command, out),
        Command::Run(args) => cmd::run::run(args, out),
        Command::Kv(command) => cmd::kv::run(command, out),
        Command::Checkpoint(command) => cmd::checkpoint::run(command, out),
        Command::Gc(args) => cmd::gc::run(args, out),
        Command::Fsck(args) => cmd::fsck::run(args, out),
        Command::Dump(args) => cmd::dump::dump(args, out),
        Command::Restore(args) => cmd::dump::restore(args, out),
        Command::Demo(args) => cmd::demo::run(args, out),
        Command::Bench(command) => cmd::bench::run(command, out),
        Command::Debug(command) => cmd::debug::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => output::report_error(&error, cli.json),
    }
}

/// Logs go to stderr; `KEEL_LOG` sets the filter (default: warnings, and
/// Keel's own information when serving). openraft's replication logs every
/// failed call to a peer that is down, twice a second; Keel's network
/// reports those outages itself, a line a minute (`keel_node::network`).
fn init_logging(serving: bool) {
    let default = if serving {
        "info,openraft=error,openraft::replication=off"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
