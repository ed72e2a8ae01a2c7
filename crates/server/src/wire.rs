//! The protocols a session can speak, and how each turns replies and deliveries into bytes.
//!
//! The byte layouts themselves live in `parley-proto`; this is the thin switch between them
//! that sessions use, so the rest of the server never matches on a wire format.

use bytes::BytesMut;
use parley_proto::binary::{self, Frame};
use parley_proto::{validate_name, Command, ErrorKind, Reply, Target};

use crate::delivery::Delivery;

/// A wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The seed-000 length-prefixed binary protocol.
    Binary = 0,
}

impl Protocol {
    /// Number of protocols (size of per-protocol caches).
    pub const COUNT: usize = 1;

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Binary => "binary",
        }
    }

    /// Appends the answer to the request tagged `tag`.
    pub fn encode_reply(self, tag: Tag, reply: &Reply, dst: &mut BytesMut) {
        match self {
            Protocol::Binary => {
                let Tag::Cid(cid) = tag;
                let code = match reply {
                    Reply::Ok => binary::code::OK,
                    Reply::Error(kind) => binary::error_code(*kind),
                };
                binary::encode_response(cid, code, dst);
            }
        }
    }

    /// Appends a pushed message.
    pub fn encode_delivery(self, d: &Delivery, dst: &mut BytesMut) {
        match self {
            Protocol::Binary => {
                // Bodies are bounded by the frame limit on the way in, so this cannot fail
                // for anything the server accepted; a failure would be a bug, logged loudly.
                if let Err(e) = binary::encode_message(
                    0,
                    &d.body,
                    d.from.as_bytes(),
                    d.to.as_bytes(),
                    d.sent_at,
                    dst,
                ) {
                    tracing::error!(error = %e, id = d.id, "cannot encode a delivery");
                }
            }
        }
    }
}

/// What identifies a request to its client, so the reply can carry it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// The binary protocol's correlation id.
    Cid(u32),
}

/// What a session does with the next bytes of input.
#[derive(Debug)]
pub enum Decoded {
    Request(Tag, Command),
    /// A request that failed to decode but can be answered.
    Reject(Tag, ErrorKind, String),
    /// The stream cannot go on: close the connection.
    Close(String),
}

/// Limits the decoders enforce.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame: usize,
    pub max_name: usize,
}

impl Protocol {
    /// Takes the next request off `buf`, or `None` when more bytes are needed.
    pub fn decode(self, buf: &mut BytesMut, limits: &Limits) -> Option<Decoded> {
        match self {
            Protocol::Binary => decode_binary(buf, limits),
        }
    }
}

fn decode_binary(buf: &mut BytesMut, limits: &Limits) -> Option<Decoded> {
    let frame = match binary::decode(buf, limits.max_frame) {
        Ok(None) => return None,
        Ok(Some(frame)) => frame,
        Err(e) => {
            return Some(match e.correlation_id() {
                Some(cid) if !e.is_fatal() => {
                    Decoded::Reject(Tag::Cid(cid), e.kind(), e.to_string())
                }
                _ => Decoded::Close(e.to_string()),
            })
        }
    };
    Some(match frame {
        Frame::Login { cid, username } => match validate_name(&username, limits.max_name) {
            Ok(name) => Decoded::Request(
                Tag::Cid(cid),
                Command::Login {
                    name: name.to_string(),
                },
            ),
            Err(e) => Decoded::Reject(Tag::Cid(cid), ErrorKind::InvalidName, e.to_string()),
        },
        Frame::Message {
            cid,
            message,
            from,
            to,
            time,
        } => match validate_name(&to, limits.max_name) {
            Ok(to) => Decoded::Request(
                Tag::Cid(cid),
                Command::Send {
                    to: Target::User(to.to_string()),
                    body: message,
                    claimed_from: Some(from),
                    sent_at: Some(time),
                },
            ),
            // No such name can have logged in.
            Err(_) => Decoded::Reject(
                Tag::Cid(cid),
                ErrorKind::UserNotFound,
                "invalid recipient name".into(),
            ),
        },
        Frame::CorrelationTest { cid } => Decoded::Request(Tag::Cid(cid), Command::Ping),
        Frame::Response { cid, .. } => Decoded::Reject(
            Tag::Cid(cid),
            ErrorKind::UnknownCommand,
            "a response frame is not a request".into(),
        ),
    })
}
