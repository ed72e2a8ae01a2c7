//! File transfer, the same for the binary and JSON protocols: offer (de-duplication and
//! resume), chunks, a message that carries a stored file, downloads from any offset.

use bytes::Bytes;
use parley_proto::{ErrorKind, Target};

use super::{Session, Who};
use crate::files::{Offer, Progress};
use crate::outbound::Tag;

/// Longest file name and media type accepted, in bytes.
const MAX_META: usize = 255;

impl Session {
    fn file_user(&self) -> Result<crate::store::UserId, ErrorKind> {
        match &self.login {
            Some((identity, _)) => Ok(identity.user),
            None => Err(ErrorKind::NotLoggedIn),
        }
    }

    pub(super) async fn file_offer(&self, hash: &str, size: u64) -> Result<Offer, ErrorKind> {
        let user = self.file_user()?;
        if size > self.shared.config.max_file_bytes {
            return Err(ErrorKind::BadTransfer);
        }
        self.shared.files.offer(user, hash).await
    }

    pub(super) async fn file_chunk(
        &self,
        hash: &str,
        size: u64,
        offset: u64,
        data: Bytes,
    ) -> Result<Progress, ErrorKind> {
        let user = self.file_user()?;
        if size > self.shared.config.max_file_bytes {
            return Err(ErrorKind::BadTransfer);
        }
        let progress = self
            .shared
            .files
            .write_chunk(user, hash, size, offset, data)
            .await?;
        if progress == Progress::Complete {
            self.shared.hub.file_stored(hash.to_string(), size);
        }
        Ok(progress)
    }

    /// Sends a message carrying the stored file `hash`. Its text describes the file, so
    /// every protocol shows it: `[file name="…" size=N type=… sha256=…] caption`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_file(
        &mut self,
        to: Target,
        hash: &str,
        name: &str,
        mime: &str,
        caption: &str,
        sent_at: u64,
        tag: Tag,
    ) -> Result<(), ErrorKind> {
        // Checked first: a session that is not logged in learns nothing about the file.
        self.file_user()?;
        let bad = |s: &str| s.is_empty() || s.len() > MAX_META || s.chars().any(char::is_control);
        if bad(name) || bad(mime) || caption.chars().any(char::is_control) {
            return Err(ErrorKind::Malformed);
        }
        if !self.shared.files.has(hash) {
            return Err(ErrorKind::BadTransfer);
        }
        let size = self.shared.files.size(hash).await?;
        let name = name.replace('"', "'");
        let mut text = format!("[file name=\"{name}\" size={size} type={mime} sha256={hash}]");
        if !caption.is_empty() {
            text.push(' ');
            text.push_str(caption);
        }
        let (body, attachment) = (Bytes::from(text), Some(hash.to_string()));
        (self.send_with(to, body, sent_at, tag, Who::Members, attachment)).await;
        Ok(())
    }

    /// Up to `len` bytes of `hash` from `offset`, for members of a conversation it was sent
    /// to.
    pub(super) async fn download(
        &self,
        hash: &str,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, ErrorKind> {
        let user = self.file_user()?;
        self.settle().await;
        let allowed = self
            .shared
            .reader
            .may_download(user, hash.to_string())
            .await;
        if !allowed.map_err(|_| ErrorKind::Internal)? {
            return Err(ErrorKind::Forbidden);
        }
        self.shared.files.read_chunk(hash, offset, len).await
    }

    /// The target of a file message: a user (kind 1) or a room (kind 2).
    pub(super) fn file_target(&self, kind: u8, target: &str) -> Result<Target, ErrorKind> {
        self.recipient(target.as_bytes())?;
        match kind {
            1 => Ok(Target::User(target.to_string())),
            2 => Ok(Target::Room(target.to_string())),
            _ => Err(ErrorKind::Malformed),
        }
    }
}
