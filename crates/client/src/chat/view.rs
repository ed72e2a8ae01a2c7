//! A conversation as rows of a given width: time, nick column, wrapped text, status marks,
//! day changes and the "new messages" line. Plain data with style tags: the renderer colours
//! it, the model counts it (to scroll by pages).
//!
//! ```text
//! 14:02 alice │ hello, this is a long message that
//!             │ wraps under its own text
//! 14:03   bob │ hi (sending…)
//!    ── new messages ──
//! ```

use super::state::{Conv, Delivery, Entry, NoteKind};
use super::text;
use crate::FileInfo;

/// What a piece of a row is, for the renderer to style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Time,
    /// A sender's name; `hue` picks its colour, stable per name.
    Nick {
        me: bool,
        hue: u8,
    },
    Separator,
    Text,
    /// Text that names this user.
    Mention,
    File,
    Pending,
    Failed,
    Info,
    Error,
    /// Day changes, the "new messages" line, the start of the conversation.
    Rule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub text: String,
    pub tag: Tag,
}

/// One screen row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Row(pub Vec<Span>);

impl Row {
    fn push(&mut self, text: impl Into<String>, tag: Tag) {
        self.0.push(Span {
            text: text.into(),
            tag,
        });
    }
}

/// A colour index for a name (the same name always gets the same one).
pub fn hue(name: &str) -> u8 {
    let h = name.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    (h % 5) as u8
}

/// The widths of a conversation's columns at `width`.
struct Columns {
    time: bool,
    nick: usize,
    text: usize,
}

fn columns(conv: &Conv, width: usize) -> Columns {
    let time = width >= 50;
    let cap = if width >= 60 { 12 } else { 8 };
    let longest = conv
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Msg(m) => Some(text::width(&m.from)),
            _ => None,
        })
        .max()
        .unwrap_or(2);
    let nick = longest.clamp(2, cap);
    let used = if time { 6 } else { 0 } + nick + 3;
    Columns {
        time,
        nick,
        text: width.saturating_sub(used).max(8),
    }
}

/// Every row of `conv` at `width` columns, oldest first; `me` is this user, `now` today.
pub fn rows(conv: &Conv, width: usize, me: &str, now: u64) -> Vec<Row> {
    let cols = columns(conv, width);
    let mut out = Vec::new();
    if conv.loading {
        out.push(rule("loading older messages…", width));
    } else if !conv.more_before && conv.loaded && conv.key.history_name().is_some() {
        out.push(rule("start of the conversation", width));
    }
    let today = text::date(now);
    let mut last_date: Option<String> = None;
    for entry in &conv.entries {
        let ms = match entry {
            Entry::Msg(m) => text::unix_ms(m.time),
            Entry::Note { ms, .. } => *ms,
        };
        let date = text::date(ms);
        let changed = match &last_date {
            Some(d) => *d != date,
            None => date != today,
        };
        if changed {
            out.push(rule(&date, width));
        }
        last_date = Some(date);
        if let (Entry::Msg(m), Some(marker)) = (entry, conv.marker) {
            if m.id == Some(marker) {
                out.push(rule("new messages", width));
            }
        }
        entry_rows(entry, &cols, me, &mut out);
    }
    out
}

fn rule(label: &str, width: usize) -> Row {
    let label = format!(" {} ", text::truncate(label, width.saturating_sub(6)));
    let side = width.saturating_sub(text::width(&label)) / 2;
    let mut row = Row::default();
    row.push(
        format!(
            "{}{label}{}",
            "─".repeat(side.min(3)),
            "─".repeat(side.min(3))
        ),
        Tag::Rule,
    );
    row
}

/// The rows of one entry.
fn entry_rows(entry: &Entry, cols: &Columns, me: &str, out: &mut Vec<Row>) {
    let (ms, prefix, prefix_tag, body, body_tag, suffix) = match entry {
        Entry::Msg(m) => {
            let nick = text::truncate(&text::clean(&m.from), cols.nick);
            let tag = Tag::Nick {
                me: m.from == me,
                hue: hue(&m.from),
            };
            let (body, body_tag) = match FileInfo::parse(&m.text) {
                Some((file, caption)) => {
                    let mut body = format!(
                        "[file] {} ({}, {})",
                        file.name,
                        text::size(file.size),
                        file.mime
                    );
                    if !caption.is_empty() {
                        body.push_str(" — ");
                        body.push_str(caption);
                    }
                    (body, Tag::File)
                }
                None if m.from != me && mentions(&m.text, me) => (m.text.clone(), Tag::Mention),
                None => (m.text.clone(), Tag::Text),
            };
            let suffix = match &m.status {
                Delivery::Stored => None,
                Delivery::Pending => Some((" (sending…)".to_string(), Tag::Pending)),
                Delivery::Failed(why) => Some((format!(" (not sent: {why})"), Tag::Failed)),
            };
            (text::unix_ms(m.time), nick, tag, body, body_tag, suffix)
        }
        Entry::Note { ms, text, kind } => {
            let (mark, tag) = match kind {
                NoteKind::Info => ("--", Tag::Info),
                NoteKind::Error => ("!!", Tag::Error),
            };
            (*ms, mark.to_string(), tag, text.clone(), tag, None)
        }
    };
    // The text wrapped; the status mark after it, on its last row if it fits.
    let mut lines: Vec<Vec<(String, Tag)>> = text::wrap(&body, cols.text)
        .into_iter()
        .map(|l| vec![(l, body_tag)])
        .collect();
    if let Some((mark, tag)) = suffix {
        let last = lines.last_mut().expect("wrap gives a row");
        let used: usize = last.iter().map(|(t, _)| text::width(t)).sum();
        if used + text::width(&mark) <= cols.text {
            last.push((mark, tag));
        } else {
            for l in text::wrap(mark.trim_start(), cols.text) {
                lines.push(vec![(l, tag)]);
            }
        }
    }
    for (i, line) in lines.into_iter().enumerate() {
        let mut row = Row::default();
        if cols.time {
            if i == 0 {
                row.push(format!("{} ", text::clock(ms)), Tag::Time);
            } else {
                row.push("      ", Tag::Time);
            }
        }
        if i == 0 {
            row.push(text::pad_left(&prefix, cols.nick), prefix_tag);
        } else {
            row.push(" ".repeat(cols.nick), Tag::Time);
        }
        row.push(" │ ", Tag::Separator);
        for (t, tag) in line {
            if !t.is_empty() {
                row.push(t, tag);
            }
        }
        out.push(row);
    }
}

/// Whether `text` names `me` as a word.
pub fn mentions(text: &str, me: &str) -> bool {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
        .any(|w| w == me)
}
