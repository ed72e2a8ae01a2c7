//! Splitting frames off a byte stream and reading them: [`decode`] for any frame,
//! [`decode_view`] for a server that wants its messages as views.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

use super::seed::MessageView;
use super::{key, Frame, HEADER, LENGTH_PREFIX, VERSION};
use crate::ErrorKind;

/// Why a frame could not be decoded.
///
/// Fatal errors mean the byte stream can no longer be split into frames: the connection must
/// close. The others consumed exactly one bad frame, carry its correlation id when it had one,
/// and decoding can go on with the next frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("frame length {len} is shorter than the 3-byte header")]
    TooShort { len: usize },
    #[error("unsupported protocol version {version}")]
    UnknownVersion { version: u8, cid: Option<u32> },
    #[error("unknown command key {key:#06x}")]
    UnknownKey { key: u16, cid: Option<u32> },
    #[error("malformed frame (key {key:#06x}): {reason}")]
    Malformed {
        key: u16,
        cid: Option<u32>,
        reason: &'static str,
    },
}

impl FrameError {
    /// Whether the connection has to close (framing is lost).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            FrameError::TooLong { .. } | FrameError::TooShort { .. }
        )
    }

    /// The correlation id of the bad frame, when it had one to answer.
    pub fn correlation_id(&self) -> Option<u32> {
        match self {
            FrameError::TooLong { .. } | FrameError::TooShort { .. } => None,
            FrameError::UnknownVersion { cid, .. }
            | FrameError::UnknownKey { cid, .. }
            | FrameError::Malformed { cid, .. } => *cid,
        }
    }

    /// The neutral error that reports this failure to the client.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FrameError::UnknownVersion { .. } | FrameError::UnknownKey { .. } => {
                ErrorKind::UnknownCommand
            }
            _ => ErrorKind::Malformed,
        }
    }
}

/// Takes one frame off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame (and reserves room for the
/// rest of it); a length above `max_frame` is refused as soon as the prefix is read, before
/// any of the body is buffered.
pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, FrameError> {
    match take_frame(buf, max_frame)? {
        Some(frame) => parse(frame).map(Some),
        None => Ok(None),
    }
}

/// What [`decode_view`] took off the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A direct message (key 0x02), as a view of its frame.
    Message(MessageView),
    /// Any other frame.
    Frame(Frame),
}

/// [`decode`], with a direct message handed out as a [`MessageView`]: what a server reading
/// thousands a second uses. Every other frame, and every error, is exactly `decode`'s.
pub fn decode_view(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Decoded>, FrameError> {
    let Some(frame) = take_frame(buf, max_frame)? else {
        return Ok(None);
    };
    if frame.starts_with(&[VERSION, 0, key::MESSAGE as u8]) {
        if let Some(view) = MessageView::parse(&frame) {
            return Ok(Some(Decoded::Message(view.holding(frame))));
        }
    }
    parse(frame).map(|frame| Some(Decoded::Frame(frame)))
}

/// Takes one frame's bytes (version, key, body) off the front of `buf`; see [`decode`].
fn take_frame(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < LENGTH_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_frame {
        return Err(FrameError::TooLong {
            len,
            max: max_frame,
        });
    }
    if len < HEADER {
        return Err(FrameError::TooShort { len });
    }
    if buf.len() < LENGTH_PREFIX + len {
        buf.reserve(LENGTH_PREFIX + len - buf.len());
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Parses one frame (version, key and body), without the length prefix.
fn parse(mut body: Bytes) -> Result<Frame, FrameError> {
    let version = body.get_u8();
    let key = body.get_u16();
    let cid = (body.len() >= 4).then(|| u32::from_be_bytes([body[0], body[1], body[2], body[3]]));
    if version != VERSION {
        return Err(FrameError::UnknownVersion { version, cid });
    }
    Frame::parse_body(key, cid, body)
}
