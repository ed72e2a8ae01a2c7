//! The input line: a string and a cursor, moved and edited by graphemes (an emoji or an
//! accented letter is one step), with the kill commands of a shell (Ctrl-W, Ctrl-U, Ctrl-K)
//! and the lines sent before under Up and Down.

use unicode_segmentation::UnicodeSegmentation;

/// At most this many sent lines are remembered.
const HISTORY: usize = 500;

#[derive(Debug, Default, Clone)]
pub struct Editor {
    text: String,
    /// A byte index into `text`, always on a grapheme boundary.
    cursor: usize,
    /// Lines sent before, oldest first.
    history: Vec<String>,
    /// While browsing the history: which line, and what was typed before browsing.
    browsing: Option<(usize, String)>,
}

impl Editor {
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn cursor(&self) -> usize {
        self.cursor
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Replaces the whole line, cursor at the end.
    pub fn set(&mut self, text: &str) {
        self.text = text.to_string();
        self.cursor = self.text.len();
    }

    /// Replaces `range` (bytes) with `with`, the cursor after it.
    pub fn replace(&mut self, range: std::ops::Range<usize>, with: &str) {
        self.text.replace_range(range.clone(), with);
        self.cursor = range.start + with.len();
    }

    /// Takes the line (to send it), remembering it for Up.
    pub fn take(&mut self) -> String {
        let line = std::mem::take(&mut self.text);
        self.cursor = 0;
        self.browsing = None;
        if !line.trim().is_empty() && self.history.last() != Some(&line) {
            self.history.push(line.clone());
            if self.history.len() > HISTORY {
                self.history.remove(0);
            }
        }
        line
    }

    pub fn insert(&mut self, c: char) {
        // Pasted line breaks become spaces: one line is one message.
        let c = if c == '\n' || c == '\r' { ' ' } else { c };
        self.text.insert(self.cursor, c);
        self.cursor += c.len_utf8();
    }

    pub fn insert_str(&mut self, s: &str) {
        for c in s.chars() {
            self.insert(c);
        }
    }

    fn prev_boundary(&self, from: usize) -> usize {
        self.text[..from]
            .grapheme_indices(true)
            .next_back()
            .map_or(0, |(i, _)| i)
    }

    fn next_boundary(&self, from: usize) -> usize {
        self.text[from..]
            .graphemes(true)
            .next()
            .map_or(from, |g| from + g.len())
    }

    /// The start of the word before `from` (skipping spaces first), as Ctrl-W sees words.
    fn word_start(&self, from: usize) -> usize {
        let before = &self.text[..from];
        let trimmed = before.trim_end();
        match trimmed.rfind(char::is_whitespace) {
            Some(i) => i + trimmed[i..].chars().next().map_or(1, char::len_utf8),
            None => 0,
        }
    }

    /// The end of the word after `from` (skipping spaces first).
    fn word_end(&self, from: usize) -> usize {
        let after = &self.text[from..];
        let skipped = after.len() - after.trim_start().len();
        let rest = &after[skipped..];
        from + skipped + rest.find(char::is_whitespace).unwrap_or(rest.len())
    }

    pub fn left(&mut self) {
        self.cursor = self.prev_boundary(self.cursor);
    }

    pub fn right(&mut self) {
        self.cursor = self.next_boundary(self.cursor);
    }

    pub fn home(&mut self) {
        self.cursor = 0;
    }

    pub fn end(&mut self) {
        self.cursor = self.text.len();
    }

    pub fn word_left(&mut self) {
        self.cursor = self.word_start(self.cursor);
    }

    pub fn word_right(&mut self) {
        self.cursor = self.word_end(self.cursor);
    }

    pub fn backspace(&mut self) {
        let start = self.prev_boundary(self.cursor);
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    pub fn delete(&mut self) {
        let end = self.next_boundary(self.cursor);
        self.text.replace_range(self.cursor..end, "");
    }

    /// Ctrl-W: the word before the cursor.
    pub fn delete_word_back(&mut self) {
        let start = self.word_start(self.cursor);
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    /// Alt-D: the word after the cursor.
    pub fn delete_word_forward(&mut self) {
        let end = self.word_end(self.cursor);
        self.text.replace_range(self.cursor..end, "");
    }

    /// Ctrl-U: everything before the cursor.
    pub fn kill_to_start(&mut self) {
        self.text.replace_range(..self.cursor, "");
        self.cursor = 0;
    }

    /// Ctrl-K: everything after the cursor.
    pub fn kill_to_end(&mut self) {
        self.text.truncate(self.cursor);
    }

    /// Up: the line sent before the one shown (the line being typed is kept for Down).
    pub fn history_back(&mut self) {
        let index = match &self.browsing {
            Some((0, _)) => return,
            Some((i, _)) => i - 1,
            None if self.history.is_empty() => return,
            None => {
                self.browsing = Some((self.history.len(), self.text.clone()));
                self.history.len() - 1
            }
        };
        if let Some((i, _)) = &mut self.browsing {
            *i = index;
        }
        self.set(&self.history[index].clone());
    }

    /// Down: the next line sent, and past the last one the line that was being typed.
    pub fn history_forward(&mut self) {
        let Some((i, draft)) = self.browsing.clone() else {
            return;
        };
        if i + 1 >= self.history.len() {
            self.browsing = None;
            self.set(&draft);
        } else {
            self.browsing = Some((i + 1, draft));
            self.set(&self.history[i + 1].clone());
        }
    }

    /// The word the cursor is at the end of, as a byte range (for completion).
    pub fn word_at_cursor(&self) -> std::ops::Range<usize> {
        let before = &self.text[..self.cursor];
        let start = before.rfind(char::is_whitespace).map_or(0, |i| {
            i + before[i..].chars().next().map_or(1, char::len_utf8)
        });
        start..self.cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(s: &str) -> Editor {
        let mut e = Editor::default();
        e.insert_str(s);
        e
    }

    #[test]
    fn moves_and_deletes_by_grapheme() {
        let mut e = typed("a👍é");
        e.left();
        e.backspace();
        assert_eq!(e.text(), "aé");
        e.home();
        e.delete();
        assert_eq!(e.text(), "é");
        e.end();
        e.backspace();
        assert_eq!(e.text(), "");
    }

    #[test]
    fn word_commands() {
        let mut e = typed("hello big  world");
        e.delete_word_back();
        assert_eq!(e.text(), "hello big  ");
        e.delete_word_back();
        assert_eq!(e.text(), "hello ");
        e.home();
        e.word_right();
        assert_eq!(e.cursor(), 5);
        e.set("one two three");
        e.word_left();
        assert_eq!(&e.text()[e.cursor()..], "three");
        e.kill_to_end();
        assert_eq!(e.text(), "one two ");
        e.word_left();
        e.kill_to_start();
        assert_eq!(e.text(), "two ");
        e.home();
        e.delete_word_forward();
        assert_eq!(e.text(), " ");
    }

    #[test]
    fn history_walks_back_and_returns_to_the_draft() {
        let mut e = typed("first");
        e.take();
        e.insert_str("second");
        e.take();
        e.insert_str("draft");
        e.history_back();
        assert_eq!(e.text(), "second");
        e.history_back();
        assert_eq!(e.text(), "first");
        e.history_back();
        assert_eq!(e.text(), "first");
        e.history_forward();
        assert_eq!(e.text(), "second");
        e.history_forward();
        assert_eq!(e.text(), "draft");
    }

    #[test]
    fn pasted_line_breaks_become_spaces() {
        assert_eq!(typed("a\nb").text(), "a b");
    }
}
