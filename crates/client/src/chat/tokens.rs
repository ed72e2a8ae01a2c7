//! Device tokens kept between runs, one file per server, user and device, in the user's
//! config directory (`$XDG_CONFIG_HOME/parley/tokens/`, else `~/.config/parley/tokens/`).
//! A token logs the device in without its password, so the files are the user's alone:
//! directories 0700, files 0600, written whole to a temporary file and renamed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `$XDG_CONFIG_HOME/parley`, or `$HOME/.config/parley`.
pub fn config_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".config"),
    };
    Some(base.join("parley"))
}

/// Where the token of `user` on `device` at `server` lives.
#[derive(Debug, Clone)]
pub struct TokenFile {
    pub path: PathBuf,
}

/// A name that is safe as one path component: anything but letters, digits and `.-_:`
/// percent-encoded (so `/` and `..` cannot escape the directory, and the `@` and `#`
/// between the parts stay unambiguous).
fn component(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b':' => out.push(b as char),
            b'.' if !out.is_empty() => out.push('.'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl TokenFile {
    pub fn new(config: &Path, server: &str, user: &str, device: &str) -> TokenFile {
        let name = format!(
            "{}@{}#{}",
            component(user),
            component(server),
            component(device)
        );
        TokenFile {
            path: config.join("tokens").join(name),
        }
    }

    /// The stored token, if any (an unreadable or empty file counts as none).
    pub fn load(&self) -> Option<String> {
        let text = fs::read_to_string(&self.path).ok()?;
        let token = text.split_whitespace().next()?.to_string();
        (!token.is_empty()).then_some(token)
    }

    /// Stores `token` (and its expiry, Unix ms, for people reading the file).
    pub fn save(&self, token: &str, expires_at: u64) -> std::io::Result<()> {
        let dir = self.path.parent().expect("a token file has a directory");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // Directories made by an older version, or by hand, are tightened too.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let tmp = dir.join(format!(".{}.{}.tmp", std::process::id(), self.file_name()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let written = file
            .write_all(format!("{token} {expires_at}\n").as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &self.path)
    }

    /// Forgets the token.
    pub fn remove(&self) -> std::io::Result<()> {
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_private_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path(), "127.0.0.1:5555", "alice", "lap/top");
        assert_eq!(file.load(), None);
        file.save(&"ab".repeat(32), 1234).unwrap();
        assert_eq!(file.load(), Some("ab".repeat(32)));
        let mode = fs::metadata(&file.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(file.path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        // The device's slash stayed inside the name.
        assert_eq!(
            file.path,
            dir.path().join("tokens/alice@127.0.0.1:5555#lap%2Ftop")
        );
        file.save("cd", 1).unwrap();
        assert_eq!(file.load().as_deref(), Some("cd"));
        file.remove().unwrap();
        assert_eq!(file.load(), None);
        file.remove().unwrap();
    }

    #[test]
    fn names_cannot_escape_the_directory() {
        assert_eq!(component(".."), "%2E.");
        assert_eq!(component("a/b"), "a%2Fb");
    }
}
