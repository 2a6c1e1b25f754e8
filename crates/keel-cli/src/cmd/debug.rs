//! `keel debug`: tools for tests and investigations (hidden from help).

use std::io::Write;

use clap::{Args, Subcommand};
use keel_store::{Retention, Store, StoreOptions, Txn};

use super::DataDirArg;

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Commit in a loop, printing each acknowledged commit (for crash tests).
    CommitLoop(CommitLoopArgs),
    /// Damage objects of a store and print what was damaged as JSON (for fsck tests).
    Corrupt(CorruptArgs),
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CorruptMode {
    /// Remove a value's chunk.
    DeleteBlob,
    /// Flip bits in a value's chunk (checksums rewritten: silent bit rot).
    FlipBits,
    /// Remove a directory's root node.
    DeleteDir,
    /// Flip bits in a directory's root node.
    DamageDir,
    /// Remove a node below a directory's root.
    DeleteDirNode,
}

#[derive(Args, Debug)]
pub struct CorruptArgs {
    #[command(flatten)]
    pub target: DataDirArg,
    #[arg(long, value_enum)]
    pub mode: CorruptMode,
    /// Damage the object of this key or directory (else random ones).
    #[arg(long, conflicts_with = "random")]
    pub key: Option<String>,
    /// Number of random objects to damage.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub random: usize,
    /// Seed of the random choice (printed; random when not given).
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Args, Debug)]
pub struct CommitLoopArgs {
    #[command(flatten)]
    pub target: DataDirArg,
    /// Number of the first commit.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Commits write keys `crash/s<N mod slots>`.
    #[arg(long, default_value_t = 500)]
    pub slots: u64,
    #[arg(long, default_value_t = 25)]
    pub checkpoint_every: u64,
    #[arg(long, default_value_t = 200)]
    pub gc_every: u64,
    #[arg(long, default_value_t = 256 * 1024)]
    pub segment_bytes: u64,
    /// Stop after this many commits (0: never).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
}

pub fn run(command: &DebugCommand) -> anyhow::Result<()> {
    match command {
        DebugCommand::CommitLoop(args) => commit_loop(args),
        DebugCommand::Corrupt(args) => corrupt(args),
    }
}

fn corrupt(args: &CorruptArgs) -> anyhow::Result<()> {
    use keel_fsck::corrupt::Mode;
    let mode = match args.mode {
        CorruptMode::DeleteBlob => Mode::DeleteBlob,
        CorruptMode::FlipBits => Mode::FlipBits,
        CorruptMode::DeleteDir => Mode::DeleteDir,
        CorruptMode::DamageDir => Mode::DamageDir,
        CorruptMode::DeleteDirNode => Mode::DeleteDirNode,
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    let report = keel_fsck::corrupt::corrupt(
        &args.target.data_dir,
        mode,
        args.key.as_deref(),
        args.random,
        seed,
    )?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &report)?;
    writeln!(stdout)?;
    Ok(())
}

/// The value commit `n` writes: it names `n`, and every 50th one is large
/// enough to be stored as a chunk.
pub fn crash_value(n: u64) -> Vec<u8> {
    let mut value = format!("commit {n};").into_bytes();
    if n.is_multiple_of(50) {
        value.resize(20_000, (n % 251) as u8);
    }
    value
}

fn commit_loop(args: &CommitLoopArgs) -> anyhow::Result<()> {
    let options = StoreOptions {
        segment_bytes_target: args.segment_bytes,
        retention: Some(Retention {
            keep_newest: 3,
            keep_hourly_hours: 0,
        }),
        ..StoreOptions::default()
    };
    let store = Store::open(&args.target.data_dir, options)?;
    let mut stdout = std::io::stdout().lock();
    let mut n = args.start;
    loop {
        let key = format!("crash/s{}", n % args.slots);
        store.commit(&[Txn::put(key, crash_value(n))])?;
        // Printed only after the commit is durable: the acknowledgement.
        writeln!(stdout, "{n}")?;
        stdout.flush()?;
        n += 1;
        if n.is_multiple_of(args.checkpoint_every) {
            store.checkpoint()?;
        }
        if n.is_multiple_of(args.gc_every) {
            store.gc(false)?;
        }
        if args.count > 0 && n >= args.start + args.count {
            return Ok(());
        }
    }
}
