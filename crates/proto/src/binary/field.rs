//! The field types a frame is made of, each read and written the same way wherever it
//! appears: big-endian integers, `u16 length | bytes` strings, `u16 count | entries` lists,
//! and the entries of the list frames.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use super::{HEADER, LENGTH_PREFIX, VERSION};

/// A string field longer than the `u16` length prefix can describe.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("a string of {0} bytes does not fit the u16 length prefix")]
pub struct StringTooLong(pub usize);

/// One field of a frame body: how it is read, how long it is on the wire, how it is written.
///
/// `wire_len` runs before `write` so that a frame's length prefix is known before its body is
/// written: a frame goes straight into the output buffer, with no body buffer to copy from.
pub(crate) trait Field: Sized {
    /// The field at the front of `r`, or `None` if the bytes run out first.
    fn read(r: &mut Reader) -> Option<Self>;
    /// Bytes on the wire; fails for a string the `u16` prefix cannot describe.
    fn wire_len(&self) -> Result<usize, StringTooLong>;
    fn write(&self, dst: &mut BytesMut);
}

/// Bounds-checked big-endian reads over a frame body.
pub(crate) struct Reader(pub(crate) Bytes);

impl Reader {
    pub(crate) fn has_remaining(&self) -> bool {
        self.0.has_remaining()
    }
}

macro_rules! int_field {
    ($($ty:ty: $get:ident $put:ident),*) => {$(
        impl Field for $ty {
            #[inline(always)]
            fn read(r: &mut Reader) -> Option<Self> {
                (r.0.len() >= size_of::<$ty>()).then(|| r.0.$get())
            }
            fn wire_len(&self) -> Result<usize, StringTooLong> {
                Ok(size_of::<$ty>())
            }
            fn write(&self, dst: &mut BytesMut) {
                dst.$put(*self);
            }
        }
    )*};
}

int_field!(u8: get_u8 put_u8, u16: get_u16 put_u16, u32: get_u32 put_u32, u64: get_u64 put_u64);

/// A flag byte: any non-zero byte reads as `true`, which is written back as 1.
impl Field for bool {
    fn read(r: &mut Reader) -> Option<Self> {
        u8::read(r).map(|b| b != 0)
    }
    fn wire_len(&self) -> Result<usize, StringTooLong> {
        Ok(1)
    }
    fn write(&self, dst: &mut BytesMut) {
        dst.put_u8(u8::from(*self));
    }
}

/// A string: `u16 length | bytes`, handed out as a slice of the frame (never copied) and
/// never checked for UTF-8 here (the seed's peers do not either).
impl Field for Bytes {
    // Inlined: three calls a message cost the relay's decoding more than the code it saves.
    #[inline(always)]
    fn read(r: &mut Reader) -> Option<Self> {
        let len = u16::read(r)? as usize;
        (r.0.len() >= len).then(|| r.0.split_to(len))
    }
    fn wire_len(&self) -> Result<usize, StringTooLong> {
        check_len(self)?;
        Ok(2 + self.len())
    }
    fn write(&self, dst: &mut BytesMut) {
        put_string(dst, self);
    }
}

/// An optional field, which can only be a frame's last: absent when the body ends before
/// it (as clients that predate the field send it), present otherwise.
impl<T: Field> Field for Option<T> {
    fn read(r: &mut Reader) -> Option<Self> {
        if !r.has_remaining() {
            return Some(None);
        }
        T::read(r).map(Some)
    }
    fn wire_len(&self) -> Result<usize, StringTooLong> {
        self.as_ref().map_or(Ok(0), Field::wire_len)
    }
    fn write(&self, dst: &mut BytesMut) {
        if let Some(value) = self {
            value.write(dst);
        }
    }
}

/// A list: `u16 count | entries`. The count caps a list at 65,535 entries; a longer one is
/// cut there rather than sent with a wrong count.
impl<T: Field> Field for Vec<T> {
    fn read(r: &mut Reader) -> Option<Self> {
        let count = u16::read(r)?;
        // A count is a claim, not a promise: reserve no more than a small page up front.
        let mut list = Vec::with_capacity(usize::from(count).min(1024));
        for _ in 0..count {
            list.push(T::read(r)?);
        }
        Some(list)
    }
    fn wire_len(&self) -> Result<usize, StringTooLong> {
        self[..count(self)]
            .iter()
            .try_fold(2, |len, entry| Ok(len + entry.wire_len()?))
    }
    fn write(&self, dst: &mut BytesMut) {
        let entries = &self[..count(self)];
        dst.put_u16(entries.len() as u16);
        for entry in entries {
            entry.write(dst);
        }
    }
}

/// How many entries of a list a frame carries.
fn count<T>(list: &[T]) -> usize {
    list.len().min(usize::from(u16::MAX))
}

/// Makes a struct a [`Field`] whose wire form is its fields in the order listed.
macro_rules! struct_field {
    ($name:ident { $($field:ident),* $(,)? }) => {
        impl $crate::binary::field::Field for $name {
            fn read(r: &mut $crate::binary::field::Reader) -> Option<Self> {
                // A struct expression evaluates its fields in the order written: wire order.
                Some($name { $($field: $crate::binary::field::Field::read(r)?),* })
            }
            fn wire_len(&self) -> Result<usize, $crate::binary::field::StringTooLong> {
                Ok(0 $(+ $crate::binary::field::Field::wire_len(&self.$field)?)*)
            }
            fn write(&self, dst: &mut bytes::BytesMut) {
                $($crate::binary::field::Field::write(&self.$field, dst);)*
            }
        }
    };
}
pub(crate) use struct_field;

pub(crate) fn check_len(s: &[u8]) -> Result<(), StringTooLong> {
    if s.len() > u16::MAX as usize {
        return Err(StringTooLong(s.len()));
    }
    Ok(())
}

/// Reserves room for a whole frame of `len` bytes (after the prefix) and writes its prefix,
/// version and key.
pub(crate) fn put_header(dst: &mut BytesMut, len: usize, key: u16) {
    dst.reserve(LENGTH_PREFIX + len);
    dst.put_u32(len as u32);
    dst.put_u8(VERSION);
    dst.put_u16(key);
}

/// The length prefix, version, key and correlation id a frame begins with, as one array for
/// the encoders that write their fixed fields in one copy.
pub(crate) fn frame_start(len: usize, key: u16, cid: u32) -> [u8; LENGTH_PREFIX + HEADER + 4] {
    let mut head = [0; LENGTH_PREFIX + HEADER + 4];
    head[..4].copy_from_slice(&(len as u32).to_be_bytes());
    head[4] = VERSION;
    head[5..7].copy_from_slice(&key.to_be_bytes());
    head[7..].copy_from_slice(&cid.to_be_bytes());
    head
}

pub(crate) fn put_string(dst: &mut BytesMut, s: &[u8]) {
    dst.put_u16(s.len() as u16);
    dst.put_slice(s);
}
