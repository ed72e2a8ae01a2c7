//! parley's model as seed 003's client sees it: user ids, times, and messages (its
//! session's replies and the output path's `FORWARDMSG` pushes both read it).
//!
//! The seed's client names users by integer ids and carries messages as typed records;
//! parley stores names and text. The mapping is pure, so a message stored by any protocol
//! reads the same to every seed-003 client, in a reply or a push:
//! - a user's id is the first 53 bits of the SHA-256 of their name (exact in a JSON
//!   number, the same on every node, with no table to keep);
//! - a time is Unix ms (parley keeps Unix ns);
//! - plain text is the body; an image is `[image] <base64>`; a file is parley's file
//!   message (`[file name="…" size=N type=… sha256=…]`), whose type carries the file's
//!   MD5 (`;md5=…`) when a seed-003 client sent it;
//! - `md5encoded` is recomputed the way the client computes it, so a client that sent a
//!   message recognises it when it comes back.

use bytes::BytesMut;
use parley_proto::simpletcp::{self, ContentType, Message};
use parley_proto::ConversationKind;
use sha2::{Digest, Sha256};

use super::Delivery;

/// What an inline image's body starts with.
pub const IMAGE: &str = "[image] ";

/// Names whose ids each thread keeps (then it starts over): pushes and replies name the
/// same few users again and again.
const CACHED_IDS: usize = 4096;

thread_local! {
    static IDS: std::cell::RefCell<std::collections::HashMap<Box<str>, i64>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The seed-003 id of the user `name`: 53 bits of its SHA-256, never 0. Computed once
/// per name and thread (each push and reply names two users).
pub fn user_id(name: &str) -> i64 {
    IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if let Some(&id) = ids.get(name) {
            return id;
        }
        if ids.len() >= CACHED_IDS {
            ids.clear();
        }
        let id = hash_id(name);
        ids.insert(name.into(), id);
        id
    })
}

fn hash_id(name: &str) -> i64 {
    let hash = Sha256::digest(name.as_bytes());
    let n = u64::from_le_bytes(hash[..8].try_into().expect("8 bytes")) & ((1 << 53) - 1);
    n.max(1) as i64
}

/// Unix ms from parley's Unix ns.
pub fn millis(sent_at: u64) -> i64 {
    (sent_at / 1_000_000) as i64
}

/// parley's Unix ns from a client's Unix ms.
pub fn nanos(ms: i64) -> u64 {
    (ms.max(0) as u64).saturating_mul(1_000_000)
}

/// A stored body as seed 003 types it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub kind: ContentType,
    /// The decoded `content`: the text, the image's base64, or the file's name.
    pub text: String,
    /// A file's MD5 (or, for a file whose MD5 is not known, the first 32 hex digits of
    /// its SHA-256: the client only uses it to find its own copy).
    pub file_md5: Option<String>,
    /// A file's SHA-256, which names it in parley's file store.
    pub sha256: Option<String>,
}

/// How a body reads to a seed-003 client.
pub fn content(body: &[u8]) -> Content {
    let text = String::from_utf8_lossy(body);
    if let Some(file) = parse_file(&text) {
        return file;
    }
    if let Some(image) = text.strip_prefix(IMAGE) {
        if simpletcp::unb64(image).is_some() {
            return Content {
                kind: ContentType::Image,
                text: image.to_string(),
                file_md5: None,
                sha256: None,
            };
        }
    }
    Content {
        kind: ContentType::Plaintext,
        text: text.into_owned(),
        file_md5: None,
        sha256: None,
    }
}

/// A file message's header: `[file name="N" size=S type=T sha256=H]`.
fn parse_file(text: &str) -> Option<Content> {
    let rest = text.strip_prefix("[file name=\"")?;
    let (name, rest) = rest.split_once('"')?;
    let rest = rest.strip_prefix(" size=")?;
    let (_size, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("type=")?;
    let (mime, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("sha256=")?;
    let (hash, _) = rest.split_once(']')?;
    if !crate::files::valid_hash(hash) {
        return None;
    }
    let md5 = mime
        .split(';')
        .find_map(|p| p.strip_prefix("md5="))
        .filter(|m| simpletcp::is_md5(m))
        .unwrap_or(&hash[..32]);
    Some(Content {
        kind: ContentType::File,
        text: name.to_string(),
        file_md5: Some(md5.to_string()),
        sha256: Some(hash.to_string()),
    })
}

/// The message `from` sent `to` (user names) with `body` at `sent_at` (Unix ns).
pub fn message(from: &str, to: &str, body: &[u8], sent_at: u64) -> Message {
    let content = content(body);
    let (userid, targetid, timestamp) = (user_id(from), user_id(to), millis(sent_at));
    Message {
        userid,
        targetid,
        contenttype: content.kind,
        content: simpletcp::b64(content.text.as_bytes()),
        timestamp,
        md5encoded: simpletcp::message_md5(content.text.as_bytes(), userid, targetid, timestamp),
        filemd5: content.file_md5,
    }
}

/// Appends a pushed message as a `FORWARDMSG` frame: direct messages only (seed 003 has
/// no rooms), nothing for the others.
pub fn forward(d: &Delivery, dst: &mut BytesMut) {
    if d.kind != ConversationKind::Direct {
        return;
    }
    let message = message(&d.from, &d.to, &d.body, d.sent_at);
    simpletcp::encode_ok("FORWARDMSG", Some(&message), b"", dst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_positive_and_exact_in_json() {
        let id = user_id("alice");
        assert_eq!(id, user_id("alice"), "cached");
        assert_eq!(id, hash_id("alice"));
        assert_ne!(id, user_id("bob"));
        assert!(id > 0 && id < 1 << 53);
    }

    #[test]
    fn bodies_map_to_the_three_content_types() {
        let text = content("hello [image] x".as_bytes());
        assert_eq!(
            (text.kind, text.text.as_str()),
            (ContentType::Plaintext, "hello [image] x")
        );
        let image = content(b"[image] aGk=");
        assert_eq!(
            (image.kind, image.text.as_str()),
            (ContentType::Image, "aGk=")
        );
        let hash = "ab".repeat(32);
        let body = format!(
            "[file name=\"a b.txt\" size=3 type=application/octet-stream;md5={} sha256={hash}]",
            "0".repeat(32)
        );
        let file = content(body.as_bytes());
        assert_eq!(file.kind, ContentType::File);
        assert_eq!(file.text, "a b.txt");
        assert_eq!(file.file_md5.as_deref(), Some(&*"0".repeat(32)));
        assert_eq!(file.sha256.as_deref(), Some(&*hash));
        // A file sent by another protocol: its MD5 is not known.
        let body = format!("[file name=\"x\" size=3 type=text/plain sha256={hash}] caption");
        assert_eq!(
            content(body.as_bytes()).file_md5.as_deref(),
            Some(&hash[..32])
        );
    }

    #[test]
    fn a_message_reads_back_with_the_senders_md5() {
        let ms = 1_700_000_000_123;
        let m = message("alice", "bob", b"hi", nanos(ms));
        assert_eq!(m.timestamp, ms);
        let expected = simpletcp::message_md5(b"hi", user_id("alice"), user_id("bob"), ms);
        assert_eq!(m.md5encoded, expected);
        assert_eq!(m.content, "aGk=");
    }
}
