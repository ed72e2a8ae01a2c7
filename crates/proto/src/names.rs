//! The rules for user and room names, shared by every protocol.
//!
//! Names travel in text protocols as space-separated words, so they may not contain white
//! space or control characters; they are compared byte for byte (case-sensitive, as every
//! seed compares them). Every name that exists keeps working under these rules
//! ([`check_name`]).
//!
//! A name made from now on (a new user or room) must also meet the profile of
//! [`check_new_name`], so that no new name can pass for another one on screen:
//!
//! - **NFKC**: the name must be what Unicode's NFKC normalisation makes of it. NFC alone
//!   would let in compatibility variants (fullwidth `ａｌｉｃｅ`, `ﬁ` ligatures, mathematical
//!   `𝐚𝐥𝐢𝐜𝐞`, superscripts), which exist to round-trip old encodings and read as the plain
//!   letters; like PRECIS's identifier class (RFC 8264), they are refused rather than
//!   folded, so a client's name is stored exactly as it sent it.
//! - **Nothing invisible**: no default-ignorable code point (zero-width spaces and joiners,
//!   soft hyphens, Hangul fillers, variation selectors, tags) and so no bidi control
//!   (U+202A–U+202E, U+2066–U+2069, LRM, RLM, ALM).
//! - **No look-alikes**: its UTS #39 confusable skeleton ([`skeleton`]) must differ from
//!   every existing name's (the server keeps that index): Cyrillic `аlice` cannot join
//!   `alice`, nor `aIice` (capital i).
//!
//! Display names are free text, not identifiers: [`check_display_name`] refuses only what
//! hides or reorders text (bidi controls, invisible characters other than the joiners and
//! variation selectors that emoji and some scripts need).

use thiserror::Error;
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

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
    #[error("name is not in Unicode NFKC form")]
    NotNormalized,
    #[error("name contains an invisible or bidi-control character")]
    Invisible,
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

/// Checks a name about to be made (a new user or room) against the profile above; the
/// caller also compares its [`skeleton`] with the existing names'.
pub fn check_new_name(name: &str) -> Result<(), NameError> {
    // Printable ASCII is NFKC and holds nothing invisible.
    if name.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        return Ok(());
    }
    if name.chars().any(is_default_ignorable) {
        return Err(NameError::Invisible);
    }
    let nfkc = match is_nfkc_quick(name.chars()) {
        IsNormalized::Yes => true,
        IsNormalized::No => false,
        IsNormalized::Maybe => name.chars().nfkc().eq(name.chars()),
    };
    match nfkc {
        true => Ok(()),
        false => Err(NameError::NotNormalized),
    }
}

/// A name's confusable skeleton (Unicode Technical Standard #39): two names with the same
/// skeleton look alike (`alice`, Cyrillic `аlice`, `aIice`, `a1ice` all give `alice`).
pub fn skeleton(name: &str) -> String {
    unicode_security::skeleton(name).collect()
}

/// Checks a display name: free text, but nothing that hides or reorders what is shown.
pub fn check_display_name(name: &str, max_len: usize) -> Result<(), NameError> {
    if name.len() > max_len {
        return Err(NameError::TooLong { max: max_len });
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::BadCharacter);
    }
    // Zero-width (non-)joiners shape Persian and Indic text and join emoji; variation
    // selectors and tags pick emoji presentations and flags.
    let needed = |c: char| matches!(c, '\u{200C}' | '\u{200D}' | '\u{FE00}'..='\u{FE0F}' | '\u{E0020}'..='\u{E007F}');
    if name.chars().any(|c| is_default_ignorable(c) && !needed(c)) {
        return Err(NameError::Invisible);
    }
    Ok(())
}

/// Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 16): code
/// points shown as nothing. It includes every bidi control.
fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
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

    #[test]
    fn a_new_name_is_nfkc_with_nothing_invisible() {
        assert_eq!(check_new_name("alice"), Ok(()));
        assert_eq!(check_new_name("Zoë"), Ok(()));
        assert_eq!(check_new_name("#général"), Ok(()));
        assert_eq!(check_new_name("ゆき"), Ok(()));
        assert_eq!(check_new_name("alice\u{200B}"), Err(NameError::Invisible));
        assert_eq!(check_new_name("\u{202E}ecila"), Err(NameError::Invisible));
        assert_eq!(check_new_name("al\u{00AD}ice"), Err(NameError::Invisible));
        assert_eq!(check_new_name("\u{3164}"), Err(NameError::Invisible));
        // Decomposed é (NFD), fullwidth letters, a ligature, mathematical bold.
        assert_eq!(check_new_name("Zoe\u{0308}"), Err(NameError::NotNormalized));
        assert_eq!(check_new_name("ａｌｉｃｅ"), Err(NameError::NotNormalized));
        assert_eq!(check_new_name("\u{FB01}sh"), Err(NameError::NotNormalized));
        assert_eq!(check_new_name("𝐚𝐥𝐢𝐜𝐞"), Err(NameError::NotNormalized));
    }

    #[test]
    fn look_alikes_share_a_skeleton() {
        let alice = skeleton("alice");
        for lookalike in ["\u{0430}lice", "aIice", "a1ice", "alice\u{200B}"] {
            assert_eq!(skeleton(lookalike), alice, "{lookalike:?}");
        }
        assert_ne!(skeleton("alicia"), alice);
        assert_ne!(
            skeleton("Alice"),
            alice,
            "case is not folded: names are case-sensitive"
        );
    }

    #[test]
    fn display_names_refuse_what_hides_or_reorders_text() {
        assert_eq!(check_display_name("Alice Smith", 64), Ok(()));
        assert_eq!(check_display_name("👩\u{200D}💻 Alice", 64), Ok(()));
        assert_eq!(
            check_display_name("\u{202E}htimS", 64),
            Err(NameError::Invisible)
        );
        assert_eq!(
            check_display_name("a\u{2066}b", 64),
            Err(NameError::Invisible)
        );
        assert_eq!(
            check_display_name("a\u{200B}b", 64),
            Err(NameError::Invisible)
        );
        assert_eq!(check_display_name("a\nb", 64), Err(NameError::BadCharacter));
        assert_eq!(
            check_display_name(&"x".repeat(65), 64),
            Err(NameError::TooLong { max: 64 })
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
