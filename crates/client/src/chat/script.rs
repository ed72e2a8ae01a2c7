//! `parley chat` for scripts: `--send` (exit once stored), `--tail` (new messages as
//! lines), `--logout`. Each says what happened in its exit status (see `exit`).

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;

use super::state::ConvKey;
use super::{device_name, exit, login, login_failure, text, ChatArgs, Login, Outcome};
use crate::{Error, LinkEvent, LinkStatus};

/// Connection attempts before a script gives up on an unreachable server.
const ATTEMPTS: u32 = 3;

/// A target as typed: `#room` is a room, `*` is everyone, anything else (an optional `@`
/// taken off) a user.
fn conv_key(target: &str) -> ConvKey {
    if target == "*" {
        ConvKey::Everyone
    } else if target.starts_with('#') {
        ConvKey::Room(target.to_string())
    } else {
        ConvKey::Direct(target.trim_start_matches('@').to_string())
    }
}

/// Logs in for a script, or says why not (on stderr) with the exit status.
async fn script_login(args: &ChatArgs, suffix: &str) -> Result<Login, u8> {
    let device = device_name(args, suffix);
    match login(args, &device, Some(ATTEMPTS)).await {
        Outcome::Online(login) => Ok(login),
        // `max_attempts` makes the link stop, so this is only a first failure: wait for it.
        Outcome::Unreachable(mut login, _) => loop {
            match login.events.recv().await {
                Some(LinkEvent::Status(LinkStatus::Online)) => return Ok(login),
                Some(LinkEvent::Status(LinkStatus::Stopped(e))) => {
                    eprintln!("parley chat: {e}");
                    return Err(login_failure(&e));
                }
                Some(_) => {}
                None => return Err(exit::UNREACHABLE),
            }
        },
        Outcome::NoPassword(e) => {
            eprintln!("parley chat: {e}");
            Err(exit::LOGIN)
        }
        Outcome::Failed(e) => {
            eprintln!("parley chat: {e}");
            Err(login_failure(&e))
        }
    }
}

/// Keeps the link's events drained (pushes wait for their consumer) and stores new tokens.
fn drain(login: Login) -> crate::Link {
    let Login {
        link,
        mut events,
        early,
        token,
    } = login;
    let save = move |event: &LinkEvent| {
        if let (LinkEvent::Token(t), Some(file)) = (event, &token) {
            if let Err(e) = file.save(&t.token, t.expires_at) {
                eprintln!(
                    "parley chat: device token not saved: {}: {e}",
                    file.path.display()
                );
            }
        }
    };
    early.iter().for_each(&save);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            save(&event);
        }
    });
    link
}

/// `--send TARGET TEXT`: exit 0 once the server stored it.
pub async fn send(args: &ChatArgs, target: &str, text: &str) -> u8 {
    let body = if text == "-" {
        let mut buf = Vec::new();
        if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf) {
            eprintln!("parley chat: reading standard input: {e}");
            return exit::FAILED;
        }
        while buf.last() == Some(&b'\n') {
            buf.pop();
        }
        buf
    } else {
        text.as_bytes().to_vec()
    };
    let to = match conv_key(target).target() {
        Some(to) => to,
        None => {
            eprintln!("parley chat: cannot send to {target}: use #room or a user name");
            return exit::USAGE;
        }
    };
    let deadline = Duration::from_secs(args.timeout.max(1));
    let work = async {
        let login = script_login(args, "-send").await?;
        let link = drain(login);
        let result = link.send(&to, Bytes::from(body), link.fresh_time()).await;
        link.close();
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                eprintln!("parley chat: {}: {e}", target);
                Err(match e {
                    Error::Refused(_) => exit::REFUSED,
                    Error::Connect(_) | Error::Disconnected => exit::UNREACHABLE,
                    _ => exit::FAILED,
                })
            }
        }
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(Ok(())) => exit::OK,
        Ok(Err(code)) => code,
        Err(_) => {
            eprintln!(
                "parley chat: no confirmation within {}s: the message may or may not be stored",
                deadline.as_secs()
            );
            exit::TIMEOUT
        }
    }
}

/// One message as a line (or lines, for a message with line breaks) of `--tail`.
pub fn tail_line(target: &str, from: &str, body: &str, time: u64) -> String {
    let ms = text::unix_ms(time);
    let (y, mo, d, h, mi, s) = text::local(ms);
    let stamp = format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}");
    body.split('\n')
        .map(|line| {
            format!(
                "{stamp} {target} <{}> {}",
                text::clean(from),
                text::clean(line)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `--tail TARGET`: prints TARGET's messages as they come, until SIGINT or SIGTERM.
pub async fn tail(args: &ChatArgs, target: &str) -> u8 {
    let want = conv_key(target);
    let login = match script_login(args, "-tail").await {
        Ok(login) => login,
        Err(code) => return code,
    };
    let Login {
        link,
        mut events,
        early,
        token,
    } = login;
    let (Ok(mut term), Ok(mut int)) = (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    ) else {
        eprintln!("parley chat: cannot install signal handlers");
        return exit::FAILED;
    };
    let me = args.user.clone();
    let mut out = std::io::stdout().lock();
    let mut handle = |event: LinkEvent| -> Option<u8> {
        match event {
            LinkEvent::Message(m) => {
                if ConvKey::of(&m, &me) != want {
                    return None;
                }
                let line = tail_line(
                    target,
                    &String::from_utf8_lossy(&m.from),
                    &String::from_utf8_lossy(&m.message),
                    m.time,
                );
                // A closed pipe (`| head`) ends the tail quietly.
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return Some(exit::OK);
                }
            }
            LinkEvent::Status(LinkStatus::Offline {
                reason, retry_in, ..
            }) => {
                eprintln!(
                    "parley chat: {reason}; reconnecting in {:.1}s",
                    retry_in.as_secs_f64()
                );
            }
            LinkEvent::Status(LinkStatus::Stopped(e)) => {
                eprintln!("parley chat: {e}");
                return Some(login_failure(&e));
            }
            LinkEvent::Token(t) => {
                if let Some(file) = &token {
                    let _ = file.save(&t.token, t.expires_at);
                }
            }
            _ => {}
        }
        None
    };
    for event in early {
        if let Some(code) = handle(event) {
            return code;
        }
    }
    let code = loop {
        tokio::select! {
            _ = term.recv() => break exit::OK,
            _ = int.recv() => break exit::OK,
            event = events.recv() => match event {
                None => break exit::UNREACHABLE,
                Some(event) => if let Some(code) = handle(event) { break code },
            },
        }
    };
    link.close();
    code
}

/// `--logout`: revokes this device's tokens and forgets the stored one.
pub async fn logout(args: &ChatArgs) -> u8 {
    let deadline = Duration::from_secs(args.timeout.max(1));
    let device = device_name(args, "");
    let work = async {
        let login = match login(args, &device, Some(ATTEMPTS)).await {
            Outcome::Online(login) => login,
            Outcome::Unreachable(_, reason) => {
                eprintln!("parley chat: {reason}");
                return exit::UNREACHABLE;
            }
            Outcome::NoPassword(e) => {
                eprintln!("parley chat: {e}");
                return exit::LOGIN;
            }
            Outcome::Failed(e) => {
                eprintln!("parley chat: {e}");
                return login_failure(&e);
            }
        };
        let token = login.token.clone();
        let link = drain(login);
        let result = match link.connection().await {
            Ok(conn) => conn.logout(false).await,
            Err(e) => Err(e),
        };
        link.close();
        match result {
            Ok(()) => {
                if let Some(file) = &token {
                    if let Err(e) = file.remove() {
                        eprintln!("parley chat: {}: {e}", file.path.display());
                        return exit::FAILED;
                    }
                }
                println!(
                    "logged out {}@{} (its tokens are revoked)",
                    args.user, device
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("parley chat: logout: {e}");
                exit::REFUSED
            }
        }
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(code) => code,
        Err(_) => {
            eprintln!("parley chat: no answer within {}s", deadline.as_secs());
            exit::TIMEOUT
        }
    }
}
