//! The client's state, a pure model: the network's updates and the user's input change it,
//! and it answers with the requests to make. No terminal, no socket, no clock of its own
//! (time comes in with `tick`), so every behaviour is a unit test.
//!
//! `conv` holds one conversation's entries, `update` applies what the network reports,
//! `command` what the user types.

mod command;
mod conv;
mod update;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use parley_proto::binary::RoomEntry;

use super::editor::Editor;
use super::layout;
use super::text;
use super::view;

pub use conv::{Conv, ConvKey, Delivery, Entry, Member, Msg, NoteKind};
pub use update::{Action, Update};

/// At most this many entries per conversation are kept; older ones can be paged in again.
pub const MAX_ENTRIES: usize = 5000;
/// Messages one page of history asks for.
pub const PAGE: u16 = 50;
/// Most users watched for presence: the direct conversations' peers and contacts first,
/// then the open room's members (the server allows 256 by default).
const MAX_WATCHED: usize = 256;

/// The connection as the status line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    Connecting {
        attempt: u32,
    },
    Online,
    /// Trying again at `retry_at` (Unix ms).
    Offline {
        attempt: u32,
        retry_at: u64,
        reason: String,
    },
    Stopped(String),
}

/// A file going up or down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub id: u64,
    pub name: String,
    pub upload: bool,
    pub done: u64,
    pub total: u64,
}

/// Tab completion in progress: the candidates, which one is shown, and where.
#[derive(Debug, Clone)]
struct Completion {
    candidates: Vec<String>,
    index: usize,
    start: usize,
    /// The text the user typed before completing.
    typed: String,
}

/// The whole client state.
pub struct App {
    pub me: String,
    pub device: String,
    pub server: String,
    pub conn: ConnState,
    pub convs: Vec<Conv>,
    pub current: usize,
    pub editor: Editor,
    completion: Option<Completion>,
    pub width: u16,
    pub height: u16,
    /// Every room listed, with members and online counts.
    pub rooms: Vec<RoomEntry>,
    /// Users known, with presence and last seen (Unix ms).
    pub users: BTreeMap<String, (bool, u64)>,
    /// Contact requests waiting for this user's answer.
    pub pending: BTreeSet<String>,
    pub transfers: Vec<Transfer>,
    pub download_dir: PathBuf,
    pub quit: bool,
    /// Ctrl-L: the whole screen is to be drawn again (something else wrote on it).
    pub redraw: bool,
    /// The time of the last tick (Unix ms).
    pub now: u64,
    /// The users whose presence the server pushes (the last `Action::Watch`).
    watched: Vec<String>,
    next_local: u64,
    last_time: u64,
    /// Whether a reconnect happened: the next message of each conversation gets a marker.
    reconnected: BTreeSet<ConvKey>,
    ever_online: bool,
}

impl App {
    pub fn new(me: &str, device: &str, server: &str, download_dir: PathBuf, now: u64) -> App {
        let mut server_conv = Conv::new(ConvKey::Server);
        server_conv.loaded = true;
        server_conv.more_before = false;
        server_conv.note(
            now,
            format!(
                "parley chat {} — /join #room, /dm user, /help for everything",
                env!("CARGO_PKG_VERSION")
            ),
            NoteKind::Info,
        );
        App {
            me: me.to_string(),
            device: device.to_string(),
            server: server.to_string(),
            conn: ConnState::Connecting { attempt: 1 },
            convs: vec![server_conv],
            current: 0,
            editor: Editor::default(),
            completion: None,
            width: 80,
            height: 24,
            rooms: Vec::new(),
            users: BTreeMap::new(),
            pending: BTreeSet::new(),
            transfers: Vec::new(),
            download_dir,
            quit: false,
            redraw: false,
            now,
            watched: Vec::new(),
            next_local: 1,
            last_time: 0,
            reconnected: BTreeSet::new(),
            ever_online: false,
        }
    }

    pub fn conv(&self) -> &Conv {
        &self.convs[self.current]
    }

    fn conv_mut(&mut self) -> &mut Conv {
        &mut self.convs[self.current]
    }

    pub fn find(&self, key: &ConvKey) -> Option<usize> {
        self.convs.iter().position(|c| &c.key == key)
    }

    /// The conversation for `key`, opened (in sidebar order: the client's buffer, rooms,
    /// direct conversations, everyone; by name within each) if new.
    fn open(&mut self, key: ConvKey) -> usize {
        if let Some(i) = self.find(&key) {
            return i;
        }
        let current = self.convs[self.current].key.clone();
        self.convs.push(Conv::new(key.clone()));
        self.convs.sort_by(|a, b| a.key.cmp(&b.key));
        self.current = self.find(&current).unwrap_or(0);
        self.find(&key).unwrap_or(0)
    }

    fn close(&mut self, index: usize) {
        if index == 0 || index >= self.convs.len() {
            return;
        }
        self.convs.remove(index);
        if self.current >= index {
            self.current = self.current.saturating_sub(1);
        }
    }

    /// A note in conversation `key` (the client's buffer if it is not open).
    pub fn note(&mut self, key: Option<&ConvKey>, text: impl Into<String>, kind: NoteKind) {
        let index = key.and_then(|k| self.find(k)).unwrap_or(match key {
            None => self.current,
            Some(_) => 0,
        });
        let now = self.now;
        self.convs[index].note(now, text, kind);
    }

    fn error(&mut self, text: impl Into<String>) {
        self.note(None, text, NoteKind::Error);
    }

    fn info(&mut self, text: impl Into<String>) {
        self.note(None, text, NoteKind::Info);
    }

    /// The message pane's size in cells.
    pub fn pane(&self) -> (usize, usize) {
        let areas = layout::areas(self.width, self.height);
        (
            areas.messages.width as usize,
            areas.messages.height as usize,
        )
    }

    /// Total rows of conversation `index` at the current width.
    fn rows(&self, index: usize) -> usize {
        let (width, _) = self.pane();
        view::rows(&self.convs[index], width, &self.me, self.now).len()
    }

    pub fn resize(&mut self, width: u16, height: u16) {
        self.width = width;
        self.height = height;
        for i in 0..self.convs.len() {
            let max = self.max_scroll(i);
            let conv = &mut self.convs[i];
            conv.scroll = conv.scroll.min(max);
        }
    }

    /// The furthest up a conversation scrolls: its first row at the top, above the row
    /// that says there is more below.
    fn max_scroll(&self, index: usize) -> usize {
        let (_, height) = self.pane();
        let rows = self.rows(index);
        if rows <= height {
            0
        } else {
            rows - height.saturating_sub(1)
        }
    }

    /// Switches to conversation `index`; asks for what it needs (its first page, members).
    pub fn select(&mut self, index: usize) -> Vec<Action> {
        if index >= self.convs.len() || index == self.current {
            return Vec::new();
        }
        // Leaving a conversation means its news were seen.
        let old = self.conv_mut();
        old.marker = None;
        self.current = index;
        let conv = self.conv_mut();
        conv.unread = 0;
        conv.mentioned = false;
        self.needs()
    }

    /// What the current conversation still needs from the server.
    fn needs(&mut self) -> Vec<Action> {
        let online = self.conn == ConnState::Online;
        let conv = self.conv_mut();
        let mut actions = Vec::new();
        if !online {
            return actions;
        }
        if !conv.loaded && !conv.loading && conv.key.history_name().is_some() {
            conv.loading = true;
            conv.loaded = true;
            actions.push(Action::History {
                conv: conv.key.clone(),
                before: None,
                limit: PAGE,
            });
        }
        if let ConvKey::Room(room) = &conv.key {
            actions.push(Action::Members(room.clone()));
        }
        actions.extend(self.watch());
        actions
    }

    /// The watch for what is on screen, if it changed: the peers of the direct
    /// conversations, the contacts who ask, then the open room's members.
    fn watch(&mut self) -> Option<Action> {
        if self.conn != ConnState::Online {
            return None;
        }
        let mut list: BTreeSet<String> = self
            .convs
            .iter()
            .filter_map(|c| match &c.key {
                ConvKey::Direct(user) => Some(user.clone()),
                _ => None,
            })
            .chain(self.pending.iter().cloned())
            .collect();
        for m in &self.conv().members {
            if list.len() >= MAX_WATCHED {
                break;
            }
            list.insert(m.name.clone());
        }
        list.remove(&self.me);
        let list: Vec<String> = list.into_iter().take(MAX_WATCHED).collect();
        if list == self.watched {
            return None;
        }
        self.watched = list.clone();
        Some(Action::Watch(list))
    }

    pub fn next_conv(&mut self, step: isize) -> Vec<Action> {
        let n = self.convs.len() as isize;
        let next = (self.current as isize + step).rem_euclid(n) as usize;
        self.select(next)
    }

    /// A fresh number for a message or transfer of ours.
    fn local(&mut self) -> u64 {
        self.next_local += 1;
        self.next_local
    }

    /// A time for a new message: Unix nanoseconds, never repeated (it names the message).
    fn fresh_time(&mut self) -> u64 {
        let now = self.now.saturating_mul(1_000_000);
        self.last_time = now.max(self.last_time + 1);
        self.last_time
    }
}

impl App {
    // ---------------------------------------------------------------------------------
    // Time
    // ---------------------------------------------------------------------------------

    /// The clock moved to `now` (Unix ms). (Presence is pushed for what is watched: nothing
    /// to ask for again.)
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        self.now = now;
        Vec::new()
    }

    // ---------------------------------------------------------------------------------
    // Scrolling
    // ---------------------------------------------------------------------------------

    /// Scrolls up `rows`; at the top, asks for the page before.
    pub fn scroll_up(&mut self, rows: usize) -> Vec<Action> {
        let max = self.max_scroll(self.current);
        let conv = self.conv_mut();
        conv.scroll = (conv.scroll + rows).min(max);
        if conv.scroll == max {
            return self.older(PAGE);
        }
        Vec::new()
    }

    pub fn scroll_down(&mut self, rows: usize) {
        let conv = self.conv_mut();
        conv.scroll = conv.scroll.saturating_sub(rows);
        if conv.scroll == 0 {
            conv.below = 0;
        }
    }

    /// Rows of messages on screen: one fewer while scrolled (that row says so).
    fn visible(&self) -> usize {
        let (_, height) = self.pane();
        height
            .saturating_sub(usize::from(self.conv().scroll > 0))
            .max(1)
    }

    /// PageUp: the row at the top goes to the bottom.
    pub fn page_up(&mut self) -> Vec<Action> {
        let rows = self.visible().saturating_sub(1).max(1);
        self.scroll_up(rows)
    }

    /// PageDown: the row at the bottom goes to the top.
    pub fn page_down(&mut self) {
        let rows = self.visible().saturating_sub(1).max(1);
        self.scroll_down(rows);
    }

    /// Asks for `limit` messages before the oldest one here.
    fn older(&mut self, limit: u16) -> Vec<Action> {
        let online = self.conn == ConnState::Online;
        let conv = self.conv_mut();
        if conv.loading || !conv.more_before || conv.key.history_name().is_none() || !online {
            return Vec::new();
        }
        conv.loading = true;
        conv.loaded = true;
        vec![Action::History {
            conv: conv.key.clone(),
            before: conv.oldest_id(),
            limit,
        }]
    }

    /// Conversations with unread messages (for the narrow layout's title and the status
    /// line), in sidebar order.
    pub fn activity(&self) -> Vec<(&Conv, usize)> {
        self.convs
            .iter()
            .enumerate()
            .filter(|(i, c)| *i != self.current && c.unread > 0)
            .map(|(i, c)| (c, i))
            .collect()
    }
}

/// `dir/name`, or `dir/name (1)`, `dir/name (2)`… if taken (by a file or a part file).
/// The name loses any path it carries.
pub fn unique_path(dir: &std::path::Path, name: &str) -> PathBuf {
    let name = std::path::Path::new(name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .unwrap_or_else(|| "download".to_string());
    let candidate = dir.join(&name);
    // A part file of the same name is ours from a cut download: resume it.
    if !candidate.exists() {
        return candidate;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_string(), format!(".{e}")),
        _ => (name.clone(), String::new()),
    };
    (1..)
        .map(|i| dir.join(format!("{stem} ({i}){ext}")))
        .find(|p| !p.exists())
        .unwrap_or(candidate)
}

/// Text for a byte count of a transfer, for the status line.
pub fn progress_text(t: &Transfer) -> String {
    let pct = (t.done * 100).checked_div(t.total).unwrap_or(100);
    let arrow = if t.upload { "↑" } else { "↓" };
    format!(
        "{arrow} {} {pct}% of {}",
        text::truncate(&text::clean(&t.name), 20),
        text::size(t.total)
    )
}
