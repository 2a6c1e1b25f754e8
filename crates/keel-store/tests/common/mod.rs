//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::io::Read;

use keel_store::{Retention, Store, StoreOptions};

/// Options with small segments so tests roll, hint and compact segments.
pub fn small_options(retention: Retention) -> StoreOptions {
    StoreOptions {
        segment_bytes_target: 64 * 1024,
        retention: Some(retention),
        ..StoreOptions::default()
    }
}

pub fn new_store(dir: &std::path::Path) -> Store {
    Store::init(dir, small_options(Retention::default())).unwrap()
}

/// A deterministic pseudo-random byte stream (xorshift), so large values
/// need no memory.
pub struct NoiseReader {
    state: u64,
    word: [u8; 8],
    used: usize,
    remaining: u64,
}

impl NoiseReader {
    pub fn new(seed: u64, len: u64) -> NoiseReader {
        NoiseReader {
            state: seed | 1,
            word: [0; 8],
            used: 8,
            remaining: len,
        }
    }
}

impl Read for NoiseReader {
    /// The stream depends only on the seed, never on how reads are sized.
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

pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    NoiseReader::new(seed, len as u64)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The random seed of a test: `KEEL_TEST_SEED` if set, else a fresh one;
/// printed so that a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("KEEL_TEST_SEED") {
        Ok(text) => text.parse().expect("KEEL_TEST_SEED is a u64"),
        Err(_) => rand::random(),
    };
    println!("{test} seed: {seed} (replay with KEEL_TEST_SEED={seed})");
    seed
}
