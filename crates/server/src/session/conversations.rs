//! The conversations a user belongs to, for a client's list of them (the web app's
//! sidebar): each with its kind, the name to show, how far it goes, where this device is,
//! and its last message.

use parley_proto::ErrorKind;

use super::Session;
use crate::store::{ConvId, Page, Seq};
use parley_proto::ConversationKind as Kind;

/// One conversation of the user.
pub(super) struct Summary {
    pub conv: ConvId,
    pub kind: Kind,
    /// The room's name, the other user's (a direct conversation), or `*`.
    pub name: String,
    pub last_seq: Seq,
    /// The last sequence this device received.
    pub cursor: Seq,
    pub last: Option<Last>,
}

/// A conversation's last message.
pub(super) struct Last {
    pub id: i64,
    pub seq: Seq,
    pub from: std::sync::Arc<str>,
    pub body: bytes::Bytes,
    /// The sender's timestamp.
    pub time: u64,
    /// Unix ms.
    pub received_at: i64,
}

impl Session {
    pub(super) async fn conversations(&self) -> Result<Vec<Summary>, ErrorKind> {
        let Some((identity, me)) = &self.login else {
            return Err(ErrorKind::NotLoggedIn);
        };
        self.settle().await;
        let reader = &self.shared.reader;
        let positions = reader.positions(identity.user, identity.device).await;
        let positions = positions.map_err(|_| ErrorKind::Internal)?;
        let mut out = Vec::with_capacity(positions.len());
        for p in positions {
            let (a, b) = &p.members;
            let name = match p.kind {
                Kind::Direct if **a == **me => b.to_string(),
                Kind::Direct | Kind::Room => a.to_string(),
                Kind::Broadcast => "*".to_string(),
            };
            let last = reader.page(p.conv, Page::Latest, 1).await;
            let last = last.map_err(|_| ErrorKind::Internal)?.pop();
            let last = last.map(|(m, received_at)| Last {
                id: m.id,
                seq: m.seq,
                from: m.sender,
                body: m.body,
                time: m.sent_at,
                received_at,
            });
            out.push(Summary {
                conv: p.conv,
                kind: p.kind,
                name,
                last_seq: p.last_seq,
                cursor: p.cursor,
                last,
            });
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.last.as_ref().map_or(0, |m| m.id)));
        Ok(out)
    }
}
