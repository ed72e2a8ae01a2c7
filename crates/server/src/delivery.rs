//! A message on its way to recipients, encoded at most once per protocol.

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

use crate::store::{ConvId, Seq};
use crate::wire::Protocol;

/// One stored message as recipients see it. Fan-out shares one `Arc<Delivery>` among every
/// recipient; the first session of each protocol to write it encodes it, the rest reuse
/// the bytes.
#[derive(Debug)]
pub struct Delivery {
    pub id: i64,
    pub conv: ConvId,
    pub seq: Seq,
    pub from: Arc<str>,
    pub to: Arc<str>,
    pub body: Bytes,
    /// The sender's timestamp, untouched (binary clients put Unix nanoseconds here).
    pub sent_at: u64,
    encoded: [OnceLock<Bytes>; Protocol::COUNT],
}

impl Delivery {
    pub fn new(
        id: i64,
        conv: ConvId,
        seq: Seq,
        from: Arc<str>,
        to: Arc<str>,
        body: Bytes,
        sent_at: u64,
    ) -> Self {
        Delivery {
            id,
            conv,
            seq,
            from,
            to,
            body,
            sent_at,
            encoded: Default::default(),
        }
    }

    /// This delivery's bytes in `protocol`, encoded on first use.
    pub fn encoded(&self, protocol: Protocol) -> &Bytes {
        self.encoded[protocol as usize].get_or_init(|| {
            let mut buf = BytesMut::new();
            protocol.encode_delivery(self, &mut buf);
            buf.freeze()
        })
    }
}
