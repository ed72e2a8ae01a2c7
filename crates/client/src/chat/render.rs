//! Drawing the model with ratatui: sidebar, title (members and presence), conversation,
//! input line, status line, laid out by `layout::areas`.

use ratatui::layout::{Position, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::layout;
use super::state::{progress_text, App, ConnState, ConvKey};
use super::text;
use super::theme::Theme;
use super::view;

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App, theme: &Theme) {
    let area = frame.area();
    let areas = layout::areas(area.width, area.height);
    if let Some(sidebar) = areas.sidebar {
        draw_sidebar(frame, app, theme, sidebar);
    }
    draw_title(frame, app, theme, areas.title, areas.sidebar.is_none());
    draw_messages(frame, app, theme, areas.messages);
    draw_input(frame, app, areas.input, areas.sidebar.is_none());
    draw_status(frame, app, theme, areas.status);
}

fn line(frame: &mut Frame, area: Rect, spans: Vec<Span<'static>>) {
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// Rooms, then direct conversations, each with unread counts; the current one reversed.
fn draw_sidebar(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    // The border column at the sidebar's right.
    let border = Rect::new(area.x + area.width, area.y, 1, area.height);
    let bar: Vec<Line> = (0..border.height)
        .map(|_| Line::styled("│", theme.border()))
        .collect();
    frame.render_widget(Paragraph::new(bar), border);

    let width = area.width as usize;
    let mut rows: Vec<(Line<'static>, Option<usize>)> = Vec::new();
    let mut section = "";
    for (i, conv) in app.convs.iter().enumerate() {
        let heading = match conv.key {
            ConvKey::Room(_) => "Rooms",
            ConvKey::Direct(_) => "Direct",
            ConvKey::Everyone => "Everyone",
            ConvKey::Server => "",
        };
        if heading != section && !heading.is_empty() && heading != "Everyone" {
            rows.push((Line::styled(heading.to_string(), theme.heading()), None));
        }
        section = heading;
        let (mark, mark_style) = match &conv.key {
            ConvKey::Direct(user) => match app.users.get(user) {
                Some((true, _)) => ("●", theme.online()),
                _ => ("○", theme.offline()),
            },
            _ => (" ", Style::default()),
        };
        let count = match conv.unread {
            0 => String::new(),
            n if n > 999 => "999+".to_string(),
            n => n.to_string(),
        };
        let name_room = width.saturating_sub(3 + text::width(&count)).max(1);
        let name = text::truncate(&text::clean(conv.key.label()), name_room);
        let pad = width.saturating_sub(2 + text::width(&name) + text::width(&count) + 1);
        let mut style = Style::default();
        if conv.unread > 0 {
            style = if conv.mentioned {
                theme.mentioned()
            } else {
                theme.unread()
            };
        }
        if i == app.current {
            style = style.patch(theme.selected());
        }
        let spans = vec![
            Span::styled(
                mark.to_string(),
                if i == app.current {
                    mark_style.patch(theme.selected())
                } else {
                    mark_style
                },
            ),
            Span::styled(format!(" {name}{}{count} ", " ".repeat(pad)), style),
        ];
        rows.push((Line::from(spans), Some(i)));
    }
    // Keep the current conversation in view when the list is longer than the screen.
    let height = area.height as usize;
    let at = rows
        .iter()
        .position(|(_, i)| *i == Some(app.current))
        .unwrap_or(0);
    let skip = (at + 1).saturating_sub(height);
    let lines: Vec<Line> = rows
        .into_iter()
        .skip(skip)
        .take(height)
        .map(|(l, _)| l)
        .collect();
    frame.render_widget(Paragraph::new(lines), area);
}

/// The conversation's name, who is in it and who is online; in the narrow layout also how
/// many messages wait elsewhere.
fn draw_title(frame: &mut Frame, app: &App, theme: &Theme, area: Rect, narrow: bool) {
    let conv = app.conv();
    let mut spans = vec![Span::styled(text::clean(conv.key.label()), theme.unread())];
    if narrow {
        let waiting: usize = app.activity().iter().map(|(c, _)| c.unread).sum();
        if waiting > 0 {
            spans.push(Span::styled(format!(" [+{waiting}]"), theme.mentioned()));
        }
    }
    match &conv.key {
        ConvKey::Room(_) => {
            let online = conv.members.iter().filter(|m| m.online).count();
            spans.push(Span::styled(
                format!("  {}/{} online ", online, conv.members.len()),
                theme.offline(),
            ));
            for m in &conv.members {
                let (dot, style) = if m.online {
                    ("●", theme.online())
                } else {
                    ("○", theme.offline())
                };
                spans.push(Span::styled(format!(" {dot} "), style));
                spans.push(Span::raw(text::clean(&m.name)));
            }
        }
        ConvKey::Direct(user) => match app.users.get(user) {
            Some((true, _)) => spans.push(Span::styled("  ● online", theme.online())),
            Some((false, last)) if *last > 0 => spans.push(Span::styled(
                format!(
                    "  ○ offline, last seen {} {}",
                    text::date(*last),
                    text::clock(*last)
                ),
                theme.offline(),
            )),
            _ => spans.push(Span::styled("  ○ offline", theme.offline())),
        },
        ConvKey::Server => spans.push(Span::styled(
            format!("  {} — /help for commands", app.server),
            theme.offline(),
        )),
        ConvKey::Everyone => spans.push(Span::styled(
            "  messages to everyone online",
            theme.offline(),
        )),
    }
    line(frame, area, spans);
}

/// The conversation's rows, newest at the bottom, scrolled by the model.
fn draw_messages(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let conv = app.conv();
    let rows = view::rows(conv, area.width as usize, &app.me, app.now);
    // Scrolled up, the bottom row says so and the rows sit above it.
    let height = (area.height as usize).saturating_sub(usize::from(conv.scroll > 0));
    let end = rows.len().saturating_sub(conv.scroll);
    let start = end.saturating_sub(height);
    let mut lines: Vec<Line> = rows[start..end]
        .iter()
        .map(|row| {
            Line::from(
                row.0
                    .iter()
                    .map(|s| Span::styled(s.text.clone(), theme.tag(s.tag)))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    // Bottom-aligned: the newest message sits just above the input line.
    let top = height.saturating_sub(lines.len());
    if conv.scroll > 0 {
        let note = match conv.below {
            0 => " ── more below: PageDown ── ".to_string(),
            n => format!(" ── {n} new below: PageDown ── "),
        };
        lines.push(Line::styled(note, theme.selected()));
    }
    let area = Rect::new(
        area.x,
        area.y + top as u16,
        area.width,
        area.height - top as u16,
    );
    frame.render_widget(Paragraph::new(lines), area);
}

/// The prompt and the line being typed, scrolled so the cursor stays visible.
fn draw_input(frame: &mut Frame, app: &App, area: Rect, narrow: bool) {
    let label = app.conv().key.label();
    let prompt = if narrow || app.current == 0 {
        "> ".to_string()
    } else {
        format!("[{}] ", text::truncate(&text::clean(label), 16))
    };
    let avail = (area.width as usize)
        .saturating_sub(text::width(&prompt))
        .max(1);
    let typed = app.editor.text();
    let cursor = app.editor.cursor();
    // Show from where the text before the cursor still fits, if it does not all fit.
    let before = &typed[..cursor];
    let start = if text::width(before) >= avail {
        text::tail(before, avail - 1)
    } else {
        0
    };
    let shown = &typed[start..];
    let cursor_col = text::width(&typed[start..cursor]);
    let spans = vec![Span::raw(prompt.clone()), Span::raw(text::clean(shown))];
    line(frame, area, spans);
    let x = area.x + (text::width(&prompt) + cursor_col).min(area.width as usize - 1) as u16;
    frame.set_cursor_position(Position::new(x, area.y));
}

/// Connection, server, user and device, transfers, and where unread messages are.
fn draw_status(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let state = match &app.conn {
        ConnState::Connecting { attempt: 1 } => "connecting…".to_string(),
        ConnState::Connecting { attempt } => format!("connecting (attempt {attempt})…"),
        ConnState::Online => "online".to_string(),
        ConnState::Offline {
            attempt,
            retry_at,
            reason,
        } => {
            let secs = retry_at.saturating_sub(app.now).div_ceil(1000);
            format!("reconnecting in {secs}s (attempt {attempt}): {reason}")
        }
        ConnState::Stopped(why) => format!("offline: {why}"),
    };
    let mut parts = vec![
        state,
        app.server.clone(),
        format!("{}@{}", app.me, app.device),
    ];
    for t in &app.transfers {
        parts.push(progress_text(t));
    }
    let activity: Vec<String> = app
        .activity()
        .iter()
        .map(|(c, i)| format!("{}:{}", i + 1, text::clean(c.key.label())))
        .collect();
    if !activity.is_empty() {
        parts.push(format!("act: {}", activity.join(",")));
    }
    let text = format!(" {}", parts.join(" │ "));
    let text = text::truncate(&text, area.width as usize);
    let pad = (area.width as usize).saturating_sub(text::width(&text));
    line(
        frame,
        area,
        vec![Span::styled(
            format!("{text}{}", " ".repeat(pad)),
            theme.status(),
        )],
    );
}
