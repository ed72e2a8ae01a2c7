//! Colours that read on light and dark terminals alike: only the terminal's own palette, as
//! foreground, never a background (selection is reverse video); no yellow or white, which
//! vanish on one of the two. With `NO_COLOR` set (https://no-color.org), bold, dim, reverse
//! and underline only.

use ratatui::style::{Color, Modifier, Style};

use super::view::Tag;

/// Colours for names: readable on white and on black.
const NICKS: [Color; 5] = [
    Color::Red,
    Color::Green,
    Color::Blue,
    Color::Magenta,
    Color::Cyan,
];

#[derive(Debug, Clone, Copy)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    /// Colours unless `NO_COLOR` is set to anything non-empty.
    pub fn from_env() -> Theme {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Theme { color: !no_color }
    }

    fn fg(&self, color: Color) -> Style {
        if self.color {
            Style::default().fg(color)
        } else {
            Style::default()
        }
    }

    pub fn tag(&self, tag: Tag) -> Style {
        let dim = Style::default().add_modifier(Modifier::DIM);
        let bold = Style::default().add_modifier(Modifier::BOLD);
        match tag {
            Tag::Time | Tag::Separator | Tag::Info | Tag::Rule => dim,
            Tag::Nick { me: true, .. } => bold,
            Tag::Nick { me: false, hue } => self.fg(NICKS[usize::from(hue) % NICKS.len()]),
            Tag::Text => Style::default(),
            Tag::Mention => bold,
            Tag::File => self.fg(Color::Cyan).add_modifier(Modifier::UNDERLINED),
            Tag::Pending => dim.add_modifier(Modifier::ITALIC),
            Tag::Failed | Tag::Error => self.fg(Color::Red).add_modifier(Modifier::BOLD),
        }
    }

    pub fn online(&self) -> Style {
        self.fg(Color::Green)
    }

    pub fn offline(&self) -> Style {
        Style::default().add_modifier(Modifier::DIM)
    }

    pub fn heading(&self) -> Style {
        Style::default().add_modifier(Modifier::DIM | Modifier::BOLD)
    }

    pub fn selected(&self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }

    pub fn unread(&self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }

    pub fn mentioned(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    pub fn status(&self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }

    pub fn border(&self) -> Style {
        Style::default().add_modifier(Modifier::DIM)
    }
}
