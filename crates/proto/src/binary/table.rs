//! `define_frames!`: the frame tables of the key ranges become [`Frame`](super::Frame), its
//! keys, and each frame's decoding and encoding.
//!
//! Each key range's module (`seed`, `account`, `messaging`, `contacts`, `files`) holds its
//! frames as a table, one entry a frame:
//!
//! ```text
//! /// What the frame is for.
//! Join = JOIN 0x20 { room: Bytes },
//! ```
//!
//! — the variant, the name and value of its key, and its fields after the correlation id in
//! wire order, each a [`Field`](super::field::Field) type. Everything else is made from the
//! tables here, so adding a frame is adding one entry, and nothing about a frame can be
//! forgotten: the variant, its key, its decoding and its encoding all come from that entry.
//! A key used twice is a compile error (`unreachable_patterns` is denied where keys are
//! matched).
//!
//! A macro cannot gather items from several modules, so each range's table is a macro that
//! appends its entries to the list it is given and passes the list on to the next macro
//! named in its first argument; the last one named is `define_frames!`, which gets every
//! entry of every range at once (see `binary/mod.rs`).

/// Builds `Frame`, `key`, and `Frame`'s `key`, `cid`, `encode` and `parse_body` from the
/// entries of every range (`[]`: no macro left to pass them to).
macro_rules! define_frames {
    ([] $(
        $(#[$doc:meta])*
        $name:ident = $key:ident $value:literal {
            $( $(#[$field_doc:meta])* $field:ident: $ty:ty ),* $(,)?
        },
    )*) => {
        /// One decoded frame. Every frame carries a correlation id (`cid`) first; the
        /// responses and pushes that answer a request carry its id, unsolicited pushes 0.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Frame {
            $(
                $(#[$doc])*
                $name {
                    cid: u32,
                    $( $(#[$field_doc])* $field: $ty, )*
                },
            )*
        }

        /// Command keys.
        pub mod key {
            $( pub const $key: u16 = $value; )*

            /// Every key there is, in key order.
            pub const ALL: &[u16] = &[$($value),*];
        }

        impl Frame {
            /// The key this frame is sent under.
            pub fn key(&self) -> u16 {
                match self {
                    $( Frame::$name { .. } => key::$key, )*
                }
            }

            /// The frame's correlation id (0 on pushed messages).
            pub fn cid(&self) -> u32 {
                match self {
                    $( Frame::$name { cid, .. } => *cid, )*
                }
            }

            /// Appends this frame, length prefix included, to `dst`.
            pub fn encode(&self, dst: &mut BytesMut) -> Result<(), StringTooLong> {
                match self {
                    $(
                        Frame::$name { cid, $($field),* } => {
                            let len = HEADER + 4 $( + Field::wire_len($field)? )*;
                            field::put_header(dst, len, key::$key);
                            dst.put_u32(*cid);
                            $( Field::write($field, dst); )*
                        }
                    )*
                }
                Ok(())
            }

            /// The frame of `key` read from `body` (what follows the version and key),
            /// correlation id (`cid`, when there is one) included. Inlined into its one
            /// caller, so that the frame is built where the caller returns it.
            #[deny(unreachable_patterns)]
            #[inline(always)]
            fn parse_body(key: u16, cid: Option<u32>, body: Bytes) -> Result<Frame, FrameError> {
                let malformed = |reason| FrameError::Malformed { key, cid, reason };
                let mut r = Reader(body);
                let frame = match key {
                    $(
                        key::$key => Frame::$name {
                            cid: Field::read(&mut r)
                                .ok_or_else(|| malformed("missing correlation id"))?,
                            $( $field: Field::read(&mut r).ok_or_else(|| {
                                malformed(concat!("bad or missing ", stringify!($field)))
                            })?, )*
                        },
                    )*
                    _ => return Err(FrameError::UnknownKey { key, cid }),
                };
                if r.has_remaining() && !seed::ignores_trailing_bytes(key) {
                    return Err(malformed("trailing bytes after the last field"));
                }
                Ok(frame)
            }
        }
    };
}
pub(crate) use define_frames;
