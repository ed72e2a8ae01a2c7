//! The model and its rendering, without a terminal: updates and keys go into `App`,
//! ratatui's `TestBackend` shows what a terminal would.

use bytes::Bytes;
use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyModifiers};
use parley_proto::binary::{kind, Event, UserEntry};
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::Color;
use ratatui::Terminal;

use super::input;
use super::render;
use super::state::{Action, App, ConnState, ConvKey, Delivery, Entry, Update};
use super::text;
use super::theme::Theme;
use crate::LinkStatus;

/// A fixed "now" (Unix ms): every message in these tests is from the same day.
const NOW: u64 = 1_765_000_000_000;

fn app(width: u16, height: u16) -> App {
    let mut app = App::new("alice", "laptop", "127.0.0.1:5555", "/tmp".into(), NOW);
    app.resize(width, height);
    app.apply(Update::Link(LinkStatus::Online));
    app
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A stored message `id` (also its place in its conversation), `secs` after NOW.
fn room_msg(room: &str, id: u64, from: &str, text: &str) -> Event {
    Event {
        id,
        conversation: 1,
        seq: id,
        kind: kind::ROOM,
        from: b(from),
        to: b(room),
        time: (NOW + id * 1000) * 1_000_000,
        message: b(text),
    }
}

fn dm(id: u64, from: &str, to: &str, text: &str) -> Event {
    Event {
        id: 1000 + id,
        conversation: 2,
        seq: id,
        kind: kind::DIRECT,
        from: b(from),
        to: b(to),
        time: (NOW + id * 1000) * 1_000_000,
        message: b(text),
    }
}

fn members(names: &[(&str, bool)]) -> Vec<UserEntry> {
    names
        .iter()
        .map(|(n, online)| UserEntry {
            name: b(n),
            online: *online,
            last_seen: 0,
        })
        .collect()
}

/// Joins `room` and gives it members.
fn join(app: &mut App, room: &str, who: &[(&str, bool)]) {
    app.apply(Update::Joined(room.to_string()));
    app.apply(Update::Members {
        room: room.to_string(),
        members: members(who),
    });
}

fn draw(app: &App, theme: Theme) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(app.width, app.height)).unwrap();
    terminal
        .draw(|frame| render::draw(frame, app, &theme))
        .unwrap();
    terminal.backend().buffer().clone()
}

/// The screen as lines of text: a wide character once, not followed by its filler cell.
fn lines(buffer: &Buffer) -> Vec<String> {
    let area = buffer.area;
    (0..area.height)
        .map(|y| {
            let mut line = String::new();
            let mut x = 0;
            while x < area.width {
                let symbol = buffer[(x, y)].symbol();
                line.push_str(symbol);
                x += text::width(symbol).max(1) as u16;
            }
            line.trim_end().to_string()
        })
        .collect()
}

fn screen(app: &App) -> Vec<String> {
    lines(&draw(app, Theme { color: true }))
}

fn type_line(app: &mut App, s: &str) -> Vec<Action> {
    for c in s.chars() {
        input::handle(app, key(KeyCode::Char(c)));
    }
    input::handle(app, key(KeyCode::Enter))
}

fn key(code: KeyCode) -> TermEvent {
    TermEvent::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn find(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not on screen:\n{}", lines.join("\n")))
}

#[test]
fn layout_at_80_by_24() {
    let mut app = app(80, 24);
    join(&mut app, "#dev", &[("alice", true), ("bob", true)]);
    join(
        &mut app,
        "#general",
        &[("alice", true), ("bob", true), ("carol", false)],
    );
    app.apply(Update::Message(room_msg("#dev", 7, "bob", "ship it?")));
    app.apply(Update::Message(room_msg("#dev", 8, "bob", "alice?")));
    app.apply(Update::Message(dm(1, "bob", "alice", "psst")));
    app.apply(Update::Message(room_msg(
        "#general",
        1,
        "bob",
        "hello everyone",
    )));
    app.apply(Update::Message(room_msg("#general", 2, "carol", "hi bob")));
    let screen = screen(&app);
    assert_eq!(screen.len(), 24);
    // Sidebar: sections, unread counts; the border; the title with presence.
    assert!(screen[0].starts_with("  parley "), "{}", screen[0]);
    assert!(
        screen[0].contains("│ #general  2/3 online  ● alice ● bob ○ carol"),
        "{}",
        screen[0]
    );
    assert_eq!(screen[1].trim_end(), "Rooms           │");
    assert!(screen[2].starts_with("  #dev        2 │"), "{}", screen[2]);
    assert!(screen[3].starts_with("  #general      │"), "{}", screen[3]);
    assert_eq!(screen[4].trim_end(), "Direct          │");
    assert!(screen[5].starts_with("● bob         1 │"), "{}", screen[5]);
    // The conversation, newest at the bottom, nicks right-aligned in their column.
    let hello = find(&screen, "hello everyone");
    assert!(
        screen[hello].ends_with("  bob │ hello everyone"),
        "{}",
        screen[hello]
    );
    let time: String = screen[hello].chars().skip(18).take(5).collect();
    assert_eq!(time, text::clock(NOW + 1000));
    assert!(screen[hello + 1].ends_with("carol │ hi bob"));
    assert_eq!(hello + 1, 21, "the last message sits above the input line");
    // Input line and status line.
    assert_eq!(screen[22].trim_end(), "                │ [#general]");
    // Unread conversations by their Alt-number.
    assert_eq!(
        screen[23],
        " online │ 127.0.0.1:5555 │ alice@laptop │ act: 2:#dev,4:bob"
    );
}

#[test]
fn layout_at_40_by_15_has_no_sidebar() {
    let mut app = app(40, 15);
    join(&mut app, "#general", &[("alice", true), ("bob", true)]);
    app.apply(Update::Message(room_msg(
        "#general",
        1,
        "bob",
        "a message long enough to wrap at forty columns",
    )));
    app.apply(Update::Message(dm(1, "bob", "alice", "psst")));
    let screen = screen(&app);
    assert_eq!(screen.len(), 15);
    // The title says where the other unread message is.
    assert!(
        screen[0].starts_with("#general [+1]  2/2 online  ● alice"),
        "{}",
        screen[0]
    );
    let first = find(&screen, "a message long");
    // No time column; the text wraps under itself.
    assert_eq!(screen[first], "bob │ a message long enough to wrap at");
    assert_eq!(screen[first + 1], "    │ forty columns");
    assert!(screen.iter().all(|l| text::width(l) <= 40));
    assert_eq!(screen[13], ">");
    assert!(screen[14].starts_with(" online │ 127.0.0.1:5555 │ alice@lapt"));
}

#[test]
fn wide_characters_are_laid_out_by_their_width() {
    let mut app = app(40, 15);
    join(&mut app, "#日本", &[("alice", true), ("bob", true)]);
    let text_in = "日本語のテキストと絵文字👍👍👍が折り返されます";
    app.apply(Update::Message(room_msg("#日本", 1, "dave", text_in)));
    let buffer = draw(&app, Theme { color: true });
    let screen = lines(&buffer);
    let first = find(&screen, "日本語");
    // 40 columns, 7 for the nick column and separator: 33 for text, never half a glyph.
    let rows: Vec<&str> = screen[first..first + 2]
        .iter()
        .map(|l| &l[l.find("│ ").unwrap() + 4..])
        .collect();
    assert_eq!(rows.concat(), text_in);
    for row in &rows {
        assert!(text::width(row) <= 33, "{row}");
    }
    assert_eq!(
        text::width(rows[0]),
        32,
        "a wide character that does not fit goes to the next row"
    );
    // The terminal buffer agrees: the first row's wide characters each cover two cells.
    let y = first as u16;
    let x = screen[first]
        .find("日")
        .map(|i| text::width(&screen[first][..i]) as u16)
        .unwrap();
    assert_eq!(buffer[(x, y)].symbol(), "日");
    assert_eq!(buffer[(x + 2, y)].symbol(), "本");
    // The input line scrolls by width too, and the cursor lands after the last glyph.
    type_line(&mut app, "");
    for c in "これは長い入力行です、とても長い入力行です".chars() {
        input::handle(&mut app, key(KeyCode::Char(c)));
    }
    let mut terminal = Terminal::new(TestBackend::new(40, 15)).unwrap();
    terminal
        .draw(|f| render::draw(f, &app, &Theme { color: true }))
        .unwrap();
    let input_row = lines(terminal.backend().buffer())[13].clone();
    assert!(input_row.ends_with("とても長い入力行です"), "{input_row}");
    let cursor = terminal.get_cursor_position().unwrap();
    assert_eq!((cursor.y, cursor.x as usize), (13, text::width(&input_row)));
}

#[test]
fn scrollback_pages_up_then_asks_for_older_messages() {
    let mut app = app(80, 24);
    join(&mut app, "#log", &[("alice", true), ("bob", true)]);
    // The first page, as the join asked for it.
    let page = (101..=200)
        .map(|id| room_msg("#log", id, "bob", &format!("line {id}")))
        .collect();
    app.apply(Update::History {
        conv: ConvKey::Room("#log".into()),
        events: page,
        asked: 100,
    });
    let screen0 = screen(&app);
    assert!(screen0[21].ends_with("line 200"));
    // 21 rows of messages: a page is 20.
    assert!(app.page_up().is_empty());
    let screen1 = screen(&app);
    assert!(
        screen1[21].contains("more below: PageDown"),
        "{}",
        screen1[21]
    );
    assert!(screen1[20].ends_with("line 180"), "{}", screen1[20]);
    // To the top: then the page before the oldest message is asked for, once.
    let mut asked = Vec::new();
    for _ in 0..10 {
        asked.extend(app.page_up());
    }
    assert_eq!(
        asked,
        [Action::History {
            conv: ConvKey::Room("#log".into()),
            before: Some(101),
            limit: 50
        }]
    );
    let top = screen(&app);
    assert!(top[1].contains("loading older messages"), "{}", top[1]);
    let at = find(&top, "line 101");
    assert!(at <= 3, "{}", top.join("\n"));
    // The page arrives above: what is on screen stays put.
    let older = (51..=100)
        .map(|id| room_msg("#log", id, "bob", &format!("line {id}")))
        .collect();
    app.apply(Update::History {
        conv: ConvKey::Room("#log".into()),
        events: older,
        asked: 50,
    });
    let after = screen(&app);
    assert!(after[at].ends_with("line 101"), "{}", after.join("\n"));
    // The next page: its last row is the row that was at the top (line 99).
    assert!(after[1].ends_with("line 99"), "{}", after[1]);
    app.page_up();
    assert!(screen(&app)[21].contains("more below"));
    assert!(
        screen(&app)[20].ends_with("line 99"),
        "{}",
        screen(&app)[20]
    );
    // New messages while scrolled up are counted, not jumped to.
    app.apply(Update::Message(room_msg("#log", 201, "bob", "line 201")));
    let held = screen(&app);
    assert!(held[20].ends_with("line 99"), "{}", held[20]);
    assert!(held[21].contains("1 new below"), "{}", held[21]);
    // The mouse wheel and PageDown come back down.
    input::handle(
        &mut app,
        TermEvent::Mouse(crossterm::event::MouseEvent {
            kind: crossterm::event::MouseEventKind::ScrollDown,
            column: 40,
            row: 10,
            modifiers: KeyModifiers::NONE,
        }),
    );
    for _ in 0..20 {
        app.page_down();
    }
    let bottom = screen(&app);
    assert!(bottom[21].ends_with("line 201"), "{}", bottom[21]);
}

#[test]
fn a_sent_message_is_pending_until_stored_or_refused() {
    let mut app = app(80, 24);
    join(&mut app, "#general", &[("alice", true)]);
    let actions = type_line(&mut app, "hello there");
    let [Action::Send {
        conv,
        local,
        text,
        time,
    }] = actions.as_slice()
    else {
        panic!("{actions:?}")
    };
    assert_eq!(
        (conv, text.as_str()),
        (&ConvKey::Room("#general".into()), "hello there")
    );
    let row = find(&screen(&app), "hello there");
    assert!(screen(&app)[row].ends_with("alice │ hello there (sending…)"));
    app.apply(Update::Sent {
        conv: conv.clone(),
        local: *local,
        result: Ok(()),
    });
    assert!(
        screen(&app)[row].ends_with("alice │ hello there"),
        "{}",
        screen(&app)[row]
    );

    // A refusal says why, on the message.
    let actions = type_line(&mut app, "too fast");
    let [Action::Send { local: second, .. }] = actions.as_slice() else {
        panic!()
    };
    app.apply(Update::Sent {
        conv: conv.clone(),
        local: *second,
        result: Err("too many messages too fast: not sent".into()),
    });
    let s = screen(&app);
    let row = find(&s, "too fast");
    assert!(s[row].ends_with("alice │ too fast"), "{}", s[row]);
    assert!(
        s[row + 1].ends_with("│ (not sent: too many messages too fast: not sent)"),
        "{}",
        s[row + 1]
    );

    // The stored message, met again in a history page (found by its time), is not doubled.
    let mut own = room_msg("#general", 9, "alice", "hello there");
    own.time = *time;
    app.apply(Update::History {
        conv: conv.clone(),
        events: vec![own],
        asked: 50,
    });
    let s = screen(&app);
    assert_eq!(s.iter().filter(|l| l.contains("hello there")).count(), 1);
    let conv_index = app.find(conv).unwrap();
    let stored = app.convs[conv_index].entries.iter().find_map(|e| match e {
        Entry::Msg(m) if m.text == "hello there" => Some(m.clone()),
        _ => None,
    });
    assert_eq!(
        stored.map(|m| (m.id, m.status)),
        Some((Some(9), Delivery::Stored))
    );
}

#[test]
fn messages_go_in_order_once_with_unread_counts_and_a_new_line() {
    let mut app = app(80, 24);
    join(&mut app, "#a", &[("alice", true), ("bob", true)]);
    join(&mut app, "#b", &[("alice", true), ("bob", true)]);
    // In #b; #a gets two messages, one of them twice, one naming alice.
    app.apply(Update::Message(room_msg("#a", 2, "bob", "second")));
    app.apply(Update::Message(room_msg("#a", 2, "bob", "second")));
    app.apply(Update::Message(room_msg("#a", 3, "bob", "alice: look")));
    let a = app.find(&ConvKey::Room("#a".into())).unwrap();
    assert_eq!(app.convs[a].unread, 2);
    assert!(app.convs[a].mentioned);
    // An older one arriving late goes in its place.
    app.apply(Update::History {
        conv: ConvKey::Room("#a".into()),
        events: vec![room_msg("#a", 1, "bob", "first")],
        asked: 50,
    });
    let actions = app.select(a);
    assert!(actions.contains(&Action::Members("#a".into())));
    assert_eq!(app.convs[a].unread, 0);
    let s = screen(&app);
    let (first, new, second, look) = (
        find(&s, "first"),
        find(&s, "new messages"),
        find(&s, "second"),
        find(&s, "look"),
    );
    assert!(
        first < new && new < second && second < look,
        "{}",
        s.join("\n")
    );
    assert_eq!(s.iter().filter(|l| l.contains("second")).count(), 1);
    // Leaving the conversation takes the line away.
    app.next_conv(1);
    app.select(a);
    assert!(!screen(&app).iter().any(|l| l.contains("new messages")));
}

#[test]
fn the_status_line_follows_the_connection() {
    let mut app = app(80, 24);
    app.apply(Update::Link(LinkStatus::Offline {
        attempt: 2,
        retry_in: std::time::Duration::from_millis(4000),
        reason: "connection refused".into(),
    }));
    assert!(screen(&app)[23].starts_with(" reconnecting in 4s (attempt 2): connection refused"));
    app.tick(NOW + 1500);
    assert!(screen(&app)[23].starts_with(" reconnecting in 3s"));
    assert!(find(&screen(&app), "disconnected: connection refused") > 0);
    let actions = app.apply(Update::Link(LinkStatus::Online));
    assert_eq!(app.conn, ConnState::Online);
    assert!(actions.contains(&Action::Rooms));
    assert!(screen(&app)[23].starts_with(" online"));
    assert!(find(&screen(&app), "connected again") > 0);
}

#[test]
fn no_color_leaves_only_modifiers() {
    let mut app = app(80, 24);
    join(&mut app, "#general", &[("alice", true), ("bob", true)]);
    app.apply(Update::Message(room_msg("#general", 1, "bob", "hi")));
    let coloured = draw(&app, Theme { color: true });
    let plain = draw(&app, Theme { color: false });
    let colours = |b: &Buffer| {
        b.content()
            .iter()
            .filter(|c| c.fg != Color::Reset || c.bg != Color::Reset)
            .count()
    };
    assert!(colours(&coloured) > 0);
    assert_eq!(colours(&plain), 0);
    // Never a background colour, in either: they clash with one of light or dark.
    assert!(coloured.content().iter().all(|c| c.bg == Color::Reset));
    assert_eq!(lines(&coloured), lines(&plain));
}

#[test]
fn resizing_keeps_the_view_in_bounds() {
    let mut app = app(80, 24);
    join(&mut app, "#r", &[("alice", true)]);
    for id in 1..=30 {
        app.apply(Update::Message(room_msg(
            "#r",
            id,
            "bob",
            &format!("message {id} with some words to wrap"),
        )));
    }
    for _ in 0..5 {
        app.page_up();
    }
    input::handle(&mut app, TermEvent::Resize(40, 15));
    let s = screen(&app);
    assert_eq!(s.len(), 15);
    assert!(s.iter().all(|l| text::width(l) <= 40));
    input::handle(&mut app, TermEvent::Resize(200, 60));
    let s = screen(&app);
    assert_eq!(s.len(), 60);
    assert!(find(&s, "message 1 with") > 0);
}

#[test]
fn tab_completes_commands_and_names_and_cycles() {
    let mut app = app(80, 24);
    join(
        &mut app,
        "#general",
        &[("alice", true), ("albert", true), ("bob", false)],
    );
    for c in "/jo".chars() {
        input::handle(&mut app, key(KeyCode::Char(c)));
    }
    input::handle(&mut app, key(KeyCode::Tab));
    assert_eq!(app.editor.text(), "/join ");
    input::handle(
        &mut app,
        TermEvent::Key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL)),
    );
    for c in "al".chars() {
        input::handle(&mut app, key(KeyCode::Char(c)));
    }
    input::handle(&mut app, key(KeyCode::Tab));
    assert_eq!(app.editor.text(), "albert: ");
    input::handle(&mut app, key(KeyCode::Tab));
    assert_eq!(app.editor.text(), "alice: ");
    input::handle(&mut app, key(KeyCode::Esc));
    assert_eq!(app.editor.text(), "al");
}

#[test]
fn commands_ask_the_network() {
    let mut app = app(80, 24);
    assert_eq!(
        type_line(&mut app, "/join dev"),
        [Action::Join("#dev".into())]
    );
    join(&mut app, "#dev", &[("alice", true)]);
    assert_eq!(
        type_line(&mut app, "/leave"),
        [Action::Leave("#dev".into())]
    );
    let actions = type_line(&mut app, "/dm bob hi");
    assert!(
        matches!(&actions[..], [Action::History { .. }, Action::Watch(w), Action::FindUser(u), Action::Send { text, .. }] if *w == ["bob"] && u == "bob" && text == "hi"),
        "{actions:?}"
    );
    assert_eq!(app.conv().key, ConvKey::Direct("bob".into()));
    assert_eq!(
        type_line(&mut app, "/contacts"),
        [Action::Contacts { show: true }]
    );
    assert_eq!(
        type_line(&mut app, "/decline eve"),
        [Action::ContactAnswer {
            user: "eve".into(),
            accept: false
        }]
    );
    assert_eq!(type_line(&mut app, "/quit"), [Action::Quit]);
    assert!(app.quit);
}

#[test]
fn get_downloads_the_latest_file_message_to_a_free_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = App::new("alice", "laptop", "x", dir.path().to_path_buf(), NOW);
    app.resize(80, 24);
    app.apply(Update::Link(LinkStatus::Online));
    join(&mut app, "#f", &[("alice", true)]);
    let sha = "ab".repeat(32);
    let file = format!("[file name=\"notes.txt\" size=12 type=text/plain sha256={sha}] read me");
    app.apply(Update::Message(room_msg("#f", 1, "bob", &file)));
    let s = screen(&app);
    assert!(s[find(&s, "[file]")].ends_with("[file] notes.txt (12 B, text/plain) — read me"));
    std::fs::write(dir.path().join("notes.txt"), "taken").unwrap();
    let actions = type_line(&mut app, "/get");
    let [Action::Download { file, dest, .. }] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    assert_eq!(
        (file.name.as_str(), file.size, file.sha256.as_str()),
        ("notes.txt", 12, sha.as_str())
    );
    assert_eq!(dest, &dir.path().join("notes (1).txt"));
    assert!(type_line(&mut app, "/get other.pdf").is_empty());
}

#[test]
fn a_line_feed_sends_like_enter() {
    // What was typed before the terminal went raw arrives with \n, which reads as Ctrl-J.
    let mut app = app(80, 24);
    for c in "/join x".chars() {
        input::handle(&mut app, key(KeyCode::Char(c)));
    }
    let ctrl_j = TermEvent::Key(KeyEvent::new(KeyCode::Char('j'), KeyModifiers::CONTROL));
    assert_eq!(input::handle(&mut app, ctrl_j), [Action::Join("#x".into())]);
    assert_eq!(app.editor.text(), "");
}

#[test]
fn presence_is_watched_for_what_is_on_screen_and_pushed() {
    let mut app = app(80, 24);
    app.apply(Update::Joined("#r".into()));
    // The room's members are watched (not polled), the user themself left out.
    let actions = app.apply(Update::Members {
        room: "#r".into(),
        members: members(&[("alice", true), ("bob", false)]),
    });
    assert_eq!(actions, [Action::Watch(vec!["bob".into()])]);
    // Nothing is asked for as time goes by.
    assert!(app.tick(NOW + 60_000).is_empty());
    // The same list again is no new watch.
    let again = app.apply(Update::Members {
        room: "#r".into(),
        members: members(&[("alice", true), ("bob", false)]),
    });
    assert!(again.is_empty(), "{again:?}");
    // A push says bob came online: the member list shows it.
    let online = |on| {
        Update::Users(vec![UserEntry {
            name: b("bob"),
            online: on,
            last_seen: if on { 0 } else { NOW },
        }])
    };
    app.apply(online(true));
    let conv = app.find(&ConvKey::Room("#r".into())).unwrap();
    assert!(app.convs[conv]
        .members
        .iter()
        .any(|m| m.name == "bob" && m.online));
    // Another conversation open: its peer is watched (what is on screen), and shows as
    // online from the push.
    app.apply(Update::Message(dm(1, "carol", "alice", "hi")));
    let carol = app.find(&ConvKey::Direct("carol".into())).unwrap();
    let actions = app.select(carol);
    assert!(
        actions.contains(&Action::Watch(vec!["carol".into()])),
        "{actions:?}"
    );
    app.apply(Update::Users(vec![UserEntry {
        name: b("carol"),
        online: true,
        last_seen: 0,
    }]));
    assert!(
        screen(&app)[0].contains("carol  ● online"),
        "{}",
        screen(&app)[0]
    );
    // bob goes: the room's list says so at once.
    app.apply(online(false));
    assert!(app.convs[conv]
        .members
        .iter()
        .any(|m| m.name == "bob" && !m.online));
}

#[test]
fn a_refused_token_says_how_to_go_on_where_the_user_looks() {
    let mut app = app(80, 24);
    join(&mut app, "#r", &[("alice", true)]);
    app.apply(Update::Link(LinkStatus::Stopped(crate::Error::Refused(
        parley_proto::binary::code::UNAUTHORIZED,
    ))));
    let s = screen(&app);
    assert!(s[find(&s, "offline: wrong name or password")].contains("!! │"));
    assert!(
        s.join("\n").contains("to log in with the password"),
        "{}",
        s.join("\n")
    );
    assert!(
        s[23].starts_with(" offline: wrong name or password"),
        "{}",
        s[23]
    );
}
