//! What the input line says: plain text for the current conversation, or a slash command
//! (with irssi's and weechat's aliases), and what Tab completes at the cursor.

/// One command: its name, aliases, arguments, and a line of help.
pub struct Spec {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub args: &'static str,
    pub help: &'static str,
}

/// Every command, in the order `/help` lists them.
pub const COMMANDS: &[Spec] = &[
    Spec {
        name: "join",
        aliases: &["j"],
        args: "#room",
        help: "join a room (created if new; a # is added if missing) and open it",
    },
    Spec {
        name: "leave",
        aliases: &["part"],
        args: "[#room]",
        help: "leave the current room (or the one named)",
    },
    Spec {
        name: "dm",
        aliases: &["msg", "query"],
        args: "user [text]",
        help: "open the direct conversation with a user (and send text)",
    },
    Spec {
        name: "close",
        aliases: &[],
        args: "",
        help: "close the current direct conversation (it comes back with a new message)",
    },
    Spec {
        name: "who",
        aliases: &["names"],
        args: "",
        help: "who is in this room and who is online (everyone, outside a room)",
    },
    Spec {
        name: "rooms",
        aliases: &["list"],
        args: "",
        help: "every room on the server, with members and how many are online",
    },
    Spec {
        name: "contacts",
        aliases: &[],
        args: "[add|accept|decline|remove user]",
        help: "list contacts and requests, or ask, accept, decline, remove",
    },
    Spec {
        name: "accept",
        aliases: &[],
        args: "user",
        help: "accept a contact request (= /contacts accept user)",
    },
    Spec {
        name: "decline",
        aliases: &[],
        args: "user",
        help: "decline a contact request (= /contacts decline user)",
    },
    Spec {
        name: "send",
        aliases: &["upload"],
        args: "PATH [caption]",
        help: "send a file to this conversation (SHA-256 checked by the server)",
    },
    Spec {
        name: "get",
        aliases: &["download"],
        args: "[N|name]",
        help: "download the latest file here (or the Nth latest, or by name); resumes if cut",
    },
    Spec {
        name: "history",
        aliases: &[],
        args: "[N]",
        help: "load N older messages (default 50); PageUp at the top does the same",
    },
    Spec {
        name: "help",
        aliases: &["h"],
        args: "",
        help: "this list, and the keys",
    },
    Spec {
        name: "quit",
        aliases: &["exit", "q"],
        args: "",
        help: "leave parley chat (rooms stay joined; the device keeps its place)",
    },
];

/// The keys, for `/help`.
pub const KEYS: &[(&str, &str)] = &[
    ("Enter", "send the line"),
    (
        "Tab / Shift-Tab",
        "complete a command, room, user or path; again for the next",
    ),
    ("Up / Down", "lines sent before"),
    (
        "Left Right Home End",
        "move (Ctrl-A/Ctrl-E, Alt-B/Alt-F by word)",
    ),
    (
        "Ctrl-W Alt-D Ctrl-U Ctrl-K",
        "delete word back/forward, to start/end",
    ),
    (
        "PageUp / PageDown",
        "scroll; PageUp at the top loads older messages",
    ),
    ("mouse wheel", "scroll"),
    (
        "Ctrl-N / Ctrl-P, Alt-Up/Down",
        "next / previous conversation",
    ),
    ("Alt-1..9", "go to conversation 1..9"),
    ("Ctrl-L", "redraw"),
    ("Ctrl-C, Ctrl-D", "quit (Ctrl-D on an empty line)"),
];

/// A parsed input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Nothing to do (an empty line).
    Nothing,
    /// Text for the current conversation.
    Text(String),
    Command(Command),
    /// A command that cannot run as typed: what to tell the user.
    Usage(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Join(String),
    Leave(Option<String>),
    Dm { user: String, text: Option<String> },
    Close,
    Who,
    Rooms,
    Contacts,
    ContactAdd(String),
    ContactAnswer { user: String, accept: bool },
    ContactRemove(String),
    Send { path: String, caption: String },
    Get(Option<String>),
    History(u16),
    Help,
    Quit,
}

/// The spec for a name or alias.
pub fn find(word: &str) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|s| s.name == word || s.aliases.contains(&word))
}

/// `#name` for a room name typed with or without its `#`.
pub fn room_name(s: &str) -> String {
    if s.starts_with('#') {
        s.to_string()
    } else {
        format!("#{s}")
    }
}

/// Reads an input line.
pub fn parse(line: &str) -> Input {
    let line = line.trim_end();
    if line.trim().is_empty() {
        return Input::Nothing;
    }
    // `//text` sends `/text`; a lone `/` or `/ text` is text too.
    if let Some(rest) = line.strip_prefix("//") {
        return Input::Text(format!("/{rest}"));
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Input::Text(line.to_string());
    };
    let (word, args) = match rest.split_once(char::is_whitespace) {
        Some((w, a)) => (w, a.trim()),
        None => (rest, ""),
    };
    if word.is_empty() {
        return Input::Text(line.to_string());
    }
    let Some(spec) = find(&word.to_lowercase()) else {
        return Input::Usage(format!(
            "unknown command /{word} (/help lists them; //{word} sends it as text)"
        ));
    };
    let usage = || Input::Usage(format!("usage: /{} {}", spec.name, spec.args));
    let mut words = args.split_whitespace();
    let first = words.next();
    let command = match spec.name {
        "join" => match first {
            Some(room) if words.next().is_none() => Command::Join(room_name(room)),
            _ => return usage(),
        },
        "leave" => Command::Leave(first.map(room_name)),
        "dm" => match first {
            Some(user) => {
                let text = args[user.len()..].trim();
                Command::Dm {
                    user: user.trim_start_matches('@').to_string(),
                    text: (!text.is_empty()).then(|| text.to_string()),
                }
            }
            None => return usage(),
        },
        "close" => Command::Close,
        "who" => Command::Who,
        "rooms" => Command::Rooms,
        "contacts" => match (first, words.next(), words.next()) {
            (None, ..) | (Some("list"), None, _) => Command::Contacts,
            (Some(action), Some(user), None) => match action {
                "add" | "request" => Command::ContactAdd(user.to_string()),
                "accept" => Command::ContactAnswer {
                    user: user.to_string(),
                    accept: true,
                },
                "decline" => Command::ContactAnswer {
                    user: user.to_string(),
                    accept: false,
                },
                "remove" | "del" => Command::ContactRemove(user.to_string()),
                _ => return usage(),
            },
            _ => return usage(),
        },
        "accept" | "decline" => match (first, words.next()) {
            (Some(user), None) => Command::ContactAnswer {
                user: user.to_string(),
                accept: spec.name == "accept",
            },
            _ => return usage(),
        },
        "send" => match split_path(args) {
            Some((path, caption)) => Command::Send {
                path,
                caption: caption.to_string(),
            },
            None => return usage(),
        },
        "get" => Command::Get((!args.is_empty()).then(|| args.to_string())),
        "history" => match first.map(str::parse::<u16>) {
            None => Command::History(50),
            Some(Ok(n)) if n > 0 => Command::History(n),
            _ => return usage(),
        },
        "help" => Command::Help,
        "quit" => Command::Quit,
        _ => return usage(),
    };
    Input::Command(command)
}

/// A path (quoted with `"` if it has spaces, or with `\ ` escapes) and the rest.
fn split_path(args: &str) -> Option<(String, &str)> {
    let args = args.trim_start();
    if args.is_empty() {
        return None;
    }
    if let Some(rest) = args.strip_prefix('"') {
        let (path, rest) = rest.split_once('"')?;
        return Some((expand_home(path), rest.trim()));
    }
    let mut path = String::new();
    let mut chars = args.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, next)) = chars.next() {
                    path.push(next);
                }
            }
            c if c.is_whitespace() => return Some((expand_home(&path), args[i..].trim())),
            c => path.push(c),
        }
    }
    Some((expand_home(&path), ""))
}

/// `~/x` as `$HOME/x`.
pub fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => path.to_string(),
    }
}

/// What completion can offer, from what the client knows.
#[derive(Debug, Default)]
pub struct Names<'a> {
    /// Every room on the server (from the last listing).
    pub rooms: Vec<&'a str>,
    /// Rooms this user is in.
    pub joined: Vec<&'a str>,
    /// Every user known (listing, members, senders).
    pub users: Vec<&'a str>,
    /// Members of the current room.
    pub members: Vec<&'a str>,
    /// Users whose contact requests wait for an answer.
    pub pending: Vec<&'a str>,
}

/// Candidates for the word `word` at the end of `before` (the line up to the cursor, the
/// word included), sorted; a nick at the start of a line gets irssi's `: `.
pub fn complete(before: &str, word: &str, names: &Names<'_>) -> Vec<String> {
    let preceding: Vec<&str> = before[..before.len() - word.len()]
        .split_whitespace()
        .collect();
    let starts = |list: &[&str], prefix: &str| -> Vec<String> {
        let mut out: Vec<String> = list
            .iter()
            .filter(|n| n.starts_with(prefix))
            .map(|n| n.to_string())
            .collect();
        out.sort();
        out.dedup();
        out
    };
    match preceding.as_slice() {
        [] if word.starts_with('/') => {
            let mut out: Vec<String> = COMMANDS
                .iter()
                .flat_map(|s| std::iter::once(s.name).chain(s.aliases.iter().copied()))
                .filter(|n| n.starts_with(&word[1..]))
                .map(|n| format!("/{n} "))
                .collect();
            out.sort();
            out.dedup();
            out
        }
        [] => starts(&names.members, word)
            .into_iter()
            .map(|n| format!("{n}: "))
            .collect(),
        [cmd, rest @ ..] if cmd.starts_with('/') => {
            let Some(spec) = find(&cmd[1..].to_lowercase()) else {
                return Vec::new();
            };
            match (spec.name, rest) {
                ("join", []) => {
                    let typed = room_name(word);
                    let mut rooms = starts(&names.rooms, &typed);
                    if word.is_empty() {
                        rooms = starts(&names.rooms, "");
                    }
                    rooms
                }
                ("leave", []) => starts(&names.joined, &room_name(word)),
                ("dm", []) => starts(&names.users, word),
                ("accept" | "decline", []) => starts(&names.pending, word),
                ("contacts", []) => starts(&["add", "accept", "decline", "remove", "list"], word),
                ("contacts", ["accept" | "decline"]) => starts(&names.pending, word),
                ("contacts", [_]) => starts(&names.users, word),
                ("send", []) => paths(word),
                _ => starts(&names.members, word),
            }
        }
        _ => starts(&names.members, word),
    }
}

/// Files and directories starting with `word` (directories end in `/`).
fn paths(word: &str) -> Vec<String> {
    let expanded = expand_home(word);
    let (dir, prefix) = match expanded.rfind('/') {
        Some(i) => (&expanded[..=i], &expanded[i + 1..]),
        None => ("", expanded.as_str()),
    };
    let shown_dir = match word.rfind('/') {
        Some(i) => &word[..=i],
        None => "",
    };
    let Ok(entries) = std::fs::read_dir(if dir.is_empty() { "." } else { dir }) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .take(10_000)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(prefix) || (name.starts_with('.') && !prefix.starts_with('.')) {
                return None;
            }
            let slash = if e.path().is_dir() { "/" } else { "" };
            Some(format!("{shown_dir}{}{slash}", name.replace(' ', "\\ ")))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(line: &str) -> Command {
        match parse(line) {
            Input::Command(c) => c,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    #[test]
    fn plain_text_and_escapes() {
        assert_eq!(parse("hello"), Input::Text("hello".into()));
        assert_eq!(parse("//me waves"), Input::Text("/me waves".into()));
        assert_eq!(parse("   "), Input::Nothing);
        assert!(matches!(parse("/frobnicate"), Input::Usage(_)));
    }

    #[test]
    fn commands_and_aliases() {
        assert_eq!(command("/join dev"), Command::Join("#dev".into()));
        assert_eq!(command("/j #dev"), Command::Join("#dev".into()));
        assert_eq!(command("/part"), Command::Leave(None));
        assert_eq!(
            command("/msg bob hi there"),
            Command::Dm {
                user: "bob".into(),
                text: Some("hi there".into())
            }
        );
        assert_eq!(command("/contacts"), Command::Contacts);
        assert_eq!(
            command("/contacts decline eve"),
            Command::ContactAnswer {
                user: "eve".into(),
                accept: false
            }
        );
        assert_eq!(
            command("/accept eve"),
            Command::ContactAnswer {
                user: "eve".into(),
                accept: true
            }
        );
        assert_eq!(command("/history"), Command::History(50));
        assert_eq!(command("/history 10"), Command::History(10));
        assert_eq!(command("/QUIT"), Command::Quit);
        assert!(matches!(parse("/join"), Input::Usage(u) if u.contains("/join #room")));
    }

    #[test]
    fn send_paths_with_spaces() {
        assert_eq!(
            command("/send \"my file.txt\" look"),
            Command::Send {
                path: "my file.txt".into(),
                caption: "look".into()
            }
        );
        assert_eq!(
            command("/send my\\ file.txt"),
            Command::Send {
                path: "my file.txt".into(),
                caption: "".into()
            }
        );
    }

    #[test]
    fn completion_by_context() {
        let names = Names {
            rooms: vec!["#dev", "#design", "#ops"],
            joined: vec!["#dev"],
            users: vec!["alice", "albert", "bob"],
            members: vec!["alice", "bob"],
            pending: vec!["eve"],
        };
        assert_eq!(complete("/jo", "/jo", &names), ["/join "]);
        assert_eq!(complete("/join de", "de", &names), ["#design", "#dev"]);
        assert_eq!(complete("/dm al", "al", &names), ["albert", "alice"]);
        assert_eq!(complete("/accept ", "", &names), ["eve"]);
        assert_eq!(complete("al", "al", &names), ["alice: "]);
        assert_eq!(complete("hi b", "b", &names), ["bob"]);
    }
}
