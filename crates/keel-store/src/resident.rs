//! Reads that never wait for the disk, so a server can run them on its
//! event-loop threads.
//!
//! Handing every read to a thread pool costs two thread wake-ups, and with
//! small values that hand-off is most of the read (in the cluster benchmark
//! it took about a fifth of a node's CPU). Inside [`resident`], the store
//! reads its files with `preadv2(RWF_NOWAIT)`: bytes in the page cache are
//! copied as usual, and anything that would need the disk fails at once
//! with [`StoreError::NotResident`], which `resident` turns into `None` so
//! the caller can retry on a thread that may block. Decoded directory nodes
//! come from the node cache without any system call.
//!
//! The mode is a thread-local flag rather than a parameter because it only
//! changes how the lowest layer ([`crate::segment`]) reads, and every read
//! path of the store passes through it.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use crate::error::{Result, StoreError};

thread_local! {
    static NO_WAIT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `read` with file reads limited to the page cache. `None` when it
/// needed data that is not in memory (run it again where blocking is
/// allowed); otherwise its result.
pub fn resident<T>(read: impl FnOnce() -> Result<T>) -> Option<Result<T>> {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            NO_WAIT.with(|flag| flag.set(self.0));
        }
    }
    let _reset = Reset(NO_WAIT.with(|flag| flag.replace(true)));
    match read() {
        Err(StoreError::NotResident) => None,
        other => Some(other),
    }
}

/// Fills `buf` from `offset` of `file`; within [`resident`], only from the
/// page cache.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> Result<(), ReadError> {
    if !NO_WAIT.with(Cell::get) {
        return file.read_exact_at(buf, offset).map_err(ReadError::Io);
    }
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, which is valid for writes of its length
    // for the whole call; the descriptor belongs to `file`, borrowed here.
    let read = unsafe {
        libc::preadv2(
            file.as_raw_fd(),
            &iov,
            1,
            offset as libc::off_t,
            libc::RWF_NOWAIT,
        )
    };
    if read < 0 {
        let error = io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            // Would wait for the disk, or the file system cannot say, or a
            // signal came: the blocking read tries again (and reports any
            // real error with its context).
            Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS | libc::EINTR) => {
                ReadError::NotResident
            }
            _ => ReadError::Io(error),
        });
    }
    match read as usize {
        n if n == buf.len() => Ok(()),
        // Part of the range is cached: let the blocking read do it whole.
        n if n > 0 => Err(ReadError::NotResident),
        _ => Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
    }
}

/// Why [`read_exact_at`] failed.
pub(crate) enum ReadError {
    Io(io::Error),
    NotResident,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_bytes_are_read_without_waiting_and_eof_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello, resident world").unwrap();
        let file = File::open(&path).unwrap();
        // Just written, so in the page cache.
        let read = resident(|| {
            let mut buf = [0u8; 8];
            match read_exact_at(&file, &mut buf, 7) {
                Ok(()) => Ok(Some(buf)),
                Err(ReadError::NotResident) => Err(StoreError::NotResident),
                Err(ReadError::Io(e)) => Err(StoreError::io("read", &path, e)),
            }
        });
        match read {
            Some(Ok(Some(buf))) => assert_eq!(&buf, b"resident"),
            // A file system without RWF_NOWAIT support: never wrong, just slow.
            None => eprintln!("this file system does not support RWF_NOWAIT reads"),
            Some(other) => panic!("unexpected {:?}", other.map(|_| ())),
        }
        let mut buf = [0u8; 8];
        assert!(matches!(
            read_exact_at(&file, &mut buf, 100),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof
        ));
        assert!(
            !NO_WAIT.with(Cell::get),
            "the flag is reset after `resident`"
        );
    }

    #[test]
    fn the_flag_is_reset_after_a_panic() {
        let caught = std::panic::catch_unwind(|| resident::<()>(|| panic!("boom")));
        assert!(caught.is_err());
        assert!(!NO_WAIT.with(Cell::get));
    }
}
