//! The text protocol a person types into `ncat` or `telnet`.
//!
//! One line per command. Two dialects share it: seed 002's words (`LOGIN`, `MSG`, `DM`,
//! `WHO`, `PING`, answered `OK` / `ERR <reason>`) and seed 004's slash commands (`/nick`,
//! `/join`, `/rooms`, `/msg`, `/quit`, answered with `> ` lines, errors with `err: `).
//! parley's own commands (`JOIN`, `LEAVE`, `ROOMS`, `SAY`, `HISTORY`, `HELP`, `QUIT`) follow
//! seed 002's style. Command words are case-insensitive. As in seed 002, the white space
//! around a message's text (after `MSG`, after `DM`'s or `SAY`'s target) is not part of it;
//! the spaces inside it are.

use crate::ErrorKind;

/// A parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextCommand {
    /// Password-less (seed 002).
    Login {
        name: String,
    },
    PasswordLogin {
        name: String,
        password: String,
        device: Option<String>,
    },
    Register {
        name: String,
        password: String,
    },
    /// Issue a device token (after a password login).
    Token,
    /// Log in with a device token.
    Resume {
        token: String,
    },
    Passwd {
        old: String,
        new: String,
    },
    Logout {
        all: bool,
    },
    Profile {
        name: Option<String>,
    },
    SetName {
        display_name: String,
    },
    /// Seed 002 `MSG`: to every other online user.
    Broadcast {
        text: String,
    },
    Dm {
        to: String,
        text: String,
    },
    Who,
    Ping,
    Join {
        rooms: Vec<String>,
    },
    Leave {
        rooms: Vec<String>,
    },
    /// A page of the rooms: those after `after` (the last name of the page before).
    Rooms {
        after: Option<String>,
    },
    Say {
        room: String,
        text: String,
    },
    History {
        target: String,
        limit: Option<usize>,
        /// Only messages before (`true`) or after (`false`) this sequence number.
        around: Option<(bool, i64)>,
    },
    /// A page of the users with presence: those after `after`.
    Users {
        after: Option<String>,
    },
    Search {
        prefix: String,
    },
    /// `CONTACT ADD|ACCEPT|DECLINE|REMOVE <name>`.
    Contact {
        action: String,
        name: String,
    },
    Contacts,
    Members {
        room: String,
    },
    /// `TOPIC <room> [<text>]`: sets (or, without text, clears) a room's topic.
    Topic {
        room: String,
        topic: String,
    },
    /// `INVITEONLY <room> on|off`.
    InviteOnly {
        room: String,
        on: bool,
    },
    /// `INVITE|KICK|BAN|UNBAN|MUTE|UNMUTE|OP|DEOP <room> <user>`: `action` is the word in
    /// lower case.
    Moderate {
        action: String,
        room: String,
        user: String,
    },
    /// `DESTROY <room>`: deletes the room (its owner).
    Destroy {
        room: String,
    },
    /// `ROOMINFO <room>`: topic, mode, owner, operators, bans, mutes, the asker's rank.
    RoomInfo {
        room: String,
    },
    /// `DELETE <room|user|*> <seq>`: deletes a message.
    Delete {
        target: String,
        seq: i64,
    },
    /// `BLOCK <user>` (`on`) or `UNBLOCK <user>`.
    Block {
        user: String,
        on: bool,
    },
    Blocks,
    Help,
    Quit,
    SlashNick {
        name: String,
    },
    SlashJoin {
        room: String,
    },
    SlashRooms,
    SlashMsg {
        text: String,
    },
    SlashQuit,
    /// A blank line: ignored.
    Empty,
    /// A known command with missing or bad arguments: the line to answer with.
    Usage(&'static str),
    /// An unknown command (seed 002: `ERR unknown-cmd`; slash: `err: unknown command: X`).
    Unknown {
        word: String,
        slash: bool,
    },
}

/// Parses one line (without its terminator).
pub fn parse(line: &str) -> TextCommand {
    let line = line.trim_start();
    if line.trim().is_empty() {
        return TextCommand::Empty;
    }
    let (word, rest) = split_word(line);
    let lower = word.to_ascii_lowercase();
    if lower.starts_with('/') {
        return parse_slash(&lower, word, rest);
    }
    match lower.as_str() {
        "login" => match words(rest).as_slice() {
            [name] => TextCommand::Login {
                name: name.to_string(),
            },
            [name, password] => TextCommand::PasswordLogin {
                name: name.to_string(),
                password: password.to_string(),
                device: None,
            },
            [name, password, device] => TextCommand::PasswordLogin {
                name: name.to_string(),
                password: password.to_string(),
                device: Some(device.to_string()),
            },
            _ => TextCommand::Usage("ERR usage: LOGIN <username> [<password> [<device>]]"),
        },
        "register" => match words(rest).as_slice() {
            [name, password] => TextCommand::Register {
                name: name.to_string(),
                password: password.to_string(),
            },
            _ => TextCommand::Usage("ERR usage: REGISTER <username> <password>"),
        },
        "token" => TextCommand::Token,
        // STATE is seed 003's name for "is this device's token logged in".
        "resume" | "state" => match words(rest).as_slice() {
            [token] => TextCommand::Resume {
                token: token.to_string(),
            },
            _ => TextCommand::Usage("ERR usage: RESUME <token>"),
        },
        "passwd" => match words(rest).as_slice() {
            [old, new] => TextCommand::Passwd {
                old: old.to_string(),
                new: new.to_string(),
            },
            _ => TextCommand::Usage("ERR usage: PASSWD <old> <new>"),
        },
        "logout" => match words(rest).as_slice() {
            [] => TextCommand::Logout { all: false },
            [all] if all.eq_ignore_ascii_case("all") => TextCommand::Logout { all: true },
            _ => TextCommand::Usage("ERR usage: LOGOUT [ALL]"),
        },
        "profile" => match words(rest).as_slice() {
            [] => TextCommand::Profile { name: None },
            [name] => TextCommand::Profile {
                name: Some(name.to_string()),
            },
            _ => TextCommand::Usage("ERR usage: PROFILE [<username>]"),
        },
        "setname" if !rest.trim().is_empty() => TextCommand::SetName {
            display_name: rest.trim().to_string(),
        },
        "setname" => TextCommand::Usage("ERR usage: SETNAME <display name>"),
        "msg" if !rest.trim().is_empty() => TextCommand::Broadcast {
            text: rest.trim().to_string(),
        },
        "msg" => TextCommand::Usage("ERR usage: MSG <text>"),
        "dm" => {
            let (to, text) = split_word(rest.trim_start());
            if to.is_empty() || text.trim().is_empty() {
                TextCommand::Usage("ERR usage: DM <username> <text>")
            } else {
                TextCommand::Dm {
                    to: to.to_string(),
                    text: text.trim().to_string(),
                }
            }
        }
        "who" => TextCommand::Who,
        "ping" => TextCommand::Ping,
        "join" | "leave" => {
            let rooms: Vec<String> = words(rest).iter().map(|r| r.to_string()).collect();
            match (lower.as_str(), rooms.is_empty()) {
                ("join", true) => TextCommand::Usage("ERR usage: JOIN <room> [<room> ...]"),
                ("join", false) => TextCommand::Join { rooms },
                (_, true) => TextCommand::Usage("ERR usage: LEAVE <room> [<room> ...]"),
                (_, false) => TextCommand::Leave { rooms },
            }
        }
        "rooms" => match words(rest).as_slice() {
            [] => TextCommand::Rooms { after: None },
            [after] => TextCommand::Rooms {
                after: Some(after.to_string()),
            },
            _ => TextCommand::Usage("ERR usage: ROOMS [<after room>]"),
        },
        "say" => {
            let (room, text) = split_word(rest.trim_start());
            if room.is_empty() || text.trim().is_empty() {
                TextCommand::Usage("ERR usage: SAY <room> <text>")
            } else {
                TextCommand::Say {
                    room: room.to_string(),
                    text: text.trim().to_string(),
                }
            }
        }
        "history" => parse_history(&words(rest)),
        "users" => match words(rest).as_slice() {
            [] => TextCommand::Users { after: None },
            [after] => TextCommand::Users {
                after: Some(after.to_string()),
            },
            _ => TextCommand::Usage("ERR usage: USERS [<after user>]"),
        },
        "search" => match words(rest).as_slice() {
            [prefix] => TextCommand::Search {
                prefix: prefix.to_string(),
            },
            _ => TextCommand::Usage("ERR usage: SEARCH <prefix>"),
        },
        "contact" => match words(rest).as_slice() {
            [action, name]
                if ["add", "accept", "decline", "remove"]
                    .contains(&action.to_ascii_lowercase().as_str()) =>
            {
                TextCommand::Contact {
                    action: action.to_ascii_lowercase(),
                    name: name.to_string(),
                }
            }
            _ => TextCommand::Usage("ERR usage: CONTACT ADD|ACCEPT|DECLINE|REMOVE <name>"),
        },
        "contacts" => TextCommand::Contacts,
        "members" => match words(rest).as_slice() {
            [room] => TextCommand::Members {
                room: room.to_string(),
            },
            _ => TextCommand::Usage("ERR usage: MEMBERS <room>"),
        },
        "topic" => {
            let (room, topic) = split_word(rest.trim_start());
            match room.is_empty() {
                true => TextCommand::Usage("ERR usage: TOPIC <room> [<text>]"),
                false => TextCommand::Topic {
                    room: room.to_string(),
                    topic: topic.trim().to_string(),
                },
            }
        }
        "inviteonly" => match words(rest).as_slice() {
            [room, on] if on.eq_ignore_ascii_case("on") || on.eq_ignore_ascii_case("off") => {
                TextCommand::InviteOnly {
                    room: room.to_string(),
                    on: on.eq_ignore_ascii_case("on"),
                }
            }
            _ => TextCommand::Usage("ERR usage: INVITEONLY <room> on|off"),
        },
        "invite" | "kick" | "ban" | "unban" | "mute" | "unmute" | "op" | "deop" => {
            match words(rest).as_slice() {
                [room, user] => TextCommand::Moderate {
                    action: word.to_ascii_lowercase(),
                    room: room.to_string(),
                    user: user.to_string(),
                },
                _ => TextCommand::Usage(
                    "ERR usage: INVITE|KICK|BAN|UNBAN|MUTE|UNMUTE|OP|DEOP <room> <user>",
                ),
            }
        }
        "destroy" => match words(rest).as_slice() {
            [room] => TextCommand::Destroy {
                room: room.to_string(),
            },
            _ => TextCommand::Usage("ERR usage: DESTROY <room>"),
        },
        "roominfo" => match words(rest).as_slice() {
            [room] => TextCommand::RoomInfo {
                room: room.to_string(),
            },
            _ => TextCommand::Usage("ERR usage: ROOMINFO <room>"),
        },
        "delete" => match words(rest).as_slice() {
            [target, seq] => match seq.parse::<i64>() {
                Ok(seq) if seq > 0 => TextCommand::Delete {
                    target: target.to_string(),
                    seq,
                },
                _ => TextCommand::Usage("ERR usage: DELETE <room|user|*> <seq>"),
            },
            _ => TextCommand::Usage("ERR usage: DELETE <room|user|*> <seq>"),
        },
        "block" | "unblock" => match words(rest).as_slice() {
            [user] => TextCommand::Block {
                user: user.to_string(),
                on: lower == "block",
            },
            _ => TextCommand::Usage("ERR usage: BLOCK|UNBLOCK <user>"),
        },
        "blocks" => TextCommand::Blocks,
        "help" => TextCommand::Help,
        "quit" => TextCommand::Quit,
        _ => TextCommand::Unknown {
            word: word.to_string(),
            slash: false,
        },
    }
}

/// Parses one line of a session that speaks seed 004's dialect (it has used a slash
/// command): as in gochat, a line that is not a slash command is an unknown command,
/// named by its first word (`err: unknown command: <word>`).
pub fn parse_slash_only(line: &str) -> TextCommand {
    let line = line.trim_start();
    if line.starts_with('/') || line.trim().is_empty() {
        return parse(line);
    }
    TextCommand::Unknown {
        word: split_word(line).0.to_string(),
        slash: true,
    }
}

/// `HISTORY <target> [<count>] [before|after <seq>]`.
fn parse_history(words: &[&str]) -> TextCommand {
    const USAGE: &str = "ERR usage: HISTORY <room|user|*> [<count>] [before|after <seq>]";
    let Some((target, rest)) = words.split_first() else {
        return TextCommand::Usage(USAGE);
    };
    let (limit, rest) = match rest.first().map(|n| n.parse::<usize>()) {
        Some(Ok(n)) if n > 0 => (Some(n), &rest[1..]),
        Some(Ok(_)) => return TextCommand::Usage(USAGE),
        _ => (None, rest),
    };
    let around = match rest {
        [] => None,
        [dir, seq] => match (dir.to_ascii_lowercase().as_str(), seq.parse::<i64>()) {
            ("before", Ok(seq)) => Some((true, seq)),
            ("after", Ok(seq)) => Some((false, seq)),
            _ => return TextCommand::Usage(USAGE),
        },
        _ => return TextCommand::Usage(USAGE),
    };
    TextCommand::History {
        target: target.to_string(),
        limit,
        around,
    }
}

fn parse_slash(lower: &str, word: &str, rest: &str) -> TextCommand {
    let first = words(rest).first().map(|w| w.to_string());
    match (lower, first) {
        ("/nick", Some(name)) => TextCommand::SlashNick { name },
        ("/nick", None) => TextCommand::Usage("> nick is required. usage: /nick NAME"),
        ("/join", Some(room)) => TextCommand::SlashJoin { room },
        ("/join", None) => TextCommand::Usage("> room name is required. usage: /join ROOM_NAME"),
        ("/rooms", _) => TextCommand::SlashRooms,
        ("/msg", Some(_)) => TextCommand::SlashMsg {
            text: rest.trim_start_matches(' ').to_string(),
        },
        ("/msg", None) => TextCommand::Usage("> message is required, usage: /msg MSG"),
        ("/quit", _) => TextCommand::SlashQuit,
        _ => TextCommand::Unknown {
            word: word.to_string(),
            slash: true,
        },
    }
}

/// The first space-separated word and everything after the single space that ends it.
fn split_word(s: &str) -> (&str, &str) {
    match s.find(' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// The word seed-002-style replies use for `kind` (`ERR <word>`).
pub fn error_word(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Internal => "internal-error",
        ErrorKind::UserNotFound => "user-not-found",
        ErrorKind::AlreadyLoggedIn => "username-taken",
        ErrorKind::LoggedInHere => "already-logged-in",
        ErrorKind::NotLoggedIn => "login-required",
        ErrorKind::Forbidden => "forbidden",
        ErrorKind::InvalidName => "invalid-username",
        ErrorKind::Malformed => "malformed",
        ErrorKind::UnknownCommand => "unknown-cmd",
        ErrorKind::ShuttingDown => "shutting-down",
        ErrorKind::NotMember => "not-a-member",
        ErrorKind::RoomNotFound => "room-not-found",
        ErrorKind::TooLong => "line-too-long",
        ErrorKind::InvalidUtf8 => "invalid-utf8",
        ErrorKind::Unauthorized => "invalid-credentials",
        ErrorKind::RateLimited => "rate-limited",
        ErrorKind::TooManyAttempts => "too-many-attempts",
        ErrorKind::InvalidPassword => "invalid-password",
        ErrorKind::NotContact => "not-a-contact",
        ErrorKind::BadTransfer => "bad-transfer",
        ErrorKind::Corrupt => "corrupt",
        ErrorKind::TooManyRooms => "too-many-rooms",
        ErrorKind::TlsRequired => "tls-required",
        ErrorKind::NotOperator => "not-operator",
        ErrorKind::Banned => "banned",
        ErrorKind::Muted => "muted",
        ErrorKind::InviteOnly => "invite-only",
        ErrorKind::Blocked => "blocked",
        ErrorKind::MessageNotFound => "message-not-found",
        ErrorKind::Unsupported => "unsupported",
    }
}

/// Makes `text` safe to put on one line: line breaks and other control characters
/// become spaces, so a message can never forge a second line.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

/// Every command, for `HELP`.
pub const HELP: &[&str] = &[
    "LOGIN <name>                 log in without a password (names: no spaces, at most 32 bytes)",
    "REGISTER <name> <password>   create an account (passwords: 8 to 128 bytes)",
    "LOGIN <name> <password> [<device>]   log in to an account, as a device (default: default)",
    "TOKEN                        a token that logs this device in later without the password",
    "RESUME <token>               log in with a token",
    "PASSWD <old> <new>           change the password (other devices' tokens stop working)",
    "LOGOUT [ALL]                 log out this device (or every device) and close",
    "PROFILE [<name>]             show a profile",
    "SETNAME <display name>       set your display name",
    "MSG <text>                   send to everyone online",
    "DM <user> <text>             send to one user (delivered later if they are offline)",
    "WHO                          list who is online (one USER line each)",
    "PING                         answered with PONG",
    "JOIN <room> [<room> ...]     join rooms (created if new); you stay a member until LEAVE",
    "LEAVE <room> [<room> ...]    leave rooms",
    "ROOMS                        list rooms with their member counts",
    "SAY <room> <text>            send to a room you are in",
    "HISTORY <room|user|*> [<n>] [before|after <seq>]   n (default 50) messages of a room or DM",
    "USERS                        every user, online or not, with when they were last seen",
    "MEMBERS <room>               a room's members, online or not",
    "SEARCH <prefix>              users whose names start with prefix",
    "CONTACT ADD|ACCEPT|DECLINE|REMOVE <name>   ask, answer, or end a contact",
    "CONTACTS                     your contacts: requested, pending or accepted, with presence",
    "DM <a>,<b>,... <text>        one message to several users",
    "TOPIC <room> [<text>]        set (or clear) a room's topic (operators)",
    "INVITEONLY <room> on|off     only invited users may join (operators)",
    "INVITE|KICK|BAN|UNBAN|MUTE|UNMUTE <room> <user>   moderate a room (operators)",
    "OP|DEOP <room> <user>        make or unmake an operator (the owner)",
    "DESTROY <room>               delete a room (the owner)",
    "ROOMINFO <room>              a room's topic, mode, owner, operators, bans and mutes",
    "DELETE <room|user|*> <seq>   delete a message (yours; operators: anyone's in their room)",
    "BLOCK|UNBLOCK <user>         no DMs or contact requests from that user",
    "BLOCKS                       the users you block",
    "HELP                         this list",
    "QUIT                         close the connection",
    "/nick NAME  /join ROOM  /rooms  /msg TEXT  /quit   the gochat commands (one room at a time)",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_case_insensitive_and_keep_the_text_as_typed() {
        assert_eq!(
            parse("login Naman"),
            TextCommand::Login {
                name: "Naman".into()
            }
        );
        assert_eq!(
            parse("MsG hi  everyone!"),
            TextCommand::Broadcast {
                text: "hi  everyone!".into()
            }
        );
        assert_eq!(
            parse("DM Yudi hey this is private!"),
            TextCommand::Dm {
                to: "Yudi".into(),
                text: "hey this is private!".into()
            }
        );
    }

    #[test]
    fn the_white_space_around_a_text_is_not_part_of_it() {
        assert_eq!(
            parse("DM bob   spaced   reply \t"),
            TextCommand::Dm {
                to: "bob".into(),
                text: "spaced   reply".into()
            }
        );
        assert_eq!(
            parse("MSG   hi  all "),
            TextCommand::Broadcast {
                text: "hi  all".into()
            }
        );
        assert_eq!(
            parse("SAY #r  x y"),
            TextCommand::Say {
                room: "#r".into(),
                text: "x y".into()
            }
        );
    }

    #[test]
    fn moderation_commands_parse_their_words() {
        let kick = TextCommand::Moderate {
            action: "kick".into(),
            room: "#r".into(),
            user: "bob".into(),
        };
        assert_eq!(parse("Kick #r bob"), kick);
        let topic = TextCommand::Topic {
            room: "#r".into(),
            topic: "release on Friday".into(),
        };
        assert_eq!(parse("TOPIC #r release on Friday "), topic);
        let cleared = TextCommand::Topic {
            room: "#r".into(),
            topic: String::new(),
        };
        assert_eq!(parse("TOPIC #r"), cleared);
        let delete = TextCommand::Delete {
            target: "*".into(),
            seq: 3,
        };
        assert_eq!(parse("DELETE * 3"), delete);
        assert!(matches!(parse("DELETE #r 0"), TextCommand::Usage(_)));
        assert!(matches!(
            parse("INVITEONLY #r maybe"),
            TextCommand::Usage(_)
        ));
        let unblock = TextCommand::Block {
            user: "bob".into(),
            on: false,
        };
        assert_eq!(parse("unblock bob"), unblock);
    }

    #[test]
    fn missing_arguments_get_the_seed_usage_lines() {
        assert_eq!(
            parse("DM Yudi"),
            TextCommand::Usage("ERR usage: DM <username> <text>")
        );
        assert_eq!(
            parse("/nick"),
            TextCommand::Usage("> nick is required. usage: /nick NAME")
        );
        assert_eq!(
            parse("/join"),
            TextCommand::Usage("> room name is required. usage: /join ROOM_NAME")
        );
    }

    #[test]
    fn unknown_words_are_reported_in_each_dialect() {
        assert_eq!(
            parse("FOO"),
            TextCommand::Unknown {
                word: "FOO".into(),
                slash: false
            }
        );
        assert_eq!(
            parse("/foo x"),
            TextCommand::Unknown {
                word: "/foo".into(),
                slash: true
            }
        );
        assert_eq!(parse("   "), TextCommand::Empty);
    }

    #[test]
    fn a_slash_session_knows_only_slash_commands() {
        assert_eq!(
            parse_slash_only("hello there"),
            TextCommand::Unknown {
                word: "hello".into(),
                slash: true
            }
        );
        assert_eq!(
            parse_slash_only("  LOGIN bob"),
            TextCommand::Unknown {
                word: "LOGIN".into(),
                slash: true
            }
        );
        assert_eq!(
            parse_slash_only("/msg hi"),
            TextCommand::SlashMsg { text: "hi".into() }
        );
        assert_eq!(parse_slash_only(" "), TextCommand::Empty);
    }

    #[test]
    fn slash_msg_keeps_everything_after_the_command() {
        assert_eq!(
            parse("/msg Hi there"),
            TextCommand::SlashMsg {
                text: "Hi there".into()
            }
        );
    }

    #[test]
    fn one_line_neutralises_line_breaks() {
        assert_eq!(one_line("a\nb\rc"), "a b c");
        assert_eq!(one_line("plain"), "plain");
    }
}
