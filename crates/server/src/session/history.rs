//! History, the same for every protocol: a page of a conversation the user belongs to, and
//! the public log's latest messages for anyone (seed 001's `LIST_MESSAGES`).

use std::sync::Arc;

use bytes::Bytes;
use parley_proto::{ConversationKind, ErrorKind};

use super::Session;
use crate::store::{ConvId, Page, Resolved, Seq, UserId};

/// Messages a page holds when the request names no count.
const DEFAULT_PAGE: usize = 50;

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
            Ok(Resolved::NotMember) => return Err(ErrorKind::NotMember),
            Ok(Resolved::NotFound) => return Err(ErrorKind::UserNotFound),
            Err(_) => return Err(ErrorKind::Internal),
        };
        let rows = reader.page(conv, page, limit).await;
        let rows = rows.map_err(|_| ErrorKind::Internal)?;
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
                }
            })
            .collect())
    }
}
