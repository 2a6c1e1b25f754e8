//! `keel bench store` and `keel bench fsck`: measure on this machine.
//!
//! `keel bench fsck` builds a store of about 1 GiB (values of a few MiB plus
//! small keys), warms the page cache, and times a full verification (every
//! blob read and hashed) next to raw single-thread BLAKE3 over the same
//! chunk size in memory, in the same run.
//!
//! Reports durable single-key commits/s, batched puts/s (1,000 puts per
//! durable commit), single-thread gets/s, and the bytes written to disk per
//! single-key commit into a store of 1,000,000 keys (from /proc/self/io).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Subcommand};
use keel_store::{Op, Store, StoreOptions, Txn};

use crate::output::Output;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Benchmark the local store (no cluster).
    Store(StoreBenchArgs),
    /// Benchmark fsck verification against raw BLAKE3 hashing.
    Fsck(FsckBenchArgs),
}

#[derive(Args, Debug)]
pub struct FsckBenchArgs {
    /// Directory for the benchmark's store (created and removed).
    #[arg(long, default_value = "keel-bench-fsck")]
    pub dir: PathBuf,
    /// Approximate store size in MiB (large values).
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Size of each large value in MiB.
    #[arg(long, default_value_t = 4)]
    pub value_mib: u64,
    /// Small keys (1-3 KiB, one blob each) besides the large values.
    #[arg(long, default_value_t = 20_000)]
    pub small_keys: u64,
    /// Rounds of (raw hashing, verification on one thread, on all threads);
    /// the best of each is reported (the machine may be shared).
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
}

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
    large_store_keys: u64,
    large_store_load_secs: f64,
    bytes_written_per_commit_in_large_store: u64,
    large_store_commits_per_sec: f64,
}

pub fn run(command: &BenchCommand, out: Output) -> anyhow::Result<()> {
    match command {
        BenchCommand::Store(args) => store(args, out),
        BenchCommand::Fsck(args) => fsck(args, out),
    }
}

fn fresh(dir: &std::path::Path) -> anyhow::Result<Store> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(Store::init(dir, StoreOptions::default())?)
}

fn value(bytes: usize, n: u64) -> Bytes {
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

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn store(args: &StoreBenchArgs, out: Output) -> anyhow::Result<()> {
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
             {} keys loaded in {:.1} s; single-key commit into it: {} bytes written, {:.0} commits/s",
            report.single_key_commits_per_sec,
            report.single_key_commit_p50_us,
            report.single_key_commit_p99_us,
            report.batched_puts_per_sec,
            report.gets_per_sec,
            report.large_store_keys,
            report.large_store_load_secs,
            report.bytes_written_per_commit_in_large_store,
            report.large_store_commits_per_sec,
        )
    })
}

/// Incompressible, distinct bytes (xorshift) streamed without memory.
struct Noise {
    state: u64,
    remaining: u64,
}

impl std::io::Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining) as usize;
        for word in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let bytes = self.state.to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[derive(Debug, serde::Serialize)]
struct FsckReport {
    store_bytes: u64,
    values: u64,
    objects: u64,
    verified_bytes: u64,
    verify_secs: f64,
    verify_mb_per_sec: f64,
    verify_objects_per_sec: f64,
    verify_all_threads: usize,
    verify_all_threads_mb_per_sec: f64,
    verify_all_threads_objects_per_sec: f64,
    raw_blake3_mb_per_sec: f64,
    raw_blake3_page_cache_mb_per_sec: f64,
    ratio_to_raw: f64,
    ratio_all_threads_to_raw: f64,
    ratio_to_raw_page_cache: f64,
}

fn fsck(args: &FsckBenchArgs, out: Output) -> anyhow::Result<()> {
    let progress = |text: &str| eprintln!("bench: {text}");
    let dir = args.dir.join("store");
    std::fs::create_dir_all(&args.dir)?;
    progress(&format!("building a {} MiB store", args.size_mib));
    let store = fresh(&dir)?;
    let large = args.size_mib / args.value_mib.max(1);
    for i in 0..large {
        let mut reader = Noise {
            state: i * 7919 + 1,
            remaining: args.value_mib << 20,
        };
        let (value, _hold) = store.upload(&mut reader)?;
        store.commit(&[Txn {
            compare: vec![],
            ops: vec![value.into_op(format!("large/v{i:05}"))],
        }])?;
    }
    let mut n = 0;
    while n < args.small_keys {
        let end = (n + 1000).min(args.small_keys);
        let ops = (n..end)
            .map(|k| Op::Put {
                key: format!("small/d{:02}/k{k:06}", k % 50),
                value: value(1024 + (k as usize * 37) % 2048, k),
            })
            .collect();
        store.commit(&[Txn {
            compare: vec![],
            ops,
        }])?;
        n = end;
    }
    store.checkpoint()?;
    store.close()?;

    progress("warming the page cache");
    let mut store_bytes = 0;
    for entry in std::fs::read_dir(dir.join("pack"))? {
        let path = entry?.path();
        let mut file = std::fs::File::open(&path)?;
        store_bytes += std::io::copy(&mut file, &mut std::io::sink())?;
    }

    let buffer: Vec<u8> = {
        let mut noise = Noise {
            state: 42,
            remaining: 256 << 20,
        };
        let mut buffer = Vec::new();
        std::io::Read::read_to_end(&mut noise, &mut buffer)?;
        buffer
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut raw_best, mut cached_best, mut one_best, mut all_best) = (0f64, 0f64, None, None);
    for run in 1..=args.runs.max(1) {
        progress(&format!(
            "run {run}: raw BLAKE3, verification on 1 and {threads} threads"
        ));
        raw_best = raw_best.max(raw_blake3(&buffer, store_bytes));
        cached_best = cached_best.max(raw_blake3_files(&dir.join("pack"))?);
        for (threads, best) in [(1, &mut one_best), (threads, &mut all_best)] {
            let (secs, verification) = verify_once(&dir, threads)?;
            if best
                .as_ref()
                .is_none_or(|(b, _): &(f64, keel_fsck::verify::Verification)| secs < *b)
            {
                *best = Some((secs, verification));
            }
        }
    }
    std::fs::remove_dir_all(&args.dir)?;
    let (one_secs, verification) = one_best.expect("at least one run");
    let (all_secs, _) = all_best.expect("at least one run");
    let bytes = verification.stats.bytes as f64;
    let report = FsckReport {
        store_bytes,
        values: verification.stats.values,
        objects: verification.stats.objects,
        verified_bytes: verification.stats.bytes,
        verify_secs: one_secs,
        verify_mb_per_sec: bytes / one_secs / 1e6,
        verify_objects_per_sec: verification.stats.objects as f64 / one_secs,
        verify_all_threads: threads,
        verify_all_threads_mb_per_sec: bytes / all_secs / 1e6,
        verify_all_threads_objects_per_sec: verification.stats.objects as f64 / all_secs,
        raw_blake3_mb_per_sec: raw_best,
        raw_blake3_page_cache_mb_per_sec: cached_best,
        ratio_to_raw: bytes / one_secs / 1e6 / raw_best,
        ratio_all_threads_to_raw: bytes / all_secs / 1e6 / raw_best,
        ratio_to_raw_page_cache: bytes / one_secs / 1e6 / cached_best,
    };
    out.emit(&report, || {
        format!(
            "store: {} bytes, {} values, {} objects\n\
             fsck verification, 1 thread:  {:.0} MB/s, {:.0} objects/s ({:.2} s)\n\
             fsck verification, {} threads: {:.0} MB/s, {:.0} objects/s\n\
             raw BLAKE3, 1 thread, in memory:         {:.0} MB/s\n\
             raw BLAKE3, 1 thread, page-cache files: {:.0} MB/s\n\
             verification / raw in memory: {:.0}% (1 thread), {:.0}% ({} threads)\n\
             verification (1 thread) / raw over the page cache: {:.0}%",
            report.store_bytes,
            report.values,
            report.objects,
            report.verify_mb_per_sec,
            report.verify_objects_per_sec,
            report.verify_secs,
            report.verify_all_threads,
            report.verify_all_threads_mb_per_sec,
            report.verify_all_threads_objects_per_sec,
            report.raw_blake3_mb_per_sec,
            report.raw_blake3_page_cache_mb_per_sec,
            report.ratio_to_raw * 100.0,
            report.ratio_all_threads_to_raw * 100.0,
            report.verify_all_threads,
            report.ratio_to_raw_page_cache * 100.0
        )
    })
}

/// Single-thread BLAKE3 over `total` bytes of 64 KiB pieces (the store's
/// average chunk) of an in-memory buffer; MB/s.
fn raw_blake3(buffer: &[u8], total: u64) -> f64 {
    let started = Instant::now();
    let mut hashed = 0u64;
    let mut sink = 0u8;
    while hashed < total {
        for piece in buffer.chunks(64 * 1024) {
            sink ^= blake3::hash(piece).as_bytes()[0];
            hashed += piece.len() as u64;
        }
    }
    std::hint::black_box(sink);
    hashed as f64 / started.elapsed().as_secs_f64() / 1e6
}

/// Single-thread BLAKE3 over the store's segment files as they sit in the
/// page cache (mapped, 64 KiB pieces), like `b3sum` on the files; MB/s.
fn raw_blake3_files(pack: &std::path::Path) -> anyhow::Result<f64> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(pack)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "seg") {
            files.push(std::fs::File::open(path)?);
        }
    }
    let started = Instant::now();
    let (mut hashed, mut sink) = (0u64, 0u8);
    for file in &files {
        // SAFETY: the benchmark's own store is closed; nothing changes its files.
        let map = unsafe { memmap2::Mmap::map(file)? };
        for piece in map.chunks(64 * 1024) {
            sink ^= blake3::hash(piece).as_bytes()[0];
            hashed += piece.len() as u64;
        }
    }
    std::hint::black_box(sink);
    Ok(hashed as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// One full verification of the store's current state with `threads` hashing threads.
fn verify_once(
    dir: &std::path::Path,
    threads: usize,
) -> anyhow::Result<(f64, keel_fsck::verify::Verification)> {
    use keel_fsck::verify::{Depth, Quiet, Verifier};
    let store = Store::open_read_only(dir)?;
    let target = keel_fsck::check::resolve_target(&store, &keel_fsck::check::TargetChoice::Head)?;
    let started = Instant::now();
    let mut verifier = Verifier::new(store.objects(), Depth::Full, false);
    verifier.set_threads(threads);
    let verification = verifier.verify(&target, &mut Quiet);
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        verification.is_clean(),
        "the benchmark store must verify clean"
    );
    Ok((secs, verification))
}
