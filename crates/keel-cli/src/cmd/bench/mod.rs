//! `keel bench`: measure Keel on this machine.
//!
//! - [`store`]: the local store alone (no cluster, no network);
//! - [`fsck`]: verification throughput against raw BLAKE3;
//! - [`kv`]: a load generator for a running cluster, which can run the same
//!   workload against etcd in the same run (cargo feature `etcd`, see
//!   [`kv`]'s docs).

pub mod fsck;
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
    /// Benchmark fsck verification against raw BLAKE3 hashing.
    Fsck(fsck::FsckBenchArgs),
    /// Load a running cluster: N clients, a read/write mix, for a duration;
    /// prints throughput and latency percentiles (optionally etcd's too).
    Kv(kv::KvBenchArgs),
}

pub fn run(command: &BenchCommand, out: Output) -> anyhow::Result<()> {
    match command {
        BenchCommand::Store(args) => store::run(args, out),
        BenchCommand::Fsck(args) => fsck::run(args, out),
        BenchCommand::Kv(args) => kv::run(args, out),
    }
}
