//! Small file-system helpers that carry the durability rules.
//!
//! - A file is durable only after `fsync`/`fdatasync` returns.
//! - A new name (create, rename, unlink) is durable only after its directory
//!   is fsynced too.
//! - Files are replaced atomically: write a temporary file in `staging/`,
//!   fsync it, rename it over the target, fsync the target's directory. The
//!   temporary is removed on every error path.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, Result};

/// Fsyncs a directory so that names created, renamed or removed in it survive a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .context("fsync directory", dir)
}

/// Creates `dir` (and parents) if missing, fsyncing the parent of each level created.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            create_dir_durable(parent)?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(crate::StoreError::io("create directory", dir, e)),
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file being written in `staging/`. Removed when dropped unless it was
/// persisted with [`StagingFile::persist`], so no error path leaks it.
#[derive(Debug)]
pub struct StagingFile {
    path: PathBuf,
    file: Option<File>,
}

impl StagingFile {
    /// Creates a new, uniquely named temporary file in `staging_dir`.
    pub fn create(staging_dir: &Path, label: &str) -> Result<StagingFile> {
        let unique = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{label}.{}.{unique}.tmp", std::process::id());
        let path = staging_dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)
            .context("create staging file", &path)?;
        Ok(StagingFile {
            path,
            file: Some(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("staging file used after persist")
    }

    /// Writes all of `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let path = self.path.clone();
        self.file()
            .write_all(bytes)
            .context("write staging file", &path)
    }

    /// Fsyncs the file, renames it to `target` and fsyncs `target`'s directory.
    pub fn persist(mut self, target: &Path) -> Result<()> {
        let file = self.file.take().expect("staging file persisted twice");
        file.sync_all().context("fsync staging file", &self.path)?;
        drop(file);
        fs::rename(&self.path, target).context("rename staging file into place", target)?;
        // The name now belongs to the target; nothing left to clean up.
        self.path = PathBuf::new();
        fsync_dir(target.parent().unwrap_or(Path::new(".")))
    }
}

impl Drop for StagingFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Atomically replaces `target` with `bytes` (via `staging_dir`).
pub fn write_atomic(staging_dir: &Path, target: &Path, bytes: &[u8]) -> Result<()> {
    let label = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    let mut temp = StagingFile::create(staging_dir, label)?;
    temp.write_all(bytes)?;
    temp.persist(target)
}

/// Removes everything inside `dir` (not `dir` itself). Returns how many
/// entries were removed and their total size in bytes.
pub fn empty_dir(dir: &Path) -> Result<(usize, u64)> {
    let mut removed = 0;
    let mut bytes = 0;
    for entry in fs::read_dir(dir).context("list directory", dir)? {
        let entry = entry.context("list directory", dir)?;
        let path = entry.path();
        let meta = entry.metadata().context("stat", &path)?;
        if meta.is_dir() {
            bytes += dir_size(&path);
            fs::remove_dir_all(&path).context("remove stale staging directory", &path)?;
        } else {
            bytes += meta.len();
            fs::remove_file(&path).context("remove stale staging file", &path)?;
        }
        removed += 1;
    }
    if removed > 0 {
        fsync_dir(dir)?;
    }
    Ok((removed, bytes))
}

/// Total size of the files under `dir`, best effort (unreadable entries count as zero).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_size(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_file_is_removed_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let mut temp = StagingFile::create(dir.path(), "x").unwrap();
            temp.write_all(b"partial").unwrap();
            temp.path().to_path_buf()
        };
        assert!(!path.exists(), "dropped staging file must be removed");
        let target = dir.path().join("target");
        write_atomic(dir.path(), &target, b"whole").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"whole");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn empty_dir_removes_files_and_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"1234").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/b"), b"12").unwrap();
        assert_eq!(empty_dir(dir.path()).unwrap(), (2, 6));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
