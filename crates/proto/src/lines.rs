//! Splitting a byte stream into lines, with a bound on line length.
//!
//! Shared by the text and JSON protocols. A line ends with `\n`; a `\r` before it is
//! dropped. A line longer than the limit is never buffered whole: its bytes are thrown away
//! as they arrive (at most the limit and a `\r` are held) and one [`Line::TooLong`] is
//! reported when its end is reached.

use bytes::{Buf, Bytes, BytesMut};

/// One unit of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line without its terminator.
    Complete(Bytes),
    /// A line longer than the limit ended; its content was discarded.
    TooLong,
}

/// A stateful splitter (it remembers being in the middle of an over-long line).
#[derive(Debug, Clone)]
pub struct LineDecoder {
    max: usize,
    discarding: bool,
}

impl LineDecoder {
    pub fn new(max: usize) -> Self {
        LineDecoder {
            max,
            discarding: false,
        }
    }

    /// Takes the next line off `buf`, or `None` if no line is complete yet.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Line> {
        match memchr::memchr(b'\n', buf) {
            Some(end) => {
                let mut line = buf.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                if std::mem::take(&mut self.discarding) || line.len() > self.max {
                    return Some(Line::TooLong);
                }
                Some(Line::Complete(line.freeze()))
            }
            None => {
                // A line of `max` bytes may still be waiting for the `\n` after its `\r`:
                // only more than that is sure to be too long, whatever the reads' sizes.
                if buf.len() > self.max.saturating_add(1) {
                    self.discarding = true;
                    buf.advance(buf.len());
                }
                None
            }
        }
    }

    /// Whether the decoder is throwing away the rest of an over-long line.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(decoder: &mut LineDecoder, input: &[u8]) -> Vec<Line> {
        let mut buf = BytesMut::from(input);
        std::iter::from_fn(|| decoder.decode(&mut buf)).collect()
    }

    #[test]
    fn splits_on_lf_and_crlf() {
        let mut d = LineDecoder::new(100);
        assert_eq!(
            lines(&mut d, b"a\nbc\r\n\nrest"),
            vec![
                Line::Complete(Bytes::from_static(b"a")),
                Line::Complete(Bytes::from_static(b"bc")),
                Line::Complete(Bytes::new()),
            ]
        );
    }

    #[test]
    fn an_overlong_line_is_discarded_as_it_arrives_and_reported_once() {
        let mut d = LineDecoder::new(4);
        let mut buf = BytesMut::from(&b"abcdefgh"[..]);
        assert_eq!(d.decode(&mut buf), None);
        assert!(buf.is_empty(), "nothing of the long line is kept");
        buf.extend_from_slice(b"ijk\nok\n");
        assert_eq!(d.decode(&mut buf), Some(Line::TooLong));
        assert_eq!(
            d.decode(&mut buf),
            Some(Line::Complete(Bytes::from_static(b"ok")))
        );
    }

    /// Found by the `line_decoder` fuzzer: a line of exactly the limit whose `\r` and `\n`
    /// arrived in different reads was refused as too long.
    #[test]
    fn a_line_at_the_limit_is_complete_however_its_crlf_arrives() {
        for split in 0..=6 {
            let mut d = LineDecoder::new(4);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&b"abcd\r\n"[..split], &b"abcd\r\n"[split..]] {
                buf.extend_from_slice(part);
                got.extend(std::iter::from_fn(|| d.decode(&mut buf)));
            }
            assert_eq!(
                got,
                vec![Line::Complete(Bytes::from_static(b"abcd"))],
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_complete_line_over_the_limit_is_too_long() {
        let mut d = LineDecoder::new(3);
        assert_eq!(lines(&mut d, b"abcd\nabc\n")[0], Line::TooLong);
    }
}
