//! `keel bench fsck`: builds a store of about 1 GiB (values of a few MiB plus
//! small keys), warms the page cache, and times a full verification (every
//! blob read and hashed) next to raw single-thread BLAKE3 over the same
//! chunk size in memory, in the same run.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use keel_store::{Op, Store, Txn};

use super::store::{fresh, value};
use crate::output::Output;

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

pub fn run(args: &FsckBenchArgs, out: Output) -> anyhow::Result<()> {
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
