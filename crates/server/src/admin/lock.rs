//! The data directory's lock: held by a running server for its whole life, and by
//! `parley admin` while it works on a stopped server's data, so that two processes never
//! write the same store (SQLite would serialise them, but the message log and the hub's
//! in-memory state would not).
//!
//! An advisory `flock` on `data_dir/parley.lock`: released by the kernel when the process
//! ends however it ends, so a crash leaves no stale lock behind.

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::Context;
use rustix::fs::{flock, FlockOperation};

/// The lock, held until dropped.
#[derive(Debug)]
pub struct DataLock {
    _file: File,
}

impl DataLock {
    /// Takes the lock of `data_dir` (created if missing); `None` if another process holds
    /// it.
    pub fn try_take(data_dir: &Path) -> anyhow::Result<Option<DataLock>> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let path = data_dir.join("parley.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(DataLock { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// Takes the lock of `data_dir`, or says that another server uses it.
    pub fn take(data_dir: &Path) -> anyhow::Result<DataLock> {
        Self::try_take(data_dir)?.with_context(|| {
            format!(
                "{} is in use by another parley process (its parley.lock is held)",
                data_dir.display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataLock::take(dir.path()).unwrap();
        assert!(DataLock::try_take(dir.path()).unwrap().is_none());
        let error = DataLock::take(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("in use by another parley process"),
            "{error}"
        );
        drop(held);
        assert!(DataLock::try_take(dir.path()).unwrap().is_some());
    }
}
