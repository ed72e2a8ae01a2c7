//! Files (keys 0x40–0x45): content-addressed uploads that resume, file messages, and
//! downloads from any offset.

/// The file frames, for `define_frames!` (see `binary/table.rs`).
macro_rules! files_frames {
    ([$next:ident $($rest:ident)*] $($done:tt)*) => { $next! { [$($rest)*] $($done)*
        /// "I want to send content with this SHA-256 (lower-case hex) and size".
        FileOffer = FILE_OFFER 0x40 { sha256: Bytes, size: u64 },
        /// Server → client, before the response to a `FileOffer`: `have` 1 means the server
        /// holds the content (send it, no upload); otherwise upload from `offset`.
        FileStatus = FILE_STATUS 0x41 { have: u8, offset: u64 },
        FileChunk = FILE_CHUNK 0x42 { sha256: Bytes, size: u64, offset: u64, data: Bytes },
        /// A message carrying a stored file: `target_kind` 1 a user, 2 a room.
        SendFile = SEND_FILE 0x43 {
            target_kind: u8,
            target: Bytes,
            sha256: Bytes,
            name: Bytes,
            mime: Bytes,
            caption: Bytes,
            time: u64,
        },
        Download = DOWNLOAD 0x44 { sha256: Bytes, offset: u64, length: u32 },
        /// Server → client, before the response to a `Download` (empty at the end).
        FileData = FILE_DATA 0x45 { offset: u64, data: Bytes },
    } };
}
pub(super) use files_frames;
