//! Which messages are deleted, and which messages are the tombstones that announce it,
//! held in memory for the readers.
//!
//! A deletion never rewrites the log: the deleted message stays there, and a tombstone (an
//! ordinary message of the same conversation with an empty body) is appended after it, so
//! devices that had the message receive the deletion in order, through the same cursors,
//! catch-up and acks as any message. The `deletions` table says which is which; this is
//! that table in memory, so that a history page knows without a query which of its
//! messages to show as deleted and which to leave out. It grows by two small entries per
//! deleted message (tens of bytes), and is read whole at start.
//!
//! The writer records a batch's deletions after its messages are appended and before the
//! index shows them (sqlite/queries.rs), so a reader that finds a tombstone's id in the
//! index always knows it for one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use rusqlite::Connection;

use super::{Deletion, Seq};

#[derive(Default)]
pub struct Deletions {
    /// Whether any message was ever deleted: most servers never delete one, and every
    /// message a reader returns asks, so the common answer costs one load, not a lock
    /// shared by every reader thread.
    any: AtomicBool,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Deleted message id → its tombstone's id.
    deleted: HashMap<i64, i64, ahash::RandomState>,
    /// Tombstone id → the deleted message's (id, sequence).
    tombstones: HashMap<i64, (i64, Seq), ahash::RandomState>,
}

/// What a stored message is, as far as deletions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message,
    /// A message that was deleted: shown as such, its body never again.
    Deleted,
    /// The tombstone of a deletion: (the deleted message's id, its sequence).
    Tombstone(i64, Seq),
}

impl Deletions {
    /// Reads the deletions whose tombstones the log holds (`log_end` is its last id). A
    /// deletion whose tombstone is past it was never acknowledged (the process stopped
    /// between the batch's rows and its messages, or a power loss took the tombstone): its
    /// row is removed, and the message stands.
    pub(super) fn load(conn: &Connection, log_end: i64) -> anyhow::Result<Deletions> {
        let undone = conn.execute("DELETE FROM deletions WHERE tombstone_id > ?1", [log_end])?;
        if undone > 0 {
            tracing::warn!(
                deletions = undone,
                "deletions whose tombstones never reached the message log undone"
            );
        }
        let mut inner = Inner::default();
        let mut stmt = conn.prepare("SELECT message_id, seq, tombstone_id FROM deletions")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (message, seq, tombstone): (i64, Seq, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            inner.deleted.insert(message, tombstone);
            inner.tombstones.insert(tombstone, (message, seq));
        }
        Ok(Deletions {
            any: AtomicBool::new(!inner.deleted.is_empty()),
            inner: RwLock::new(inner),
        })
    }

    /// Records deletions whose tombstones are now in the log.
    pub(super) fn record(&self, deletions: &[Deletion]) {
        if deletions.is_empty() {
            return;
        }
        let mut inner = self.inner.write().expect("deletions poisoned");
        for d in deletions {
            inner.deleted.insert(d.message, d.tombstone);
            inner.tombstones.insert(d.tombstone, (d.message, d.seq));
        }
        self.any.store(true, Ordering::Release);
    }

    /// What message `id` is.
    pub fn kind(&self, id: i64) -> Kind {
        if !self.any.load(Ordering::Acquire) {
            return Kind::Message;
        }
        let inner = self.inner.read().expect("deletions poisoned");
        if inner.deleted.contains_key(&id) {
            return Kind::Deleted;
        }
        match inner.tombstones.get(&id) {
            Some(&(message, seq)) => Kind::Tombstone(message, seq),
            None => Kind::Message,
        }
    }

    pub fn is_deleted(&self, id: i64) -> bool {
        self.kind(id) == Kind::Deleted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_deletion_marks_the_message_and_its_tombstone() {
        let d = Deletions::default();
        assert_eq!(d.kind(5), Kind::Message);
        d.record(&[Deletion {
            message: 5,
            conv: 2,
            seq: 3,
            tombstone: 9,
            by: 1,
            at: 0,
        }]);
        assert_eq!(d.kind(5), Kind::Deleted);
        assert_eq!(d.kind(9), Kind::Tombstone(5, 3));
        assert_eq!(d.kind(6), Kind::Message);
    }
}
