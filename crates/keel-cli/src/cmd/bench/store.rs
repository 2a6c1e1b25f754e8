//! `keel bench store`: the local store on this machine. Reports durable single-key commits/s, batched puts/s (1,000 puts per
//! durable commit), single-thread gets/s, a replica's applies/s (random
//! puts in batches, flushed as a node flushes), and the bytes written to
//! disk per single-key commit into a store of 1,000,000 keys (from
//! /proc/self/io).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use keel_node::state_machine::FLUSH_OPS_MAX;
use keel_store::{Durability, Op, Store, StoreOptions, Txn};

use crate::output::Output;

#[derive(Args, Debug)]
pub struct StoreBenchArgs {
    /// Directory for the benchmark's stores (created and removed).
    #[arg(long, default_value = "keel-bench-data")]
    pub dir: PathBuf,
    /// Durable single-key commits to time.
    #[arg(long, default_value_t = 20_000)]
    pub commits: u64,
    /// Batches of 1,000 puts to time.
    #[arg(long, default_value_t = 300)]
    pub batches: u64,
    /// Gets to time.
    #[arg(long, default_value_t = 2_000_000)]
    pub gets: u64,
    /// Random puts to apply as a replica does (in batches, not synced).
    #[arg(long, default_value_t = 300_000)]
    pub applies: u64,
    /// Keys in the large store used for bytes-per-commit.
    #[arg(long, default_value_t = 1_000_000)]
    pub large_keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    value_bytes: usize,
    single_key_commits_per_sec: f64,
    single_key_commit_p50_us: f64,
    single_key_commit_p99_us: f64,
    batched_puts_per_sec: f64,
    gets_per_sec: f64,
    replica_applies_per_sec: f64,
    large_store_keys: u64,
    large_store_load_secs: f64,
    bytes_written_per_commit_in_large_store: u64,
    large_store_commits_per_sec: f64,
}

pub(super) fn fresh(dir: &std::path::Path) -> anyhow::Result<Store> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(Store::init(dir, StoreOptions::default())?)
}

pub(super) fn value(bytes: usize, n: u64) -> Bytes {
    let mut v = vec![b'v'; bytes];
    let tag = n.to_le_bytes();
    let len = tag.len().min(bytes);
    v[..len].copy_from_slice(&tag[..len]);
    Bytes::from(v)
}

/// Bytes this process has caused to be written to storage so far.
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("write_bytes: ")
                        .map(|v| v.trim().parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

/// Transactions per applied batch: a Raft entry in the cluster benchmark
/// holds 11 to 18.
const APPLY_BATCH: u64 = 12;

/// Puts to random existing keys, applied in batches and flushed (not
/// synced) every [`FLUSH_OPS_MAX`] operations, as a node's state machine
/// does under load; the flushes are part of the time.
fn replica_applies(store: &Store, keys: u64, args: &StoreBenchArgs) -> anyhow::Result<f64> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut applied = 0;
    let mut since_flush = 0;
    let started = Instant::now();
    while applied < args.applies {
        let batch: Vec<Txn> = (0..APPLY_BATCH)
            .map(|i| {
                // xorshift: cheap, and the same keys on every run
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                Txn::put(
                    format!("bench/k{:09}", x % keys),
                    value(args.value_bytes, applied + i),
                )
            })
            .collect();
        store.apply(&batch)?;
        applied += APPLY_BATCH;
        since_flush += APPLY_BATCH;
        if since_flush >= FLUSH_OPS_MAX {
            store.flush(Durability::Buffered, None)?;
            since_flush = 0;
        }
    }
    store.flush(Durability::Buffered, None)?;
    Ok(applied as f64 / started.elapsed().as_secs_f64())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

pub fn run(args: &StoreBenchArgs, out: Output) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let progress = |text: &str| eprintln!("bench: {text}");

    progress("durable single-key commits");
    let store = fresh(&args.dir.join("commits"))?;
    let mut latencies = Vec::with_capacity(args.commits as usize);
    let started = Instant::now();
    for n in 0..args.commits {
        let t = Instant::now();
        store.commit(&[Txn::put(
            format!("bench/k{}", n % 10_000),
            value(args.value_bytes, n),
        )])?;
        latencies.push(t.elapsed());
    }
    let commits_per_sec = args.commits as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    drop(store);

    progress("batched puts (1,000 per durable commit)");
    let store = fresh(&args.dir.join("batches"))?;
    let started = Instant::now();
    for batch in 0..args.batches {
        let ops = (0..1000u64)
            .map(|i| {
                let n = batch * 1000 + i;
                Op::Put {
                    key: format!("bench/k{n:09}"),
                    value: value(args.value_bytes, n),
                }
            })
            .collect();
        store.commit(&[Txn {
            compare: vec![],
            ops,
        }])?;
    }
    let batched_per_sec = (args.batches * 1000) as f64 / started.elapsed().as_secs_f64();

    progress("single-thread gets");
    let keys = args.batches * 1000;
    let view = store.snapshot();
    let names: Vec<String> = (0..keys.min(100_000))
        .map(|n| format!("bench/k{:09}", n * 7 % keys))
        .collect();
    let started = Instant::now();
    let mut found = 0u64;
    for i in 0..args.gets {
        let name = &names[(i as usize) % names.len()];
        if view.get(name)?.is_some() {
            found += 1;
        }
    }
    let gets_per_sec = args.gets as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(found == args.gets, "every benchmark key must be found");
    drop(view);

    progress("replica applies (random puts, 12 per batch)");
    let applies_per_sec = replica_applies(&store, keys, args)?;
    drop(store);

    progress(&format!("loading {} keys", args.large_keys));
    let store = fresh(&args.dir.join("large"))?;
    let started = Instant::now();
    let mut n = 0;
    while n < args.large_keys {
        let end = (n + 10_000).min(args.large_keys);
        let ops = (n..end)
            .map(|k| Op::Put {
                key: format!("large/k{k:09}"),
                value: value(args.value_bytes, k),
            })
            .collect();
        store.commit(&[Txn {
            compare: vec![],
            ops,
        }])?;
        n = end;
    }
    let load_secs = started.elapsed().as_secs_f64();
    progress("single-key commits into the large store");
    let probe_commits = 2_000u64;
    let before = written_bytes();
    let started = Instant::now();
    for i in 0..probe_commits {
        let k = (i * 7919) % args.large_keys;
        store.commit(&[Txn::put(
            format!("large/k{k:09}"),
            value(args.value_bytes, i),
        )])?;
    }
    let large_commits_per_sec = probe_commits as f64 / started.elapsed().as_secs_f64();
    let per_commit = (written_bytes() - before) / probe_commits;
    drop(store);
    std::fs::remove_dir_all(&args.dir)?;

    let report = Report {
        value_bytes: args.value_bytes,
        single_key_commits_per_sec: commits_per_sec,
        single_key_commit_p50_us: percentile(&latencies, 0.5),
        single_key_commit_p99_us: percentile(&latencies, 0.99),
        batched_puts_per_sec: batched_per_sec,
        gets_per_sec,
        replica_applies_per_sec: applies_per_sec,
        large_store_keys: args.large_keys,
        large_store_load_secs: load_secs,
        bytes_written_per_commit_in_large_store: per_commit,
        large_store_commits_per_sec: large_commits_per_sec,
    };
    out.emit(&report, || {
        format!(
            "durable single-key commits: {:>10.0}/s (p50 {:.0} us, p99 {:.0} us)\n\
             batched puts (1,000/commit): {:>10.0}/s\n\
             gets (one thread):           {:>10.0}/s\n\
             replica applies (12/batch):  {:>10.0}/s\n\
             {} keys loaded in {:.1} s; single-key commit into it: {} bytes written, {:.0} commits/s",
            report.single_key_commits_per_sec,
            report.single_key_commit_p50_us,
            report.single_key_commit_p99_us,
            report.batched_puts_per_sec,
            report.gets_per_sec,
            report.replica_applies_per_sec,
            report.large_store_keys,
            report.large_store_load_secs,
            report.bytes_written_per_commit_in_large_store,
            report.large_store_commits_per_sec,
        )
    })
}
