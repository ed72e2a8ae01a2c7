//! What travels from the hub to sessions: stored messages (encoded at most once per
//! style) and presence notices (not stored).

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

use crate::store::{ConvId, Seq};
use crate::wire::Style;

/// The kind of conversation a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Room,
    Broadcast,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "dm",
            Kind::Room => "room",
            Kind::Broadcast => "broadcast",
        }
    }
}

/// One stored message as recipients see it. Fan-out shares one `Arc<Delivery>` among every
/// recipient; the first session of each style to write it encodes it, the rest reuse the
/// bytes.
#[derive(Debug)]
pub struct Delivery {
    pub id: i64,
    pub conv: ConvId,
    pub seq: Seq,
    pub kind: Kind,
    pub from: Arc<str>,
    /// The recipient's name (direct), the room's name (room) or `*` (broadcast).
    pub to: Arc<str>,
    pub body: Bytes,
    /// The sender's timestamp, untouched (binary clients put Unix nanoseconds here).
    pub sent_at: u64,
    encoded: ByStyle,
}

/// A value's bytes per style, each encoded by the first session of that style to write it
/// and shared by the rest. The slots are allocated on first use: a direct message to one
/// device never needs them (see `Delivery::write_to`), and inline they made every
/// delivery 200 bytes larger to build, move and drop.
#[derive(Debug, Default)]
struct ByStyle(OnceLock<Box<[OnceLock<Bytes>; Style::COUNT]>>);

impl ByStyle {
    fn get(&self, style: Style, encode: impl FnOnce(&mut BytesMut)) -> &Bytes {
        self.0.get_or_init(Default::default)[style as usize].get_or_init(|| {
            let mut buf = BytesMut::new();
            encode(&mut buf);
            buf.freeze()
        })
    }

    /// The bytes in `style` if some session encoded them already.
    fn cached(&self, style: Style) -> Option<&Bytes> {
        self.0.get()?[style as usize].get()
    }
}

impl Delivery {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: i64,
        conv: ConvId,
        seq: Seq,
        kind: Kind,
        from: Arc<str>,
        to: Arc<str>,
        body: Bytes,
        sent_at: u64,
    ) -> Self {
        Delivery {
            id,
            conv,
            seq,
            kind,
            from,
            to,
            body,
            sent_at,
            encoded: Default::default(),
        }
    }

    /// This delivery's bytes in `style`, encoded on first use.
    pub fn encoded(&self, style: Style) -> &Bytes {
        self.encoded
            .get(style, |buf| style.encode_delivery(self, buf))
    }

    /// Appends this delivery's bytes in `style` to `dst`. One that no other session holds
    /// (a direct message to a single device, the usual case) is encoded straight into
    /// `dst`: keeping its bytes for others would be an allocation, a copy and a free per
    /// message for nobody.
    pub fn write_to(self: &Arc<Self>, style: Style, dst: &mut BytesMut) {
        match self.encoded.cached(style) {
            Some(bytes) => dst.extend_from_slice(bytes),
            // Nobody else holds it, so nobody can start to while it is written here.
            None if Arc::strong_count(self) == 1 => style.encode_delivery(self, dst),
            None => dst.extend_from_slice(self.encoded(style)),
        }
    }

    /// About the bytes this takes in `style` (exact for binary), without encoding it.
    pub fn encoded_len_hint(&self, style: Style) -> usize {
        match self.encoded.cached(style) {
            Some(bytes) => bytes.len(),
            None => style.delivery_len_hint(self),
        }
    }

    /// The body as text (lossy for bytes that are not UTF-8).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// A presence notice as it is pushed: the change, and its line per style, encoded by the
/// first session of each style to write it (a join in a room of 1,000 reaches 999 sessions,
/// and a room's reconnect storm a million: each line was formatted per recipient).
#[derive(Debug)]
pub struct SharedNotice {
    pub notice: Notice,
    encoded: ByStyle,
}

impl SharedNotice {
    pub fn new(notice: Notice) -> SharedNotice {
        SharedNotice {
            notice,
            encoded: Default::default(),
        }
    }

    /// The notice's bytes in `style` (empty where the style shows none), encoded on first use.
    pub fn encoded(&self, style: Style) -> &Bytes {
        self.encoded
            .get(style, |buf| style.encode_notice(&self.notice, buf))
    }
}

/// A presence change, pushed live to the sessions concerned and never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Joined {
        room: Arc<str>,
        name: Arc<str>,
    },
    Left {
        room: Arc<str>,
        name: Arc<str>,
    },
    /// The user's last session ended.
    Disconnected {
        name: Arc<str>,
    },
    /// `name` changed their contact with the recipient.
    Contact {
        name: Arc<str>,
        change: ContactChange,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactChange {
    Requested,
    Accepted,
    Declined,
    Removed,
}

impl ContactChange {
    /// The JSON event name.
    pub fn event(self) -> &'static str {
        match self {
            ContactChange::Requested => "contact_requested",
            ContactChange::Accepted => "contact_accepted",
            ContactChange::Declined => "contact_declined",
            ContactChange::Removed => "contact_removed",
        }
    }
}
