//! A seam for fault injection: a budget of bytes that appends may still
//! write before they fail as if the disk were full.
//!
//! Production code never sets a budget, and then an append costs one atomic
//! load. Tests (and a node started with fault injection) set one to make a
//! small disk without mounting a file system. An append that does not fit
//! writes the part that fits and then fails with `ENOSPC`, like a real full
//! disk in the middle of a `pwrite`, so the callers' clean-up of a partial
//! append is what gets tested.
//!
//! Only appends to the pack, the checkpoint history and the Raft log draw
//! on the budget; small atomic file replacements (`write_atomic`) do not.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// No budget: appends are limited only by the real disk.
const UNLIMITED: u64 = u64::MAX;

/// Bytes appends may still write (shared by every log of one data directory).
#[derive(Debug)]
pub struct SpaceLimit {
    remaining: AtomicU64,
}

impl Default for SpaceLimit {
    fn default() -> SpaceLimit {
        SpaceLimit {
            remaining: AtomicU64::new(UNLIMITED),
        }
    }
}

impl SpaceLimit {
    /// Sets the bytes appends may still write; `None` removes the limit.
    pub fn set_remaining(&self, remaining: Option<u64>) {
        let value = remaining.map_or(UNLIMITED, |r| r.min(UNLIMITED - 1));
        self.remaining.store(value, Ordering::Relaxed);
    }

    /// The bytes appends may still write, if limited.
    pub fn remaining(&self) -> Option<u64> {
        let value = self.remaining.load(Ordering::Relaxed);
        (value != UNLIMITED).then_some(value)
    }

    /// Takes up to `len` bytes from the budget; returns how many may be written.
    fn claim(&self, len: u64) -> u64 {
        let mut granted = len;
        let _ = self
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |remaining| {
                if remaining == UNLIMITED {
                    granted = len;
                    return None;
                }
                granted = len.min(remaining);
                Some(remaining - granted)
            });
        granted
    }
}

/// Writes all of `bytes` at `offset`, or, when `limit` runs out, the part
/// that fits followed by an `ENOSPC` error.
pub fn write_all_at(
    file: &File,
    bytes: &[u8],
    offset: u64,
    limit: Option<&SpaceLimit>,
) -> io::Result<()> {
    let Some(limit) = limit else {
        return file.write_all_at(bytes, offset);
    };
    let granted = limit.claim(bytes.len() as u64) as usize;
    file.write_all_at(&bytes[..granted], offset)?;
    if granted < bytes.len() {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_past_the_limit_writes_what_fits_then_fails_with_enospc() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.path().join("f"))
            .unwrap();
        let limit = SpaceLimit::default();
        assert_eq!(limit.remaining(), None);
        write_all_at(&file, b"abc", 0, Some(&limit)).unwrap();
        limit.set_remaining(Some(5));
        write_all_at(&file, b"defg", 3, Some(&limit)).unwrap();
        let error = write_all_at(&file, b"hij", 7, Some(&limit)).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(limit.remaining(), Some(0));
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"abcdefgh");
    }
}
