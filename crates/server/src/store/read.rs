//! The read side sessions use, whichever store the node runs on: SQLite and the message
//! log on one node (reader.rs), PostgreSQL in a cluster (postgres/read.rs). Both answer
//! the same questions the same way; this only picks one.

use super::admin::{self, DeviceRow, UserRow as AdminUser};
use super::postgres::PgReader;
use super::reader::{Credentials, StoredMessage, TokenRow, UserRow};
use super::{
    ContactState, ConvId, ConvPosition, DeviceId, Page, Profile, Resolved, Seq, SqliteReader,
    UserId,
};

/// A cloneable handle to the node's reads.
#[derive(Clone)]
pub enum Reader {
    Local(SqliteReader),
    Shared(PgReader),
}

/// Forwards a call to whichever reader this is.
macro_rules! either {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match $self {
            Reader::Local(r) => r.$method($($arg),*).await,
            Reader::Shared(r) => r.$method($($arg),*).await,
        }
    };
}

impl Reader {
    /// Where the message log's last complete record ends (`None` on a cluster node: its
    /// messages are in PostgreSQL). A backup copies the log up to here.
    pub fn log_end(&self) -> Option<u64> {
        match self {
            Reader::Local(r) => Some(r.log_end()),
            Reader::Shared(_) => None,
        }
    }

    /// Every user but the reserved anonymous one, by name (`parley admin users list`).
    pub async fn admin_users(&self) -> anyhow::Result<Vec<AdminUser>> {
        match self {
            Reader::Local(r) => r.query(admin::users).await,
            Reader::Shared(r) => r.admin_users().await,
        }
    }

    /// The user called `name`, deleted and disabled ones too.
    pub async fn admin_user(&self, name: String) -> anyhow::Result<Option<AdminUser>> {
        match self {
            Reader::Local(r) => r.query(move |c| admin::user(c, &name)).await,
            Reader::Shared(r) => r.admin_user(name).await,
        }
    }

    /// The devices of `user`, by name, each with its tokens.
    pub async fn admin_devices(&self, user: UserId) -> anyhow::Result<Vec<DeviceRow>> {
        match self {
            Reader::Local(r) => r.query(move |c| admin::devices(c, user)).await,
            Reader::Shared(r) => r.admin_devices(user).await,
        }
    }

    /// The rooms `user` is a member of, by name.
    pub async fn admin_rooms_of(&self, user: UserId) -> anyhow::Result<Vec<String>> {
        match self {
            Reader::Local(r) => r.query(move |c| admin::rooms_of(c, user)).await,
            Reader::Shared(r) => r.admin_rooms_of(user).await,
        }
    }

    /// How many contacts `user` has, by state: (state, count).
    pub async fn admin_contact_counts(&self, user: UserId) -> anyhow::Result<Vec<(i64, i64)>> {
        match self {
            Reader::Local(r) => r.query(move |c| admin::contact_counts(c, user)).await,
            Reader::Shared(r) => r.admin_contact_counts(user).await,
        }
    }

    /// Every conversation `user` belongs to, with `device`'s cursor in it (see
    /// `SqliteReader::positions`).
    pub async fn positions(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> anyhow::Result<Vec<ConvPosition>> {
        either!(self.positions(user, device))
    }

    pub async fn credentials(&self, name: String) -> anyhow::Result<Option<Credentials>> {
        either!(self.credentials(name))
    }

    pub async fn token(&self, hash: Vec<u8>) -> anyhow::Result<Option<TokenRow>> {
        either!(self.token(hash))
    }

    pub async fn profile(&self, name: String) -> anyhow::Result<Option<Profile>> {
        either!(self.profile(name))
    }

    /// The conversation a history request names, if `user` may read it.
    pub async fn resolve(&self, user: UserId, target: String) -> anyhow::Result<Resolved> {
        either!(self.resolve(user, target))
    }

    /// When each of `names` that is a user was last seen (Unix ms; 0 if never): one
    /// indexed lookup a name (a watch list is at most `max_watched_users` long).
    pub async fn last_seen(
        &self,
        names: &[String],
    ) -> anyhow::Result<std::collections::HashMap<String, i64>> {
        let mut seen = std::collections::HashMap::with_capacity(names.len());
        for name in names {
            let found = self.search(name.clone(), 1).await?;
            if let Some(row) = found.into_iter().find(|r| r.name == *name) {
                seen.insert(row.name, row.last_seen.unwrap_or(0));
            }
        }
        Ok(seen)
    }

    /// Users whose names start with `prefix`, sorted, at most `limit`.
    pub async fn search(&self, prefix: String, limit: usize) -> anyhow::Result<Vec<UserRow>> {
        either!(self.search(prefix, limit))
    }

    /// `user`'s contacts: (name, state, last seen).
    pub async fn contacts(
        &self,
        user: UserId,
    ) -> anyhow::Result<Vec<(String, ContactState, Option<i64>)>> {
        either!(self.contacts(user))
    }

    /// Whether `user` may download the file `hash`.
    pub async fn may_download(&self, user: UserId, hash: String) -> anyhow::Result<bool> {
        either!(self.may_download(user, hash))
    }

    /// A page of the users (but the reserved anonymous one), sorted by name: those after
    /// `after` ("": from the first), at most `limit`.
    pub async fn users(&self, after: String, limit: usize) -> anyhow::Result<Vec<UserRow>> {
        either!(self.users(after, limit))
    }

    /// A page of `conv`'s history, oldest first, with receive times (ms).
    pub async fn page(
        &self,
        conv: ConvId,
        page: Page,
        limit: usize,
    ) -> anyhow::Result<Vec<(StoredMessage, i64)>> {
        match self {
            Reader::Local(r) => r.page(conv, page, limit).await,
            Reader::Shared(r) => r.history(conv, page, limit).await,
        }
    }

    /// The message of `conv` at `seq`, if it is one (not a tombstone, not lost).
    pub async fn message_at(
        &self,
        conv: ConvId,
        seq: Seq,
    ) -> anyhow::Result<Option<StoredMessage>> {
        let page = self.page(conv, Page::AfterSeq(seq - 1), 1).await?;
        Ok(page.into_iter().map(|(m, _)| m).find(|m| m.seq == seq))
    }

    /// Up to `limit` messages of each conversation in `from`, after the given sequence.
    pub async fn after(
        &self,
        from: Vec<(ConvId, Seq)>,
        limit: usize,
    ) -> anyhow::Result<Vec<Vec<StoredMessage>>> {
        match self {
            Reader::Local(r) => r.after(from, limit).await,
            Reader::Shared(r) => r.after_marked(from, limit).await,
        }
    }
}
