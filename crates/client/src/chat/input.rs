//! Keys and the mouse, as the model understands them: editing keys go to the input line,
//! the rest move between conversations, scroll, complete, send.

use crossterm::event::{
    Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEvent, MouseEventKind,
};

use super::layout;
use super::state::{Action, App};

/// Rows one notch of the mouse wheel scrolls.
const WHEEL: usize = 3;

/// Applies one terminal event; returns the requests it leads to.
pub fn handle(app: &mut App, event: Event) -> Vec<Action> {
    match event {
        Event::Key(key) if key.kind != KeyEventKind::Release => key_event(app, key),
        Event::Mouse(mouse) => mouse_event(app, mouse),
        Event::Paste(text) => {
            app.end_completion();
            app.editor.insert_str(&text);
            Vec::new()
        }
        Event::Resize(w, h) => {
            app.resize(w, h);
            Vec::new()
        }
        _ => Vec::new(),
    }
}

fn key_event(app: &mut App, key: KeyEvent) -> Vec<Action> {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    let alt = key.modifiers.contains(KeyModifiers::ALT);
    match key.code {
        KeyCode::Tab => {
            app.complete(true);
            return Vec::new();
        }
        KeyCode::BackTab => {
            app.complete(false);
            return Vec::new();
        }
        KeyCode::Esc => {
            app.cancel_completion();
            return Vec::new();
        }
        _ => app.end_completion(),
    }
    let e = &mut app.editor;
    match key.code {
        // Ctrl-J is a line feed: what Enter typed before raw mode began arrives as.
        KeyCode::Enter => return app.submit(),
        KeyCode::Char('j' | 'm') if ctrl => return app.submit(),
        KeyCode::Char('c') if ctrl => {
            app.quit = true;
            return vec![Action::Quit];
        }
        KeyCode::Char('d') if ctrl => {
            if e.is_empty() {
                app.quit = true;
                return vec![Action::Quit];
            }
            e.delete();
        }
        KeyCode::Char('n') if ctrl => return app.next_conv(1),
        KeyCode::Char('p') if ctrl => return app.next_conv(-1),
        KeyCode::Up if alt => return app.next_conv(-1),
        KeyCode::Down if alt => return app.next_conv(1),
        KeyCode::Char(c @ '1'..='9') if alt => {
            return app.select(c as usize - '1' as usize);
        }
        KeyCode::Char('a') if ctrl => e.home(),
        KeyCode::Char('e') if ctrl => e.end(),
        KeyCode::Char('b') if ctrl => e.left(),
        KeyCode::Char('f') if ctrl => e.right(),
        KeyCode::Char('b') if alt => e.word_left(),
        KeyCode::Char('f') if alt => e.word_right(),
        KeyCode::Char('w') if ctrl => e.delete_word_back(),
        KeyCode::Char('h') if ctrl => e.backspace(),
        KeyCode::Char('d') if alt => e.delete_word_forward(),
        KeyCode::Char('u') if ctrl => e.kill_to_start(),
        KeyCode::Char('k') if ctrl => e.kill_to_end(),
        KeyCode::Char('l') if ctrl => app.redraw = true,
        KeyCode::Backspace if alt || ctrl => e.delete_word_back(),
        KeyCode::Backspace => e.backspace(),
        KeyCode::Delete => e.delete(),
        KeyCode::Left if ctrl || alt => e.word_left(),
        KeyCode::Right if ctrl || alt => e.word_right(),
        KeyCode::Left => e.left(),
        KeyCode::Right => e.right(),
        KeyCode::Home => e.home(),
        KeyCode::End => e.end(),
        KeyCode::Up => e.history_back(),
        KeyCode::Down => e.history_forward(),
        KeyCode::PageUp => return app.page_up(),
        KeyCode::PageDown => app.page_down(),
        KeyCode::Char(c) if !ctrl && !alt => e.insert(c),
        _ => {}
    }
    Vec::new()
}

fn mouse_event(app: &mut App, mouse: MouseEvent) -> Vec<Action> {
    match mouse.kind {
        MouseEventKind::ScrollUp => app.scroll_up(WHEEL),
        MouseEventKind::ScrollDown => {
            app.scroll_down(WHEEL);
            Vec::new()
        }
        MouseEventKind::Down(_) => {
            // A click on a sidebar entry opens it.
            let areas = layout::areas(app.width, app.height);
            match areas.sidebar {
                Some(s) if mouse.column < s.width && mouse.row < s.height => {
                    match sidebar_index(app, mouse.row as usize, s.height as usize) {
                        Some(i) => app.select(i),
                        None => Vec::new(),
                    }
                }
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

/// Which conversation the sidebar shows at `row` (headings take rows too; see render).
fn sidebar_index(app: &App, row: usize, height: usize) -> Option<usize> {
    use super::state::ConvKey;
    let mut rows: Vec<Option<usize>> = Vec::new();
    let mut section = "";
    for (i, conv) in app.convs.iter().enumerate() {
        let heading = match conv.key {
            ConvKey::Room(_) => "Rooms",
            ConvKey::Direct(_) => "Direct",
            ConvKey::Everyone => "Everyone",
            ConvKey::Server => "",
        };
        if heading != section && !heading.is_empty() && heading != "Everyone" {
            rows.push(None);
        }
        section = heading;
        rows.push(Some(i));
    }
    let at = rows
        .iter()
        .position(|i| *i == Some(app.current))
        .unwrap_or(0);
    let skip = (at + 1).saturating_sub(height);
    rows.get(skip + row).copied().flatten()
}
