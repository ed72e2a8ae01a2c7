//! The hub: the one place that changes shared state.
//!
//! Sessions send it operations over a channel; a single thread ([`core`]) takes whatever has
//! queued up, applies it in order, writes it to the store in one transaction (group commit),
//! and only then answers senders and pushes messages to online recipients. So an OK always
//! follows the commit, delivery order is the log's order, and no lock is shared with the
//! sessions. A node-to-node router (NATS) would hang off the same delivery step.

mod core;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parley_proto::{ErrorKind, Reply};
use tokio::sync::oneshot;

use crate::outbound::{Outbound, SessionLink};
use crate::store::{ConvId, DeviceId, Seq, UserId};
use crate::wire::Tag;

pub use self::core::spawn;

/// A logged-in session as the hub knows it.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub user: UserId,
    pub device: DeviceId,
}

/// The answer to a successful login.
#[derive(Debug, Clone)]
pub struct LoginOk {
    pub identity: Identity,
    pub name: Arc<str>,
}

/// The hub's answer to a catching-up session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoLive {
    /// Every conversation was read to its end: live pushes start now.
    Live,
    /// More was written meanwhile: read again, then ask again.
    Behind,
    /// The session is no longer online (or the hub stopped).
    Gone,
}

pub(crate) enum Op {
    Login {
        link: Arc<SessionLink>,
        name: String,
        device: String,
        tag: Tag,
        done: oneshot::Sender<Result<LoginOk, ErrorKind>>,
    },
    Send {
        link: Arc<SessionLink>,
        from: Identity,
        to: String,
        body: Bytes,
        sent_at: u64,
        tag: Tag,
    },
    /// A reply that must stay in order behind this session's earlier requests.
    Reply {
        link: Arc<SessionLink>,
        tag: Tag,
        reply: Reply,
    },
    /// A catching-up session asks to receive live pushes from now on; granted only if it
    /// has read every conversation up to its end.
    GoLive {
        link_id: u64,
        user: UserId,
        progress: HashMap<ConvId, Seq>,
        done: oneshot::Sender<GoLive>,
    },
    Cursors {
        device: DeviceId,
        progress: Vec<(ConvId, Seq)>,
    },
    Logout {
        link_id: u64,
        identity: Identity,
    },
    Shutdown,
}

/// A cloneable handle to the hub thread.
#[derive(Clone)]
pub struct Hub {
    ops: crossbeam_channel::Sender<Op>,
}

impl Hub {
    fn submit(&self, op: Op) -> Result<(), Op> {
        self.ops.send(op).map_err(|e| e.0)
    }

    /// Logs `link` in as `name` on `device`. The reply to `tag` is queued on the link by the
    /// hub (after the commit); the result also comes back here for the session's own state.
    pub async fn login(
        &self,
        link: Arc<SessionLink>,
        name: String,
        device: String,
        tag: Tag,
    ) -> Result<LoginOk, ErrorKind> {
        let (done, result) = oneshot::channel();
        if let Err(Op::Login { link, tag, .. }) = self.submit(Op::Login {
            link,
            name,
            device,
            tag,
            done,
        }) {
            link.push(Outbound::Reply(tag, Reply::Error(ErrorKind::ShuttingDown)));
            return Err(ErrorKind::ShuttingDown);
        }
        result.await.unwrap_or(Err(ErrorKind::ShuttingDown))
    }

    /// Sends a message; the reply reaches `link` once the message is stored. The caller
    /// must hold one in-flight permit of `link`, which the hub returns.
    pub fn send(
        &self,
        link: Arc<SessionLink>,
        from: Identity,
        to: String,
        body: Bytes,
        sent_at: u64,
        tag: Tag,
    ) {
        let op = Op::Send {
            link,
            from,
            to,
            body,
            sent_at,
            tag,
        };
        if let Err(Op::Send { link, tag, .. }) = self.submit(op) {
            finish(&link, tag, Reply::Error(ErrorKind::ShuttingDown));
        }
    }

    /// Queues `reply` behind this session's requests already in the hub. The caller must
    /// hold one in-flight permit of `link`, which the hub returns.
    pub fn reply_in_order(&self, link: Arc<SessionLink>, tag: Tag, reply: Reply) {
        if let Err(Op::Reply { link, tag, reply }) = self.submit(Op::Reply { link, tag, reply }) {
            finish(&link, tag, reply);
        }
    }

    /// Asks to switch a catching-up session to live delivery.
    pub async fn go_live(
        &self,
        link_id: u64,
        user: UserId,
        progress: HashMap<ConvId, Seq>,
    ) -> GoLive {
        let (done, result) = oneshot::channel();
        let op = Op::GoLive {
            link_id,
            user,
            progress,
            done,
        };
        if self.submit(op).is_err() {
            return GoLive::Gone;
        }
        result.await.unwrap_or(GoLive::Gone)
    }

    /// Records that `device` received conversations up to the given sequences.
    pub fn cursors(&self, device: DeviceId, progress: Vec<(ConvId, Seq)>) {
        let _ = self.submit(Op::Cursors { device, progress });
    }

    /// Takes the session offline.
    pub fn logout(&self, link_id: u64, identity: Identity) {
        let _ = self.submit(Op::Logout { link_id, identity });
    }

    /// Asks the hub thread to finish what is queued and stop.
    pub fn shutdown(&self) {
        let _ = self.submit(Op::Shutdown);
    }
}

/// Queues a reply and returns the request's in-flight permit.
fn finish(link: &SessionLink, tag: Tag, reply: Reply) {
    link.push(Outbound::Reply(tag, reply));
    link.inflight.add_permits(1);
}
