//! The text protocol's command parser on any line: it never panics, a parsed name or room
//! is one non-empty word (a DM's or SAY's: up to the first space), a message's text is
//! never blank, and `one_line` leaves no control
//! character (no forged second line).

#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_proto::text::{self, TextCommand};

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        check(&text::parse(&line));
        let flat = text::one_line(&line);
        assert!(!flat.chars().any(char::is_control), "{flat:?}");
        assert_eq!(flat.chars().count(), line.chars().count());
    }
});

fn word(w: &str) {
    assert!(!w.is_empty() && !w.contains(char::is_whitespace), "{w:?}");
}

fn check(command: &TextCommand) {
    match command {
        TextCommand::Login { name } | TextCommand::Register { name, .. } => word(name),
        TextCommand::PasswordLogin {
            name,
            password,
            device,
        } => {
            word(name);
            word(password);
            if let Some(device) = device {
                word(device);
            }
        }
        TextCommand::Dm { to, text } | TextCommand::Say { room: to, text } => {
            // Split at the first space (a tab is part of the name, which is then refused).
            assert!(!to.is_empty() && !to.contains(' '), "{command:?}");
            assert!(!text.trim().is_empty(), "{command:?}");
        }
        TextCommand::Broadcast { text } => assert!(!text.trim().is_empty(), "{command:?}"),
        TextCommand::Join { rooms } | TextCommand::Leave { rooms } => {
            assert!(!rooms.is_empty());
            rooms.iter().for_each(|r| word(r));
        }
        TextCommand::SlashNick { name: w }
        | TextCommand::SlashJoin { room: w }
        | TextCommand::Members { room: w }
        | TextCommand::Search { prefix: w }
        | TextCommand::Resume { token: w } => word(w),
        TextCommand::History { target, limit, .. } => {
            word(target);
            assert_ne!(*limit, Some(0));
        }
        _ => {}
    }
}
