//! What the user types: a line for the conversation, or a command; and Tab completion.

use std::path::PathBuf;

use super::super::commands::{self, Command, Input, Names};
use super::{unique_path, Action, App, Completion, ConvKey, Delivery, Entry, Msg};
use crate::FileInfo;

impl App {
    // ---------------------------------------------------------------------------------
    // Input
    // ---------------------------------------------------------------------------------

    /// Enter: sends the line or runs the command.
    pub fn submit(&mut self) -> Vec<Action> {
        self.completion = None;
        let line = self.editor.take();
        match commands::parse(&line) {
            Input::Nothing => Vec::new(),
            Input::Text(text) => self.say(text),
            Input::Usage(usage) => {
                self.error(usage);
                Vec::new()
            }
            Input::Command(command) => self.command(command),
        }
    }

    /// Plain text to the current conversation: shown at once as pending.
    fn say(&mut self, text: String) -> Vec<Action> {
        let key = self.conv().key.clone();
        if key.target().is_none() {
            self.error("this is not a conversation: /join #room or /dm user first");
            return Vec::new();
        }
        let (local, time) = (self.local(), self.fresh_time());
        let me = self.me.clone();
        let conv = self.conv_mut();
        conv.marker = None;
        conv.scroll = 0;
        conv.below = 0;
        conv.entries.push(Entry::Msg(Msg {
            id: None,
            seq: None,
            from: me,
            text: text.clone(),
            time,
            status: Delivery::Pending,
            local: Some(local),
        }));
        vec![Action::Send {
            conv: key,
            local,
            text,
            time,
        }]
    }

    fn command(&mut self, command: Command) -> Vec<Action> {
        let key = self.conv().key.clone();
        match command {
            Command::Join(room) => {
                if let Some(i) = self.find(&ConvKey::Room(room.clone())) {
                    return self.select(i);
                }
                vec![Action::Join(room)]
            }
            Command::Leave(room) => match (room, &key) {
                (Some(room), _) => vec![Action::Leave(room)],
                (None, ConvKey::Room(room)) => vec![Action::Leave(room.clone())],
                (None, ConvKey::Direct(_) | ConvKey::Everyone) => {
                    let current = self.current;
                    self.close(current);
                    Vec::new()
                }
                (None, ConvKey::Server) => {
                    self.error("not in a room: /leave #room");
                    Vec::new()
                }
            },
            Command::Close => {
                if matches!(key, ConvKey::Room(_)) {
                    self.error("this is a room: /leave leaves it");
                } else {
                    let current = self.current;
                    self.close(current);
                }
                Vec::new()
            }
            Command::Dm { user, text } => {
                if user == self.me {
                    self.error("that is you");
                    return Vec::new();
                }
                let mut actions = match self.find(&ConvKey::Direct(user.clone())) {
                    Some(i) => self.select(i),
                    None => {
                        let index = self.open(ConvKey::Direct(user.clone()));
                        let mut actions = self.select(index);
                        actions.push(Action::FindUser(user.clone()));
                        actions
                    }
                };
                if let Some(text) = text {
                    actions.extend(self.say(text));
                }
                actions
            }
            Command::Who => match &key {
                ConvKey::Room(room) => {
                    let conv = self.conv();
                    let online: Vec<&str> = conv
                        .members
                        .iter()
                        .filter(|m| m.online)
                        .map(|m| m.name.as_str())
                        .collect();
                    let away: Vec<&str> = conv
                        .members
                        .iter()
                        .filter(|m| !m.online)
                        .map(|m| m.name.as_str())
                        .collect();
                    let text = format!(
                        "{room}: {} members; online: {}; offline: {}",
                        conv.members.len(),
                        list(&online),
                        list(&away)
                    );
                    self.info(text);
                    vec![Action::Members(room.clone())]
                }
                _ => {
                    let online: Vec<&str> = self
                        .users
                        .iter()
                        .filter(|(_, p)| p.0)
                        .map(|(n, _)| n.as_str())
                        .collect();
                    let text = format!("online: {}", list(&online));
                    self.info(text);
                    vec![Action::Users]
                }
            },
            Command::Rooms => vec![Action::ListRooms],
            Command::Contacts => vec![Action::Contacts { show: true }],
            Command::ContactAdd(user) => vec![Action::ContactRequest(user)],
            Command::ContactAnswer { user, accept } => vec![Action::ContactAnswer { user, accept }],
            Command::ContactRemove(user) => vec![Action::ContactRemove(user)],
            Command::Send { path, caption } => {
                if key.target().is_none() {
                    self.error("files go to a room or a person: open one first");
                    return Vec::new();
                }
                let path = PathBuf::from(path);
                if !path.is_file() {
                    self.error(format!("{}: not a file", path.display()));
                    return Vec::new();
                }
                let (id, time) = (self.local(), self.fresh_time());
                vec![Action::Upload {
                    conv: key,
                    path,
                    caption,
                    id,
                    time,
                }]
            }
            Command::Get(which) => self.get(which),
            Command::History(n) => {
                let actions = self.older(n);
                if actions.is_empty() && !self.conv().more_before {
                    self.info("no older messages");
                }
                actions
            }
            Command::Help => {
                for spec in commands::COMMANDS {
                    let aliases: String = spec.aliases.iter().map(|a| format!(" /{a}")).collect();
                    let text = format!(
                        "/{} {} — {}{}",
                        spec.name,
                        spec.args,
                        spec.help,
                        if aliases.is_empty() {
                            String::new()
                        } else {
                            format!(" (also{aliases})")
                        }
                    );
                    self.info(text);
                }
                for (keys, what) in commands::KEYS {
                    self.info(format!("{keys}: {what}"));
                }
                Vec::new()
            }
            Command::Quit => {
                self.quit = true;
                vec![Action::Quit]
            }
        }
    }

    /// `/get`: the latest file message here, the Nth latest, or the latest with that name.
    fn get(&mut self, which: Option<String>) -> Vec<Action> {
        let files: Vec<FileInfo> = self
            .conv()
            .entries
            .iter()
            .rev()
            .filter_map(|e| match e {
                Entry::Msg(m) => FileInfo::parse(&m.text).map(|(f, _)| f),
                _ => None,
            })
            .collect();
        let file = match which.as_deref() {
            None => files.first(),
            Some(w) => match w.parse::<usize>() {
                Ok(n) if n >= 1 => files.get(n - 1),
                _ => files.iter().find(|f| f.name == w),
            },
        };
        let Some(file) = file.cloned() else {
            self.error("no such file message here (scroll up or /history to load older ones)");
            return Vec::new();
        };
        let dest = unique_path(&self.download_dir, &file.name);
        let id = self.local();
        vec![Action::Download {
            conv: self.conv().key.clone(),
            file,
            dest,
            id,
        }]
    }

    /// Tab (`forward`) or Shift-Tab: the next or previous completion.
    pub fn complete(&mut self, forward: bool) {
        if let Some(c) = &mut self.completion {
            if c.candidates.is_empty() {
                return;
            }
            let n = c.candidates.len();
            c.index = if forward {
                (c.index + 1) % n
            } else {
                (c.index + n - 1) % n
            };
            let (start, candidate) = (c.start, c.candidates[c.index].clone());
            let end = self.editor.cursor();
            self.editor.replace(start..end, &candidate);
            return;
        }
        let range = self.editor.word_at_cursor();
        let before = &self.editor.text()[..range.end];
        let word = &self.editor.text()[range.clone()];
        let joined: Vec<&str> = self
            .convs
            .iter()
            .filter_map(|c| match &c.key {
                ConvKey::Room(r) => Some(r.as_str()),
                _ => None,
            })
            .collect();
        let mut rooms: Vec<&str> = self
            .rooms
            .iter()
            .map(|r| std::str::from_utf8(&r.name).unwrap_or(""))
            .collect();
        rooms.extend(joined.iter().copied());
        let members: Vec<&str> = match &self.conv().key {
            ConvKey::Direct(u) => vec![u.as_str()],
            _ => self
                .conv()
                .members
                .iter()
                .map(|m| m.name.as_str())
                .collect(),
        };
        let names = Names {
            rooms,
            joined,
            users: self.users.keys().map(String::as_str).collect(),
            members,
            pending: self.pending.iter().map(String::as_str).collect(),
        };
        let candidates = commands::complete(before, word, &names);
        if candidates.is_empty() {
            return;
        }
        let typed = word.to_string();
        let index = if forward { 0 } else { candidates.len() - 1 };
        let candidate = candidates[index].clone();
        self.editor.replace(range.clone(), &candidate);
        self.completion = Some(Completion {
            candidates,
            index,
            start: range.start,
            typed,
        });
    }

    /// Any key but Tab ends a completion (keeping what it inserted).
    pub fn end_completion(&mut self) {
        self.completion = None;
    }

    /// Esc during a completion: back to what was typed.
    pub fn cancel_completion(&mut self) {
        if let Some(c) = self.completion.take() {
            let end = self.editor.cursor();
            self.editor.replace(c.start..end, &c.typed);
        }
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "nobody".to_string()
    } else {
        names.join(", ")
    }
}
