//! History, the same for every protocol: a page of a conversation the user belongs to, and
//! the public log's latest messages for anyone (seed 001's `LIST_MESSAGES`).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use parley_proto::{ConversationKind, ErrorKind};

use super::Session;
use crate::outbound::MESSAGE_OVERHEAD;
use crate::store::{ConvId, MessageKind, Page, Resolved, Seq, StoredMessage, UserId};

/// What the line protocols show in place of a deleted message's words.
pub(super) const DELETED: &str = "[message deleted]";

/// Messages a page holds when the request names no count.
const DEFAULT_PAGE: usize = 50;
/// Most messages read from the store at a time for one page.
const SLICE: usize = 64;
/// A page's frame besides its messages (a binary page's header and count), with margin.
/// A message takes its body and names and `MESSAGE_OVERHEAD` (a binary event's ids, kind,
/// time and string lengths are 39 bytes).
const PAGE_OVERHEAD: usize = 16;

/// One stored message as a history shows it.
pub(super) struct HistoryMessage {
    pub id: i64,
    pub conv: ConvId,
    pub seq: Seq,
    pub kind: ConversationKind,
    pub from: Arc<str>,
    /// The recipient's name (direct), the room's name (room) or `*` (broadcast).
    pub to: String,
    pub body: Bytes,
    /// The sender's timestamp, untouched.
    pub sent_at: u64,
    /// When the server received it, Unix ms.
    pub received_at: i64,
    /// Deleted (store/deletions.rs): its body is empty, and it shows as deleted.
    pub deleted: bool,
}

impl Session {
    /// A page of `target` (a room the user is in, a user, or `*`), oldest first: `limit`
    /// messages (default 50; at least 1, at most `max_history`). A user the session's user
    /// never talked with has an empty history.
    pub(super) async fn history(
        &self,
        target: &str,
        page: Page,
        limit: Option<usize>,
    ) -> Result<Vec<HistoryMessage>, ErrorKind> {
        let Some((identity, name)) = &self.login else {
            return Err(ErrorKind::NotLoggedIn);
        };
        let limit = limit
            .unwrap_or(DEFAULT_PAGE)
            .max(1)
            .min(self.shared.config.max_history);
        self.page(identity.user, name, target, page, limit).await
    }

    /// The last `limit` messages sent to everyone, for any session, logged in or not.
    pub(super) async fn latest_broadcasts(&self, limit: usize) -> Vec<HistoryMessage> {
        let (user, name) = match &self.login {
            Some((identity, name)) => (identity.user, &**name),
            None => (0, ""),
        };
        let page = self.page(user, name, "*", Page::Latest, limit).await;
        page.unwrap_or_default()
    }

    /// `limit` messages of `target` as `user` (named `me`) may read them.
    async fn page(
        &self,
        user: UserId,
        me: &str,
        target: &str,
        page: Page,
        limit: usize,
    ) -> Result<Vec<HistoryMessage>, ErrorKind> {
        // The session's own messages still with the hub are part of its history.
        self.settle().await;
        let reader = &self.shared.reader;
        let (conv, kind) = match reader.resolve(user, target.to_string()).await {
            Ok(Resolved::Conv(conv, kind)) => (conv, kind),
            Ok(Resolved::Empty) => return Ok(Vec::new()),
            Ok(Resolved::NotMember(_)) => return Err(ErrorKind::NotMember),
            Ok(Resolved::NotFound) => return Err(ErrorKind::UserNotFound),
            Err(_) => return Err(ErrorKind::Internal),
        };
        let rows = self
            .rows(conv, page, limit, target.len().max(me.len()))
            .await?;
        Ok(rows
            .into_iter()
            .map(|(m, received_at)| {
                // In a direct conversation, the recipient is whichever of the two did not send.
                let to = match kind {
                    ConversationKind::Direct if *m.sender == *me => target,
                    ConversationKind::Direct => me,
                    ConversationKind::Room | ConversationKind::Broadcast => target,
                };
                HistoryMessage {
                    id: m.id,
                    conv: m.conv,
                    seq: m.seq,
                    kind,
                    to: to.to_string(),
                    from: m.sender,
                    body: m.body,
                    sent_at: m.sent_at,
                    received_at,
                    deleted: m.kind == MessageKind::Deleted,
                }
            })
            .collect())
    }

    /// Up to `limit` messages of `conv` from `page`, oldest first, no more than fit in one
    /// frame (`max_frame_bytes`; at least one message): a page back keeps the newest,
    /// a page forward the oldest, so the client's next page from the one it got goes on
    /// where this one stopped. Read a slice at a time, so a page of large messages never
    /// holds much more than a frame's worth. `to` is the longest a recipient's name is.
    pub(super) async fn rows(
        &self,
        conv: ConvId,
        page: Page,
        limit: usize,
        to: usize,
    ) -> Result<Vec<(StoredMessage, i64)>, ErrorKind> {
        let budget = self
            .shared
            .config
            .max_frame_bytes
            .saturating_sub(PAGE_OVERHEAD);
        let forward = matches!(
            page,
            Page::AfterId(_) | Page::AfterSeq(_) | Page::AfterTime(_)
        );
        // Nearest to the page's start first.
        let mut rows: VecDeque<(StoredMessage, i64)> = VecDeque::new();
        let (mut next, mut bytes) = (page, 0);
        while rows.len() < limit {
            let want = (limit - rows.len()).min(SLICE);
            let mut slice = self.shared.reader.page(conv, next, want).await;
            let slice = slice.as_mut().map_err(|_| ErrorKind::Internal)?;
            let got = slice.len();
            if !forward {
                slice.reverse();
            }
            for row in slice.drain(..) {
                let weight = row.0.body.len() + row.0.sender.len() + to + MESSAGE_OVERHEAD;
                if !rows.is_empty() && bytes + weight > budget {
                    return Ok(in_order(rows, forward));
                }
                bytes += weight;
                rows.push_back(row);
            }
            let Some((last, _)) = rows.back() else { break };
            if got < want {
                break;
            }
            next = match forward {
                true => Page::AfterId(last.id),
                false => Page::BeforeId(last.id),
            };
        }
        Ok(in_order(rows, forward))
    }
}

/// `rows`, nearest to the page's start first, oldest first.
fn in_order(rows: VecDeque<(StoredMessage, i64)>, forward: bool) -> Vec<(StoredMessage, i64)> {
    let mut rows = Vec::from(rows);
    if !forward {
        rows.reverse();
    }
    rows
}
