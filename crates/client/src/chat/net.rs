//! The network side of the terminal client: runs the model's requests on the link, each in
//! a task of its own (a download never holds up a message), and turns the link's events and
//! the answers into updates for the model. Nothing here waits on the screen, and the screen
//! never waits on this: requests go on an unbounded channel, updates come back on a channel
//! the screen drains every frame.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parley_proto::binary::UserEntry;
use tokio::sync::mpsc;

use super::state::{Action, ConvKey, NoteKind, Transfer, Update};
use super::text;
use super::tokens::TokenFile;
use crate::{Link, LinkEvent, LinkStatus, Page};

/// At most this many rooms are checked for membership at login.
const MAX_ROOMS_CHECKED: usize = 500;

/// Runs until the model asks to quit or the screen goes away. `early` are events the
/// login read before the screen existed.
pub async fn run(
    link: Link,
    early: Vec<LinkEvent>,
    mut events: mpsc::Receiver<LinkEvent>,
    mut actions: mpsc::UnboundedReceiver<Action>,
    updates: mpsc::Sender<Update>,
    token: Option<TokenFile>,
) {
    for event in early {
        if updates.send(from_link(event, &token)).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                if updates.send(from_link(event, &token)).await.is_err() {
                    break;
                }
            }
            action = actions.recv() => {
                match action {
                    None | Some(Action::Quit) => break,
                    Some(action) => {
                        tokio::spawn(perform(link.clone(), action, updates.clone()));
                    }
                }
            }
        }
    }
    link.close();
}

/// A link event as the model's update; a new token is stored first.
fn from_link(event: LinkEvent, token: &Option<TokenFile>) -> Update {
    match event {
        LinkEvent::Status(LinkStatus::Stopped(e)) if e.is_auth() => {
            // The token no longer logs in: forget it, so the next start asks for the password.
            if let Some(file) = token {
                let _ = file.remove();
            }
            Update::Link(LinkStatus::Stopped(e))
        }
        LinkEvent::Status(status) => Update::Link(status),
        LinkEvent::Message(event) => Update::Message(event),
        LinkEvent::Deleted {
            event, message_seq, ..
        } => Update::Deleted { event, message_seq },
        LinkEvent::Presence {
            user,
            online,
            last_seen,
        } => Update::Users(vec![UserEntry {
            name: Bytes::from(user),
            online,
            last_seen,
        }]),
        LinkEvent::Notice {
            room,
            change,
            user,
            by,
            text,
        } => Update::Notice {
            room,
            change,
            user,
            by,
            text,
        },
        LinkEvent::Token(t) => Update::TokenSaved(match token {
            Some(file) => file
                .save(&t.token, t.expires_at)
                .map_err(|e| format!("{}: {e}", file.path.display())),
            None => Err("no config directory ($HOME is not set)".to_string()),
        }),
    }
}

fn note(conv: Option<ConvKey>, text: impl Into<String>, kind: NoteKind) -> Update {
    Update::Note {
        conv,
        text: text.into(),
        kind,
    }
}

/// Carries out one request and reports.
async fn perform(link: Link, action: Action, updates: mpsc::Sender<Update>) {
    let error = |text: String| note(None, text, NoteKind::Error);
    let update = match action {
        Action::Quit => return,
        Action::Send {
            conv,
            local,
            text,
            time,
        } => {
            let Some(target) = conv.target() else { return };
            let result = link.send(&target, Bytes::from(text), time).await;
            Update::Sent {
                conv,
                local,
                result: result.map_err(|e| e.to_string()),
            }
        }
        Action::Join(room) => {
            let r = room.clone();
            match link
                .retry(|c| {
                    let r = r.clone();
                    async move { c.join(&r).await }
                })
                .await
            {
                Ok(()) => Update::Joined(room),
                Err(e) => error(format!("/join {room}: {e}")),
            }
        }
        Action::Leave(room) => {
            let r = room.clone();
            match link
                .retry(|c| {
                    let r = r.clone();
                    async move { c.leave(&r).await }
                })
                .await
            {
                Ok(()) => Update::Left(room),
                Err(e) => error(format!("/leave {room}: {e}")),
            }
        }
        Action::History {
            conv,
            before,
            limit,
        } => {
            let Some(name) = conv.history_name().map(str::to_string) else {
                return;
            };
            let page = before.map_or(Page::Latest, Page::BeforeId);
            let got = link
                .retry(|c| {
                    let name = name.clone();
                    async move { c.history(&name, page, limit).await }
                })
                .await;
            match got {
                Ok(events) => Update::History {
                    conv,
                    events,
                    asked: limit,
                },
                Err(e) => Update::HistoryFailed {
                    conv,
                    error: e.to_string(),
                },
            }
        }
        Action::Members(room) => {
            let r = room.clone();
            match link
                .retry(|c| {
                    let r = r.clone();
                    async move { c.members(&r).await }
                })
                .await
            {
                Ok(members) => Update::Members { room, members },
                Err(_) => return,
            }
        }
        Action::Watch(users) => match link.watch(users).await {
            Ok(found) => Update::Users(found),
            Err(_) => return,
        },
        Action::Users => match link.retry(|c| async move { c.users().await }).await {
            Ok(users) => Update::Users(users),
            Err(_) => return,
        },
        Action::Rooms => return my_rooms(&link, &updates).await,
        Action::ListRooms => match link.retry(|c| async move { c.rooms().await }).await {
            Ok(rooms) => {
                if rooms.is_empty() {
                    let _ = updates
                        .send(note(
                            None,
                            "no rooms yet: /join #name creates one",
                            NoteKind::Info,
                        ))
                        .await;
                }
                for r in &rooms {
                    let line = format!(
                        "{}  {} members, {} online",
                        String::from_utf8_lossy(&r.name),
                        r.members,
                        r.online
                    );
                    let _ = updates.send(note(None, line, NoteKind::Info)).await;
                }
                Update::Rooms(rooms)
            }
            Err(e) => error(format!("/rooms: {e}")),
        },
        Action::Contacts { show } => {
            match link.retry(|c| async move { c.contacts().await }).await {
                Ok(list) => Update::Contacts { list, show },
                Err(e) if show => error(format!("/contacts: {e}")),
                Err(_) => return,
            }
        }
        Action::ContactRequest(user) => {
            let u = user.clone();
            let done = link
                .retry(|c| {
                    let u = u.clone();
                    async move { c.contact_request(&u).await }
                })
                .await;
            report_contact(
                &link,
                &updates,
                done,
                format!("asked {user} to be a contact"),
                &user,
            )
            .await
        }
        Action::ContactAnswer { user, accept } => {
            let u = user.clone();
            let done = link
                .retry(|c| {
                    let u = u.clone();
                    async move { c.contact_answer(&u, accept).await }
                })
                .await;
            let what = if accept { "accepted" } else { "declined" };
            report_contact(
                &link,
                &updates,
                done,
                format!("{what} {user}'s request"),
                &user,
            )
            .await
        }
        Action::ContactRemove(user) => {
            let u = user.clone();
            let done = link
                .retry(|c| {
                    let u = u.clone();
                    async move { c.contact_remove(&u).await }
                })
                .await;
            report_contact(
                &link,
                &updates,
                done,
                format!("removed {user} from your contacts"),
                &user,
            )
            .await
        }
        Action::FindUser(user) => {
            let u = user.clone();
            match link
                .retry(|c| {
                    let u = u.clone();
                    async move { c.search(&u, 50).await }
                })
                .await
            {
                Ok(found) if found.iter().any(|f| *f.name == *user.as_bytes()) => {
                    let exact = found.into_iter().filter(|f| *f.name == *user.as_bytes());
                    let _ = updates.send(Update::Users(exact.collect())).await;
                    Update::UserFound(user)
                }
                Ok(_) => note(
                    Some(ConvKey::Direct(user.clone())),
                    format!("no user is called {user}: messages to them will be refused"),
                    NoteKind::Error,
                ),
                Err(_) => return,
            }
        }
        Action::Upload {
            conv,
            path,
            caption,
            id,
            time,
        } => {
            let Some(target) = conv.target() else { return };
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let progress = throttled(updates.clone(), id, name.clone(), true);
            let result = match link.upload(&path, progress).await {
                Ok(info) => link
                    .send_file(&target, &info, &caption, time)
                    .await
                    .map(|()| info),
                Err(e) => Err(e),
            };
            match result {
                Ok(info) => {
                    let mut text = format!(
                        "[file name=\"{}\" size={} type={} sha256={}]",
                        info.name.replace('"', "'"),
                        info.size,
                        info.mime,
                        info.sha256
                    );
                    if !caption.is_empty() {
                        text.push(' ');
                        text.push_str(&caption);
                    }
                    let _ = updates
                        .send(Update::FileSent {
                            conv: conv.clone(),
                            text,
                            time,
                        })
                        .await;
                    Update::TransferDone {
                        id,
                        conv,
                        result: Ok(format!(
                            "sent {} ({}), SHA-256 {}",
                            info.name,
                            text::size(info.size),
                            info.sha256
                        )),
                    }
                }
                Err(e) => Update::TransferDone {
                    id,
                    conv,
                    result: Err(format!("/send {name}: {e}")),
                },
            }
        }
        Action::Download {
            conv,
            file,
            dest,
            id,
        } => {
            let progress = throttled(updates.clone(), id, file.name.clone(), false);
            let made = match dest.parent() {
                Some(dir) => tokio::fs::create_dir_all(dir).await,
                None => Ok(()),
            };
            let result = match made {
                Ok(()) => link.download(&file, &dest, progress).await,
                Err(e) => Err(crate::Error::Local(format!("{}: {e}", dest.display()))),
            };
            Update::TransferDone {
                id,
                conv,
                result: match result {
                    Ok(()) => Ok(format!(
                        "saved {} ({}, SHA-256 verified)",
                        dest.display(),
                        text::size(file.size)
                    )),
                    Err(e) => Err(format!("/get {}: {e}", file.name)),
                },
            }
        }
    };
    let _ = updates.send(update).await;
}

/// Reports a contact change and refreshes the list.
async fn report_contact(
    link: &Link,
    updates: &mpsc::Sender<Update>,
    done: Result<(), crate::Error>,
    ok: String,
    user: &str,
) -> Update {
    match done {
        Ok(()) => {
            let _ = updates.send(note(None, ok, NoteKind::Info)).await;
            match link.retry(|c| async move { c.contacts().await }).await {
                Ok(list) => Update::Contacts { list, show: false },
                Err(e) => note(None, format!("contacts: {e}"), NoteKind::Error),
            }
        }
        Err(e) => note(None, format!("{user}: {e}"), NoteKind::Error),
    }
}

/// The rooms this user is in: every room listed, its members asked for (a few at a time),
/// those that include this user kept.
async fn my_rooms(link: &Link, updates: &mpsc::Sender<Update>) {
    let Ok(rooms) = link.retry(|c| async move { c.rooms().await }).await else {
        return;
    };
    let _ = updates.send(Update::Rooms(rooms.clone())).await;
    let me = link.user().as_bytes().to_vec();
    let mut mine = Vec::new();
    let mut checks = tokio::task::JoinSet::new();
    let mut seen = HashSet::new();
    for room in rooms.into_iter().take(MAX_ROOMS_CHECKED) {
        let name = String::from_utf8_lossy(&room.name).into_owned();
        if !seen.insert(name.clone()) {
            continue;
        }
        let link = link.clone();
        checks.spawn(async move {
            let n = name.clone();
            let members = link
                .retry(|c| {
                    let n = n.clone();
                    async move { c.members(&n).await }
                })
                .await;
            (name, members)
        });
        // A few in flight at once: the server answers in order anyway.
        while checks.len() >= 16 {
            collect(checks.join_next().await, &me, &mut mine);
        }
    }
    while let Some(done) = checks.join_next().await {
        collect(Some(done), &me, &mut mine);
    }
    let names = mine.iter().map(|(room, _)| room.clone()).collect();
    let _ = updates.send(Update::MyRooms(names)).await;
    for (room, members) in mine {
        let _ = updates.send(Update::Members { room, members }).await;
    }
}

type Check = (
    String,
    Result<Vec<parley_proto::binary::UserEntry>, crate::Error>,
);

type Members = Vec<parley_proto::binary::UserEntry>;

fn collect(
    done: Option<Result<Check, tokio::task::JoinError>>,
    me: &[u8],
    mine: &mut Vec<(String, Members)>,
) {
    if let Some(Ok((room, Ok(members)))) = done {
        if members.iter().any(|m| *m.name == *me) {
            mine.push((room, members));
        }
    }
}

/// A progress callback that reports at most ten times a second (and always the end).
fn throttled(
    updates: mpsc::Sender<Update>,
    id: u64,
    name: String,
    upload: bool,
) -> impl FnMut(u64, u64) + Send {
    let mut last: Option<Instant> = None;
    move |done, total| {
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if due || done == total {
            last = Some(Instant::now());
            let _ = updates.try_send(Update::Progress(Transfer {
                id,
                name: name.clone(),
                upload,
                done,
                total,
            }));
        }
    }
}
