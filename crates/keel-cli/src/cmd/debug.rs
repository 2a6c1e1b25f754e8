//! `keel debug`: tools for tests and investigations (hidden from help).

use std::io::Write;

use clap::{Args, Subcommand};
use keel_store::{Retention, Store, StoreOptions, Txn};

use super::DataDirArg;

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Commit in a loop, printing each acknowledged commit (for crash tests).
    CommitLoop(CommitLoopArgs),
    /// Write pseudo-random values into an offline store (test data).
    Fill(FillArgs),
    /// Damage objects of a store and print what was damaged as JSON (for fsck tests).
    Corrupt(CorruptArgs),
    /// Cut a running node off from its peers, or reconnect it (`--off`); the
    /// node must have been started with KEEL_FAULT_INJECTION=1.
    Isolate(IsolateArgs),
    /// Make a running node's current Raft log segment fail every append (a
    /// bad disk region; needs KEEL_FAULT_INJECTION=1 on the node).
    FailLog(super::cluster::EndpointArg),
}

#[derive(Args, Debug)]
pub struct IsolateArgs {
    /// Reconnect instead.
    #[arg(long)]
    pub off: bool,
    #[command(flatten)]
    pub target: super::cluster::EndpointArg,
}

#[derive(Args, Debug)]
pub struct FillArgs {
    #[command(flatten)]
    pub target: DataDirArg,
    /// Total bytes to write (e.g. 1GiB).
    #[arg(long, value_parser = parse_bytes)]
    pub bytes: u64,
    /// Size of each value.
    #[arg(long, value_parser = parse_bytes, default_value = "8MiB")]
    pub value_size: u64,
    /// Keys are `<prefix>/v<N>`.
    #[arg(long, default_value = "fill")]
    pub prefix: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("not a size: {text:?}"))?;
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} (use B, KiB, MiB or GiB)")),
    };
    Ok(number * unit)
}

/// A deterministic pseudo-random byte stream (xorshift), read size invariant.
struct Noise {
    state: u64,
    word: [u8; 8],
    used: usize,
    remaining: u64,
}

impl std::io::Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining) as usize;
        for byte in &mut buf[..n] {
            if self.used == 8 {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                self.word = self.state.to_le_bytes();
                self.used = 0;
            }
            *byte = self.word[self.used];
            self.used += 1;
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A distinct, non-zero xorshift state per value.
fn value_seed(seed: u64, n: u64) -> u64 {
    let mut input = [0u8; 16];
    input[..8].copy_from_slice(&seed.to_le_bytes());
    input[8..].copy_from_slice(&n.to_le_bytes());
    let hash = blake3::hash(&input);
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes")) | 1
}

fn fill(args: &FillArgs) -> anyhow::Result<()> {
    super::refuse_offline_write_to_member(&args.target.data_dir)?;
    let store = args.target.open()?;
    let values = args.bytes.div_ceil(args.value_size.max(1));
    for n in 0..values {
        let mut noise = Noise {
            state: value_seed(args.seed, n),
            word: [0; 8],
            used: 8,
            remaining: args.value_size,
        };
        let (value, _hold) = store.upload(&mut noise)?;
        let op = value.into_op(format!("{}/v{n}", args.prefix));
        store.commit(&[Txn {
            compare: Vec::new(),
            ops: vec![op],
        }])?;
    }
    store.checkpoint()?;
    Ok(store.close()?)
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
        DebugCommand::Fill(args) => fill(args),
        DebugCommand::Corrupt(args) => corrupt(args),
        DebugCommand::Isolate(args) => {
            let client = keel_node::client::Client::new(&args.target.endpoint);
            super::block_on(client.isolate(!args.off))?;
            Ok(())
        }
        DebugCommand::FailLog(args) => {
            let client = keel_node::client::Client::new(&args.endpoint);
            super::block_on(client.fail_log())?;
            Ok(())
        }
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
