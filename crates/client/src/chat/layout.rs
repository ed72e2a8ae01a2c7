//! Where each part of the screen goes, for a terminal of a given size. The model uses it to
//! know how many rows a page is; the renderer draws into it.
//!
//! ```text
//!  Rooms          │ #general  ● alice ● bob ○ carol            <- title: members, presence
//!  #general       │ 14:02 alice │ hello
//!  #dev        2  │ 14:03   bob │ hi!                          <- conversation
//!  Direct         │
//!  bob         1  │
//!                 │ #general> _                                 <- input
//!  online 127.0.0.1:5555 alice@laptop │ #dev 2, bob 1          <- status
//! ```
//!
//! Below 60 columns the sidebar goes (the title says where unread messages are instead).

use ratatui::layout::Rect;

/// The narrowest terminal that shows the sidebar.
pub const SIDEBAR_MIN_WIDTH: u16 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    pub sidebar: Option<Rect>,
    pub title: Rect,
    pub messages: Rect,
    pub input: Rect,
    pub status: Rect,
}

/// The sidebar's width for a terminal `width` columns wide.
fn sidebar_width(width: u16) -> u16 {
    (width / 5).clamp(14, 24)
}

pub fn areas(width: u16, height: u16) -> Areas {
    let height = height.max(4);
    let status = Rect::new(0, height - 1, width, 1);
    let main_height = height - 1;
    let (sidebar, right_x) = if width >= SIDEBAR_MIN_WIDTH {
        let w = sidebar_width(width);
        // Then its border column, then a blank one.
        (Some(Rect::new(0, 0, w, main_height)), w + 2)
    } else {
        (None, 0)
    };
    let right_w = width.saturating_sub(right_x);
    let title = Rect::new(right_x, 0, right_w, 1);
    let input = Rect::new(right_x, main_height - 1, right_w, 1);
    let messages = Rect::new(right_x, 1, right_w, main_height.saturating_sub(2));
    Areas {
        sidebar,
        title,
        messages,
        input,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_terminals_get_a_sidebar_narrow_ones_do_not() {
        let a = areas(80, 24);
        assert_eq!(a.sidebar, Some(Rect::new(0, 0, 16, 23)));
        assert_eq!(a.messages, Rect::new(18, 1, 62, 21));
        assert_eq!(a.input.y, 22);
        assert_eq!(a.status.y, 23);
        let n = areas(40, 15);
        assert_eq!(n.sidebar, None);
        assert_eq!(n.messages, Rect::new(0, 1, 40, 12));
    }
}
