//! Checkpointing: moving the WAL into the database file off the hub thread, and keeping the
//! WAL from growing without end under steady commits.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{open, SqliteStore};
use crate::config::SyncMode;

/// Past this many frames (4 KiB pages, 256 MiB) in the WAL, the writer has it start over
/// (1 MiB in unit tests, so that a test can see it happen).
const WAL_RESTART_FRAMES: i64 = if cfg!(test) { 256 } else { 65_536 };
/// What the WAL file is cut back to after a restart (64 MiB; 1 MiB in unit tests).
pub(super) const WAL_SIZE_LIMIT: i64 = if cfg!(test) { 1 << 20 } else { 64 << 20 };

/// What the store and its checkpoint thread tell each other.
#[derive(Default)]
pub(super) struct Checkpoints {
    /// The store is dropped: checkpoint once more and end.
    pub(super) stop: AtomicBool,
    /// The WAL is past `WAL_RESTART_FRAMES`: the writer should restart it.
    pub(super) restart: AtomicBool,
}

/// Checkpoints the WAL every 200 ms until the store is dropped, then once more. It holds no
/// lock the hub needs.
///
/// A passive checkpoint never blocks the writer, but SQLite starts the WAL over only at a
/// commit that finds everything checkpointed, and with commits every few milliseconds one
/// always lands while the checkpoint runs: the WAL grew for as long as traffic lasted
/// (325 MB after a million messages; at a steady 6,700 messages per second, 44 MB a
/// second). So once it is past `WAL_RESTART_FRAMES` this thread asks the writer to finish
/// the job between two commits (`SqliteStore::restart_wal`); a `RESTART` checkpoint from
/// here would wait for a pause between commits that a busy writer never leaves.
pub(super) fn spawn_checkpointer(
    path: PathBuf,
    sync: SyncMode,
    shared: Arc<Checkpoints>,
) -> anyhow::Result<()> {
    let conn = open(&path, sync)?;
    std::thread::Builder::new()
        .name("parley-checkpoint".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let stopping = shared.stop.load(Ordering::Relaxed);
            // (busy, frames in the WAL, frames checkpointed)
            match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
                Ok(frames) if frames > WAL_RESTART_FRAMES => {
                    shared.restart.store(true, Ordering::Relaxed)
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
            }
            if stopping {
                return;
            }
        })?;
    Ok(())
}

impl SqliteStore {
    /// Checkpoints what the checkpoint thread's last pass left, between two commits, so
    /// that the next commit finds everything copied and starts the WAL over (and
    /// `journal_size_limit` cuts the file back). Passive: a reader in the way is not waited
    /// for (the next pass asks again). This batch's answers wait for it: 100-300 ms at full
    /// load on this machine's disk, nearly all of it the two fsyncs of a checkpoint.
    pub(super) fn restart_wal(&self) {
        let busy = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0));
        match busy {
            Ok(0) => {}
            Ok(_) => tracing::debug!("WAL checkpoint before a restart was blocked; retrying later"),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint before a restart failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{batch, message};
    use super::super::SqliteStore;
    use crate::config::SyncMode;
    use crate::store::LogStore;

    /// Commits keep coming while the checkpoints run, yet the WAL starts over (and is cut
    /// back) again and again. Without the restart it only ever grows: 173 MB over these
    /// 6,000 commits on the machine this was written on.
    #[test]
    fn the_wal_starts_over_under_steady_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(dir.path(), SyncMode::Normal).unwrap();
        let wal = dir.path().join("parley.db-wal");
        let started = std::time::Instant::now();
        let (mut size, mut largest, mut cut_back, mut commits) = (0, 0, 0, 0i64);
        // At least 6,000 commits and 1.5 s (several checkpoint ticks), at most 100,000.
        while commits < 100_000
            && (commits < 6_000 || started.elapsed() < std::time::Duration::from_millis(1500))
        {
            commits += 1;
            let mut batch = batch((0..4).map(|c| message(commits * 4 + c, c, commits)));
            // Rows: the messages themselves go to the log.
            batch.cursors.extend((0..4).map(|c| ((c, c), commits)));
            store.write(&batch).unwrap();
            let now = std::fs::metadata(&wal).unwrap().len();
            if now < size {
                cut_back += 1;
            }
            (size, largest) = (now, largest.max(now));
        }
        assert!(
            cut_back >= 2,
            "the WAL was cut back {cut_back} times in {commits} commits, reaching {largest} bytes"
        );
    }
}
