//! `keel bench`: measure Keel on this machine.
//!
//! - [`store`]: the local store alone (no cluster, no network);
//! - [`kv`]: a load generator for a running cluster, which can run the same
//!   workload against etcd in the same run (cargo feature `etcd`, see
//!   [`kv`]'s docs).

pub mod kv;
pub mod store;

#[cfg(feature = "etcd")]
mod etcd;

use clap::Subcommand;

use crate::output::Output;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Benchmark the local store (no cluster).
    Store(store::StoreBenchArgs),
    /// Load a running cluster: N clients, a read/write mix, for a duration;
    /// prints throughput and latency percentiles (optionally etcd's too).
    Kv(kv::KvBenchArgs),
}

pub fn run(command: &BenchCommand, out: Output) -> anyhow::Result<()> {
    match command {
        BenchCommand::Store(args) => store::run(args, out),
        BenchCommand::Kv(args) => kv::run(args, out),
    }
}
