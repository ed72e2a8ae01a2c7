//! Text as a terminal shows it: display widths of graphemes (CJK and emoji take two
//! columns), word wrapping, truncation, and times in the local time zone.
//!
//! The model and the renderer both measure with these functions, so scrolling by rows and
//! drawing the rows agree.

use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

/// Columns `s` takes.
pub fn width(s: &str) -> usize {
    s.graphemes(true).map(grapheme_width).sum()
}

fn grapheme_width(g: &str) -> usize {
    // A zero-width grapheme alone still occupies its cell in a terminal buffer.
    g.width().clamp(1, 2)
}

/// `s` without control characters: what a peer sends must never move the cursor or change
/// colours. Tabs become spaces; other controls a visible replacement.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' => ' ',
            c if c.is_control() => '\u{FFFD}',
            c => c,
        })
        .collect()
}

/// Wraps `text` into rows of at most `width` columns, breaking at spaces where it can and
/// inside a word where it must (never inside a grapheme). Line breaks in the text start
/// new rows. Always at least one row.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(2);
    let mut rows = Vec::new();
    for line in text.split('\n') {
        let line = clean(line.trim_end_matches('\r'));
        wrap_line(&line, width, &mut rows);
    }
    if rows.is_empty() {
        rows.push(String::new());
    }
    rows
}

fn wrap_line(line: &str, width: usize, rows: &mut Vec<String>) {
    let mut row = String::new();
    let mut row_width = 0;
    for word in line.split_word_bounds() {
        let w = width_of(word);
        if row_width + w <= width {
            row.push_str(word);
            row_width += w;
            continue;
        }
        if word.trim().is_empty() {
            // A space at the break: the row ends here, the space is dropped.
            rows.push(std::mem::take(&mut row));
            row_width = 0;
            continue;
        }
        if w <= width && row_width > 0 {
            rows.push(std::mem::take(&mut row).trim_end().to_string());
            row_width = 0;
        }
        // A word longer than a row: split it by graphemes.
        for g in word.graphemes(true) {
            let gw = grapheme_width(g);
            if row_width + gw > width {
                rows.push(std::mem::take(&mut row));
                row_width = 0;
            }
            row.push_str(g);
            row_width += gw;
        }
    }
    rows.push(row);
}

fn width_of(s: &str) -> usize {
    s.graphemes(true).map(grapheme_width).sum()
}

/// `s` cut to at most `max` columns, with `…` where it was cut.
pub fn truncate(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    for g in s.graphemes(true) {
        let w = grapheme_width(g);
        if used + w > max - 1 {
            break;
        }
        out.push_str(g);
        used += w;
    }
    out.push('…');
    out
}

/// The last `max` columns of `s` (the end of a long input line), and where they start in
/// `s` (a byte index).
pub fn tail(s: &str, max: usize) -> usize {
    let mut used = 0;
    let mut start = s.len();
    for (i, g) in s.grapheme_indices(true).rev() {
        let w = grapheme_width(g);
        if used + w > max {
            break;
        }
        used += w;
        start = i;
    }
    start
}

/// Pads `s` with spaces on the left to `w` columns (names right-aligned in their column).
pub fn pad_left(s: &str, w: usize) -> String {
    let have = width(s);
    format!("{}{s}", " ".repeat(w.saturating_sub(have)))
}

/// A message's time field in Unix milliseconds. Senders put different units there (seed
/// 000's Go client: nanoseconds; parley's other protocols: the server's receive time in
/// nanoseconds; some clients: milliseconds or seconds), told apart by their size.
pub fn unix_ms(time: u64) -> u64 {
    match time {
        t if t >= 100_000_000_000_000_000 => t / 1_000_000, // ns
        t if t >= 100_000_000_000_000 => t / 1_000,         // µs
        t if t >= 100_000_000_000 => t,                     // ms
        t => t.saturating_mul(1000),                        // s
    }
}

/// Local broken-down time of a Unix-ms instant: (year, month 1-12, day, hour, minute, second),
/// in the system's time zone (`TZ`, else /etc/localtime; UTC if neither can be read).
pub fn local(ms: u64) -> (i32, u32, u32, u32, u32, u32) {
    static ZONE: std::sync::OnceLock<jiff::tz::TimeZone> = std::sync::OnceLock::new();
    let zone =
        ZONE.get_or_init(|| jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC));
    let Ok(at) = jiff::Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64) else {
        return (1970, 1, 1, 0, 0, 0);
    };
    let t = zone.to_datetime(at);
    (
        i32::from(t.year()),
        t.month() as u32,
        t.day() as u32,
        t.hour() as u32,
        t.minute() as u32,
        t.second() as u32,
    )
}

/// `HH:MM` in local time.
pub fn clock(ms: u64) -> String {
    let (_, _, _, h, m, _) = local(ms);
    format!("{h:02}:{m:02}")
}

/// `YYYY-MM-DD` in local time.
pub fn date(ms: u64) -> String {
    let (y, mo, d, ..) = local(ms);
    format!("{y:04}-{mo:02}-{d:02}")
}

/// A byte count for people: `812 B`, `4.0 KB`, `1.2 MB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_characters_take_two_columns() {
        assert_eq!(width("abc"), 3);
        assert_eq!(width("日本語"), 6);
        assert_eq!(width("héllo"), 5);
        assert_eq!(width("👍"), 2);
        // A family: one grapheme of several code points, two columns.
        assert_eq!(width("👨‍👩‍👧"), 2);
    }

    #[test]
    fn wrapping_breaks_at_spaces_and_inside_long_words() {
        assert_eq!(wrap("hello big world", 9), ["hello big", "world"]);
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("one\ntwo", 10), ["one", "two"]);
        assert_eq!(wrap("", 10), [""]);
    }

    #[test]
    fn wrapping_never_splits_a_wide_character() {
        // Five columns fit two CJK characters, not two and a half.
        let rows = wrap("日本語のテキスト", 5);
        assert_eq!(rows, ["日本", "語の", "テキ", "スト"]);
        assert!(rows.iter().all(|r| width(r) <= 5));
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(clean("a\x1b[31mred\x07"), "a\u{FFFD}[31mred\u{FFFD}");
        assert_eq!(wrap("a\tb", 10), ["a b"]);
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("general", 10), "general");
        assert_eq!(truncate("general", 5), "gene…");
        assert_eq!(truncate("日本語", 4), "日…");
    }

    #[test]
    fn tail_keeps_the_end_that_fits() {
        let s = "hello 日本";
        assert_eq!(&s[tail(s, 5)..], " 日本");
        assert_eq!(&s[tail(s, 4)..], "日本");
    }

    #[test]
    fn time_units_are_told_apart() {
        let ms = 1_700_000_000_123;
        assert_eq!(unix_ms(ms * 1_000_000), ms);
        assert_eq!(unix_ms(ms * 1_000), ms);
        assert_eq!(unix_ms(ms), ms);
        assert_eq!(unix_ms(ms / 1000), ms / 1000 * 1000);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(812), "812 B");
        assert_eq!(size(4096), "4.0 KB");
        assert_eq!(size(1_258_291), "1.2 MB");
    }
}
