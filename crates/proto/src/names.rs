//! The one rule for user names, shared by every protocol.
//!
//! Names travel in text protocols as space-separated words, so they may not contain white
//! space or control characters; they are compared byte for byte.

use thiserror::Error;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("name is not valid UTF-8")]
    NotUtf8,
    #[error("name contains white space or a control character")]
    BadCharacter,
}

/// Checks `raw` against the name rules and returns it as a `&str`.
pub fn validate_name(raw: &[u8], max_len: usize) -> Result<&str, NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.len() > max_len {
        return Err(NameError::TooLong { max: max_len });
    }
    let name = std::str::from_utf8(raw).map_err(|_| NameError::NotUtf8)?;
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NameError::BadCharacter);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        assert_eq!(validate_name(b"user1", 32), Ok("user1"));
        assert_eq!(validate_name("Zoë".as_bytes(), 32), Ok("Zoë"));
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(validate_name(b"", 32), Err(NameError::Empty));
        assert_eq!(
            validate_name(&[b'a'; 33], 32),
            Err(NameError::TooLong { max: 32 })
        );
        assert_eq!(validate_name(&[0xff, 0xfe], 32), Err(NameError::NotUtf8));
        assert_eq!(validate_name(b"a b", 32), Err(NameError::BadCharacter));
        assert_eq!(validate_name(b"a\nb", 32), Err(NameError::BadCharacter));
        assert_eq!(validate_name(b"\0", 32), Err(NameError::BadCharacter));
    }
}
