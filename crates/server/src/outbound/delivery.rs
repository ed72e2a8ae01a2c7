//! What travels from the hub to sessions: stored messages (encoded at most once per
//! style) and presence notices (not stored).

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use parley_proto::ConversationKind;

use super::encode::Style;
use crate::store::{ConvId, Seq};

/// One stored message as recipients see it. Fan-out shares one `Arc<Delivery>` among every
/// recipient; the first session of each style to write it encodes it, the rest reuse the
/// bytes.
#[derive(Debug)]
pub struct Delivery {
    pub id: i64,
    pub conv: ConvId,
    pub seq: Seq,
    pub kind: ConversationKind,
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
        kind: ConversationKind,
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

/// A room's messages of one batch, in order, shared by every member the batch reaches: a
/// member gets one queue item for a stretch of them (`Item::Run`) instead of one per
/// message, and the stretch's bytes are encoded once per style for all members, each member
/// copying its stretch in one go. A batch of the benchmark's one publisher holds 15 messages
/// on average for 1,000 members.
#[derive(Debug)]
pub struct RoomRun {
    pub conv: ConvId,
    /// Set once the batch is complete, before any session is given the run.
    deliveries: OnceLock<Vec<Arc<Delivery>>>,
    /// Per style: the messages' bytes one after the other, and where each ends.
    encoded: [OnceLock<(Bytes, Vec<usize>)>; Style::COUNT],
}

impl RoomRun {
    pub fn new(conv: ConvId) -> Self {
        RoomRun {
            conv,
            deliveries: OnceLock::new(),
            encoded: Default::default(),
        }
    }

    /// Completes the run (once, before it is handed to any session).
    pub fn complete(&self, deliveries: Vec<Arc<Delivery>>) {
        let _ = self.deliveries.set(deliveries);
    }

    fn deliveries(&self) -> &[Arc<Delivery>] {
        self.deliveries.get().map_or(&[], Vec::as_slice)
    }

    /// The sequence of message `i` of the run.
    pub fn seq(&self, i: usize) -> Option<Seq> {
        self.deliveries().get(i).map(|d| d.seq)
    }

    /// Appends messages `range` of the run in `style` (the part of it the run holds: the
    /// hub stages only stretches of a completed run, and a writer must not panic on
    /// one that is not).
    pub fn write_to(&self, style: Style, range: std::ops::Range<usize>, dst: &mut BytesMut) {
        let Some(deliveries) = self.deliveries.get() else {
            return;
        };
        let (bytes, ends) = self.encoded[style as usize].get_or_init(|| {
            let mut buf = BytesMut::new();
            let mut ends = Vec::with_capacity(deliveries.len());
            for d in deliveries {
                style.encode_delivery(d, &mut buf);
                ends.push(buf.len());
            }
            (buf.freeze(), ends)
        });
        // Where message `i` starts (past the last: the run's end).
        let start_of = |i: usize| match i {
            0 => 0,
            i => ends.get(i - 1).copied().unwrap_or(bytes.len()),
        };
        let (start, end) = (start_of(range.start), start_of(range.end));
        dst.extend_from_slice(bytes.get(start..end).unwrap_or_default());
    }

    /// About the bytes messages `range` take in `style`.
    pub fn encoded_len_hint(&self, style: Style, range: std::ops::Range<usize>) -> usize {
        let messages = self.deliveries().get(range).unwrap_or_default();
        messages.iter().map(|d| d.encoded_len_hint(style)).sum()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(seq: Seq, body: &'static [u8]) -> Arc<Delivery> {
        let (from, to): (Arc<str>, Arc<str>) = (Arc::from("alice"), Arc::from("#room"));
        let body = Bytes::from_static(body);
        Arc::new(Delivery::new(
            seq,
            7,
            seq,
            ConversationKind::Room,
            from,
            to,
            body,
            0,
        ))
    }

    /// Any stretch of a run reads as its messages one after the other, in every style, and
    /// its length hint is that of its messages.
    #[test]
    fn a_stretch_of_a_run_is_its_messages_in_order() {
        let deliveries: Vec<Arc<Delivery>> = [&b"one"[..], b"two", b"", b"four"]
            .iter()
            .zip(1..)
            .map(|(body, seq)| delivery(seq, body))
            .collect();
        let run = RoomRun::new(7);
        run.complete(deliveries.clone());
        for style in [
            Style::Binary,
            Style::Line,
            Style::Slash,
            Style::Json,
            Style::Events,
        ] {
            for start in 0..=deliveries.len() {
                for end in start..=deliveries.len() {
                    let mut expected = BytesMut::new();
                    for d in &deliveries[start..end] {
                        style.encode_delivery(d, &mut expected);
                    }
                    let mut got = BytesMut::new();
                    run.write_to(style, start..end, &mut got);
                    assert_eq!(got, expected, "{style:?} {start}..{end}");
                }
            }
        }
        assert_eq!(run.seq(3), Some(4));
        assert_eq!(run.seq(4), None);
        let hint = run.encoded_len_hint(Style::Binary, 1..3);
        let mut two = BytesMut::new();
        run.write_to(Style::Binary, 1..3, &mut two);
        assert_eq!(hint, two.len());
        // Past the run's end, or of a run not completed: what it holds, no panic.
        let mut past = BytesMut::new();
        run.write_to(Style::Binary, 3..9, &mut past);
        let mut last = BytesMut::new();
        run.write_to(Style::Binary, 3..4, &mut last);
        assert_eq!(past, last);
        let mut none = BytesMut::new();
        RoomRun::new(7).write_to(Style::Binary, 0..2, &mut none);
        assert!(none.is_empty());
    }
}
