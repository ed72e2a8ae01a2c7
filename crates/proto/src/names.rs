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
    check_name(raw, max_len)?;
    std::str::from_utf8(raw).map_err(|_| NameError::NotUtf8)
}

/// Checks `raw` against the name rules, for a caller that needs no `&str` of it (a binary
/// message's recipient, looked up by its bytes): printable ASCII is settled without a
/// UTF-8 pass.
pub fn check_name(raw: &[u8], max_len: usize) -> Result<(), NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.len() > max_len {
        return Err(NameError::TooLong { max: max_len });
    }
    // Nearly every name is printable ASCII: one pass over the bytes settles it, where the
    // general test decodes each character and looks it up in Unicode's tables (4 % of a
    // session's time per binary message, which names both ends).
    if raw.iter().all(|b| (b'!'..=b'~').contains(b)) {
        return Ok(());
    }
    let name = std::str::from_utf8(raw).map_err(|_| NameError::NotUtf8)?;
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NameError::BadCharacter);
    }
    Ok(())
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
        assert_eq!(validate_name(b"a\x7fb", 32), Err(NameError::BadCharacter));
        assert_eq!(
            validate_name("a\u{2003}b".as_bytes(), 32),
            Err(NameError::BadCharacter)
        );
    }

    proptest::proptest! {
        /// The ASCII shortcut decides every name exactly as the general rule does.
        #[test]
        fn the_ascii_shortcut_agrees_with_the_general_rule(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..12),
        ) {
            let general = std::str::from_utf8(&raw)
                .map_err(|_| NameError::NotUtf8)
                .and_then(|name| {
                    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        Err(NameError::BadCharacter)
                    } else {
                        Ok(name)
                    }
                });
            proptest::prop_assert_eq!(check_name(&raw, 32), general.clone().map(|_| ()));
            proptest::prop_assert_eq!(validate_name(&raw, 32), general);
        }
    }
}
