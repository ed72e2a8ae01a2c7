//! Requests of the text protocol: seed 002's words, seed 004's slash commands, and
//! parley's own (JOIN, LEAVE, ROOMS, SAY, HISTORY, HELP, QUIT).

use bytes::Bytes;
use parley_proto::text::{self, TextCommand};
use parley_proto::{validate_name, ErrorKind, Target};

use super::history::DELETED;
use super::messaging::unix_nanos;
use super::{Flow, Session, Who};
use crate::hub::RoomAction;
use crate::outbound::{slash_error, Item, Style, Tag};
use crate::store::Page;

impl Session {
    pub(super) async fn text_line(&mut self, line: Bytes) -> Flow {
        let Ok(line) = std::str::from_utf8(&line) else {
            return self.text_error(ErrorKind::InvalidUtf8).await;
        };
        // A session that speaks seed 004's dialect hears only gochat's style (see `Style`).
        let command = match self.style() {
            Style::Slash => text::parse_slash_only(line),
            _ => text::parse(line),
        };
        match &command {
            TextCommand::SlashNick { .. }
            | TextCommand::SlashJoin { .. }
            | TextCommand::SlashRooms
            | TextCommand::SlashMsg { .. }
            | TextCommand::SlashQuit => self.set_style(Style::Slash),
            // A mistyped slash command does not make a seed-002 session a gochat one.
            TextCommand::Empty | TextCommand::Usage(_) | TextCommand::Unknown { .. } => {}
            _ => self.set_style(Style::Line),
        }
        let logged_in = self.login.is_some();
        match command {
            // The hot paths, not boxed: a box as large as the biggest command's state,
            // allocated and freed for every message, costs more than the message's own work
            // in the session.
            TextCommand::Say { room, text } if logged_in => {
                self.send_text(Target::Room(room), text, Tag::Line).await
            }
            TextCommand::Dm { to, text } if logged_in => self.dm(&to, text).await,
            // Boxed: an idle session's future stays small.
            command => return Box::pin(self.text_command(command)).await,
        }
        Flow::Continue
    }

    /// Answers a line that could not be read, in the session's current dialect.
    pub(super) async fn text_error(&mut self, kind: ErrorKind) -> Flow {
        let line = if self.style() == Style::Slash {
            format!("err: {}", slash_error(kind))
        } else {
            format!("ERR {}", text::error_word(kind))
        };
        self.say_line(line).await;
        Flow::Continue
    }

    pub(super) fn style(&self) -> Style {
        Style::from_u8(self.link.style.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn name_ok<'a>(&self, name: &'a str) -> Option<&'a str> {
        validate_name(name.as_bytes(), self.shared.config.max_name_bytes).ok()
    }

    async fn text_command(&mut self, command: TextCommand) -> Flow {
        let logged_in = self.login.is_some();
        match command {
            TextCommand::Empty => {}
            TextCommand::Usage(line) => self.say_line(line.to_string()).await,
            TextCommand::Unknown { word, slash } => {
                let line = match slash {
                    true => format!("err: unknown command: {}", text::one_line(&word)),
                    false => "ERR unknown-cmd".to_string(),
                };
                self.say_line(line).await;
            }
            TextCommand::Ping => self.say_line("PONG".into()).await,
            TextCommand::Help => {
                let mut out = String::new();
                for line in text::HELP {
                    out.push_str(line);
                    out.push('\n');
                }
                out.push_str("OK\n");
                self.say(Item::Bytes(Bytes::from(out))).await;
            }
            TextCommand::Quit => {
                self.say_line("BYE".into()).await;
                return Flow::Close("quit".into());
            }
            TextCommand::Login { name } => {
                let line = match self.name_ok(&name) {
                    None => "ERR invalid-username".to_string(),
                    Some(name) => match self.login(name, Some(super::line("OK"))).await {
                        Ok(()) => return Flow::Continue,
                        Err(kind) => format!("ERR {}", text::error_word(kind)),
                    },
                };
                self.say_line(line).await;
            }
            TextCommand::Register { name, password } => {
                let result = self.register(&name, &password).await;
                self.say_result(result).await;
            }
            TextCommand::PasswordLogin {
                name,
                password,
                device,
            } => {
                let device = device.unwrap_or_default();
                let welcome = Some(super::line("OK"));
                if let Err(kind) = self
                    .password_login(&name, &password, &device, welcome)
                    .await
                {
                    self.say_result(Err(kind)).await;
                }
            }
            TextCommand::Resume { token } => {
                let welcome = |name: &str| Some(super::line(format!("OK {name}")));
                if let Err(kind) = self.token_login(&token, welcome).await {
                    self.say_line(format!("ERR {}", text::error_word(kind)))
                        .await;
                }
            }
            TextCommand::Who => {
                let presence = self.who().await;
                let mut out = String::new();
                for user in &presence.users {
                    out.push_str("USER ");
                    out.push_str(user);
                    out.push('\n');
                }
                if !out.is_empty() {
                    self.say(Item::Bytes(Bytes::from(out))).await;
                }
            }
            _ if !logged_in && !is_slash(&command) => {
                self.say_line(format!("ERR {}", text::error_word(ErrorKind::NotLoggedIn)))
                    .await;
            }
            TextCommand::Token => {
                let line = match self.issue_token().await {
                    Ok((token, expires_at)) => {
                        format!("TOKEN {token} {}", super::json::rfc3339_ms(expires_at))
                    }
                    Err(kind) => format!("ERR {}", text::error_word(kind)),
                };
                self.say_line(line).await;
            }
            TextCommand::Passwd { old, new } => {
                let result = self.change_password(&old, &new).await;
                self.say_result(result).await;
            }
            TextCommand::Logout { all } => {
                let result = self.logout(all).await;
                let ok = result.is_ok();
                self.say_result(result).await;
                if ok {
                    return Flow::Close("logged out".into());
                }
            }
            TextCommand::Profile { name } => {
                let name = match name {
                    Some(name) => name,
                    None => self
                        .login
                        .as_ref()
                        .map(|(_, n)| n.to_string())
                        .unwrap_or_default(),
                };
                let lines = match self.get_profile(&name, Who::Members).await {
                    Ok(p) => format!(
                        "PROFILE {} {} {}\nOK",
                        p.name,
                        p.avatar.map_or(0, |a| a.len()),
                        text::one_line(p.display_name.as_deref().unwrap_or("-"))
                    ),
                    Err(kind) => format!("ERR {}", text::error_word(kind)),
                };
                self.say_line(lines).await;
            }
            TextCommand::SetName { display_name } => {
                let result = self.set_profile(Some(display_name), None).await;
                self.say_result(result).await;
            }
            TextCommand::Broadcast { text } => {
                self.send_text(Target::Everyone, text, Tag::Line).await
            }
            TextCommand::Dm { to, text } => self.dm(&to, text).await,
            TextCommand::Say { room, text } => {
                self.send_text(Target::Room(room), text, Tag::Line).await;
            }
            TextCommand::Join { rooms } => {
                // The OK is queued by the hub, before the room's first message.
                let ok = Item::Bytes(Bytes::from_static(b"OK\n"));
                if let Err(kind) = self.join(&rooms, None, Who::Members, Some(ok)).await {
                    self.say_result(Err(kind)).await;
                }
            }
            TextCommand::Leave { rooms } => {
                let result = self.leave(&rooms, Who::Members).await;
                self.say_result(result).await;
            }
            TextCommand::Rooms { after } => {
                let after = after.unwrap_or_default();
                let out = match self.rooms(&after, 0, Who::Members).await {
                    Ok(rooms) => {
                        let mut out = String::new();
                        for room in rooms {
                            out.push_str(&format!(
                                "ROOM {} {} {}\n",
                                room.name, room.members, room.online
                            ));
                        }
                        out + "OK\n"
                    }
                    Err(kind) => format!("ERR {}\n", text::error_word(kind)),
                };
                self.say(Item::Bytes(Bytes::from(out))).await;
            }
            TextCommand::History {
                target,
                limit,
                around,
            } => {
                let page = match around {
                    None => Page::Latest,
                    Some((true, seq)) => Page::BeforeSeq(seq),
                    Some((false, seq)) => Page::AfterSeq(seq),
                };
                let out = match self.history(&target, page, limit).await {
                    Ok(messages) => {
                        let mut out = String::new();
                        for m in messages {
                            let text = match m.deleted {
                                true => DELETED.into(),
                                false => String::from_utf8_lossy(&m.body),
                            };
                            out.push_str(&format!(
                                "HISTORY {} {} {} {} {}\n",
                                target,
                                m.seq,
                                super::json::rfc3339_ms(m.received_at),
                                m.from,
                                text::one_line(&text)
                            ));
                        }
                        out + "OK\n"
                    }
                    // The text protocol's word for a target that names nothing.
                    Err(ErrorKind::UserNotFound) => "ERR not-found\n".to_string(),
                    Err(kind) => format!("ERR {}\n", text::error_word(kind)),
                };
                self.say(Item::Bytes(Bytes::from(out))).await;
            }
            TextCommand::Search { prefix } => {
                let out = match self.search_users(&prefix, usize::MAX).await {
                    Ok(found) => {
                        let mut out = String::new();
                        for u in found {
                            let state = if u.online { "online" } else { "offline" };
                            out.push_str(&format!("FOUND {} {state}\n", u.name));
                        }
                        out + "OK\n"
                    }
                    Err(kind) => format!("ERR {}\n", text::error_word(kind)),
                };
                self.say(Item::Bytes(Bytes::from(out))).await;
            }
            TextCommand::Contact { action, name } => {
                let result = match super::contacts::action(&action) {
                    Some(action) => self.contact_action(&name, action).await,
                    None => Err(ErrorKind::Malformed),
                };
                self.say_result(result).await;
            }
            TextCommand::Contacts => {
                let out = match self.contact_list().await {
                    Ok(list) => {
                        let mut out = String::new();
                        for c in list {
                            let online = if c.online { "online" } else { "offline" };
                            out.push_str(&format!(
                                "CONTACT {} {} {online}\n",
                                c.name,
                                c.state.name()
                            ));
                        }
                        out + "OK\n"
                    }
                    Err(kind) => format!("ERR {}\n", text::error_word(kind)),
                };
                self.say(Item::Bytes(Bytes::from(out))).await;
            }
            TextCommand::Users { after } => {
                let mut out = String::new();
                match self.users(&after.unwrap_or_default(), 0).await {
                    Ok(users) => {
                        for u in users {
                            let seen = match u.last_seen {
                                None => "never".to_string(),
                                Some(ms) => super::json::rfc3339_ms(ms),
                            };
                            let state = if u.online { "online" } else { "offline" };
                            let name = u.name;
                            out.push_str(&format!("PRESENCE {name} {state} {seen}\n"));
                        }
                        out.push_str("OK\n");
                    }
                    Err(kind) => out = format!("ERR {}\n", text::error_word(kind)),
                }
                self.say(Item::Bytes(Bytes::from(out))).await;
            }
            TextCommand::Members { room } => {
                let out = match self.members(&room).await {
                    Ok(members) => {
                        let mut out = String::new();
                        for (name, online) in members {
                            let state = if online { "online" } else { "offline" };
                            out.push_str(&format!("MEMBER {name} {state}\n"));
                        }
                        out + "OK\n"
                    }
                    Err(kind) => format!("ERR {}\n", text::error_word(kind)),
                };
                self.say(Item::Bytes(Bytes::from(out))).await;
            }
            TextCommand::Topic { room, topic } => {
                let topic = (!topic.is_empty()).then_some(topic);
                let result = self.moderate(&room, RoomAction::Topic(topic)).await;
                self.say_result(result).await;
            }
            TextCommand::InviteOnly { room, on } => {
                let result = self.moderate(&room, RoomAction::InviteOnly(on)).await;
                self.say_result(result).await;
            }
            TextCommand::Moderate { action, room, user } => {
                let result = match super::moderation::action(&action, user) {
                    Some(action) => self.moderate(&room, action).await,
                    None => Err(ErrorKind::Malformed),
                };
                self.say_result(result).await;
            }
            TextCommand::Destroy { room } => {
                let result = self.moderate(&room, RoomAction::Delete).await;
                self.say_result(result).await;
            }
            TextCommand::RoomInfo { room } => {
                let out = match self.room_details(&room).await {
                    Ok(d) => {
                        let room = &d.name;
                        let topic = d.topic.as_deref().map_or("-".into(), text::one_line);
                        let mode = if d.invite_only { "invite-only" } else { "open" };
                        let owner = d.owner.as_deref().unwrap_or("-");
                        let mut out = format!(
                            "TOPIC {room} {topic}\nMODE {room} {mode}\nOWNER {room} {owner}\n"
                        );
                        for (word, list) in [
                            ("OPERATOR", &d.operators),
                            ("BANNED", &d.banned),
                            ("MUTED", &d.muted),
                        ] {
                            for name in list {
                                out.push_str(&format!("{word} {room} {name}\n"));
                            }
                        }
                        out + &format!("RANK {room} {}\nOK\n", d.rank.name())
                    }
                    Err(kind) => format!("ERR {}\n", text::error_word(kind)),
                };
                self.say(Item::Bytes(Bytes::from(out))).await;
            }
            TextCommand::Delete { target, seq } => {
                let result = self.delete_message(&target, seq).await;
                self.say_result(result).await;
            }
            TextCommand::Block { user, on } => {
                let result = self.block(&user, on).await;
                self.say_result(result).await;
            }
            TextCommand::Blocks => {
                let out = match self.blocks().await {
                    Ok(list) => {
                        let mut out = String::new();
                        for name in list {
                            out.push_str(&format!("BLOCKED {name}\n"));
                        }
                        out + "OK\n"
                    }
                    Err(kind) => format!("ERR {}\n", text::error_word(kind)),
                };
                self.say(Item::Bytes(Bytes::from(out))).await;
            }
            TextCommand::SlashNick { name } => {
                let line = match (self.name_ok(&name), &self.login) {
                    (None, _) => format!("err: {}", slash_error(ErrorKind::InvalidName)),
                    (Some(_), Some((_, current))) if **current == *name => {
                        format!("> all right, I will call you {name}")
                    }
                    // An account keeps its name (it logged in with its password).
                    (Some(_), Some((_, current))) if self.account => {
                        format!("err: you are already called {current}")
                    }
                    (Some(nick), _) => match self.nick(nick).await {
                        Some(line) => line,
                        None => return Flow::Continue,
                    },
                };
                self.say_line(line).await;
            }
            TextCommand::SlashJoin { room } => {
                let rooms = std::slice::from_ref(&room);
                let leave = self.room.clone();
                // The welcome is queued by the hub, before the room's first message.
                let welcome = Bytes::from(format!("> welcome to {room}\n"));
                let joined = self.join(rooms, leave, Who::Anyone, Some(Item::Bytes(welcome)));
                match joined.await {
                    Ok(()) => self.room = Some(room),
                    Err(kind) => self.say_line(format!("err: {}", slash_error(kind))).await,
                }
            }
            TextCommand::SlashRooms => {
                // Seed 004 lists rooms before `/nick` too: the first page.
                let rooms = self.rooms("", 0, Who::Anyone).await.unwrap_or_default();
                let names: Vec<String> = rooms.iter().map(|r| r.name.to_string()).collect();
                self.say_line(format!("> available rooms: {}", names.join(", ")))
                    .await;
            }
            TextCommand::SlashMsg { text } => match self.room.clone() {
                Some(room) => self.send_text(Target::Room(room), text, Tag::Slash).await,
                None => {
                    let line = format!("err: {}", slash_error(ErrorKind::NotMember));
                    self.say_line(line).await;
                }
            },
            TextCommand::SlashQuit => {
                if let Some(room) = self.room.take() {
                    let _ = self.leave(&[room], Who::Anyone).await;
                }
                self.say_line("> sad to see you go =(".into()).await;
                return Flow::Close("quit".into());
            }
        }
        Flow::Continue
    }

    /// `/nick` for a session without an account: takes the name (again at any time, as in
    /// gochat), and in a room stays in it under the new name. The refusal line, if any.
    async fn nick(&mut self, nick: &str) -> Option<String> {
        let was = self.actor();
        let welcome = super::line(format!("> all right, I will call you {nick}"));
        let result = self.rename(nick, Some(welcome)).await;
        if matches!(result, Ok(()) | Err(ErrorKind::NotLoggedIn)) {
            if let Some(room) = self.room.clone() {
                self.renamed_in_room(was, room).await;
            }
        }
        match result {
            Ok(()) => None,
            Err(ErrorKind::AlreadyLoggedIn) if self.is_account(nick).await => Some(format!(
                "> {nick} is a registered account, choose another nick. usage: /nick NAME"
            )),
            Err(kind) => Some(format!("err: {}", slash_error(kind))),
        }
    }

    /// `DM a text` or `DM a,b text`.
    async fn dm(&mut self, to: &str, text: String) {
        let names: Option<Vec<String>> = to
            .split(',')
            .map(|n| self.recipient(n.as_bytes()).ok().map(|()| n.to_string()))
            .collect();
        match names {
            Some(mut names) if names.len() == 1 => {
                let to = Target::User(names.remove(0));
                self.send_text(to, text, Tag::Line).await;
            }
            Some(names) => self.send_text(Target::Users(names), text, Tag::Line).await,
            None => self.say_line("ERR user-not-found".into()).await,
        }
    }

    async fn send_text(&mut self, to: Target, text: String, tag: Tag) {
        let (body, sent_at) = (Bytes::from(text), unix_nanos());
        self.send(to, body, sent_at, tag, Who::Anyone).await
    }

    async fn say_result(&mut self, result: Result<(), ErrorKind>) {
        let line = match result {
            Ok(()) => "OK".to_string(),
            Err(kind) => format!("ERR {}", text::error_word(kind)),
        };
        self.say_line(line).await;
    }
}

fn is_slash(command: &TextCommand) -> bool {
    matches!(
        command,
        TextCommand::SlashNick { .. }
            | TextCommand::SlashJoin { .. }
            | TextCommand::SlashRooms
            | TextCommand::SlashMsg { .. }
            | TextCommand::SlashQuit
    )
}
