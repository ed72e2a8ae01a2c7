//! Sending a message, the same for every protocol: who may send, the message rate, the
//! in-flight budget, then the hub, which stores the message and answers the request.

use bytes::Bytes;
use parley_proto::{check_name, ErrorKind, Reply, Target};

use super::{Session, Who};
use crate::outbound::{Item, Tag};

impl Session {
    /// Sends `body` to `to`. The hub answers `tag` once the message is stored (or says why
    /// it refused it); a refusal here (`who` may not send, or past the message rate) is
    /// answered through `tag` too. Waits while too many requests are in flight.
    ///
    /// The message rate counts stored messages: a send to several users stores one message
    /// for each, so it takes one token per recipient (all or none: past the rate nothing
    /// is sent). A room or everyone is one message, whatever the number of readers.
    pub(super) async fn send(&mut self, to: Target, body: Bytes, sent_at: u64, tag: Tag, who: Who) {
        self.send_with(to, body, sent_at, tag, who, None).await
    }

    /// `send`, with the stored file `attachment` (its SHA-256): the conversation's members
    /// may download it from then on.
    pub(super) async fn send_with(
        &mut self,
        to: Target,
        body: Bytes,
        sent_at: u64,
        tag: Tag,
        who: Who,
        attachment: Option<String>,
    ) {
        let from = match self.acting(who) {
            Ok(from) => from,
            Err(kind) => return self.refuse(tag, kind).await,
        };
        let deliveries = match &to {
            Target::Users(names) => names.len(),
            Target::User(_) | Target::Room(_) | Target::Everyone => 1,
        };
        if !self.messages.try_take_n(deliveries) {
            return self.refuse(tag, ErrorKind::RateLimited).await;
        }
        self.acquire_inflight().await;
        let hub = &self.shared.hub;
        hub.send(self.link.clone(), from, to, body, sent_at, tag, attachment);
    }

    /// Checks the name of a message's recipient: a name that breaks the name rules names
    /// nobody (no such name can have logged in).
    pub(super) fn recipient(&self, name: &[u8]) -> Result<(), ErrorKind> {
        let max = self.shared.config.max_name_bytes;
        check_name(name, max).map_err(|_| ErrorKind::UserNotFound)
    }

    /// Answers a request refused before it reached the hub (boxed: rare, and its state
    /// would grow every sending session's).
    pub(super) async fn refuse(&mut self, tag: Tag, kind: ErrorKind) {
        Box::pin(self.say(Item::Reply(tag, Reply::Error(kind)))).await
    }
}

/// Now, in Unix nanoseconds: the timestamp of messages whose protocol carries none.
pub(super) fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
