//! `parley chat`: a full-screen terminal client, and its non-interactive modes for scripts.
//!
//! Built like the rest of the crate: `state` is the model (pure, tested without a
//! terminal), `render` draws it, `input` turns keys into model changes, `net` runs the
//! model's requests on a `Link` in tasks of their own. This file reads the command line,
//! logs in, and runs the loop that ties them together.

mod commands;
mod editor;
mod input;
mod layout;
mod net;
mod render;
mod script;
mod state;
mod terminal;
mod text;
mod theme;
mod tokens;
mod view;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio::sync::mpsc;

use crate::{Endpoint, Error, Link, LinkEvent, LinkOptions, LinkStatus, TlsOptions};
use state::{Action, App, Delivery, Entry};
use theme::Theme;
use tokens::TokenFile;

/// Exit codes: what happened, for scripts.
pub mod exit {
    /// Done: sent and stored; logged out; a tail stopped by a signal.
    pub const OK: u8 = 0;
    /// Something else failed (a local error: terminal, file).
    pub const FAILED: u8 = 1;
    /// The command line is wrong (clap's own code).
    pub const USAGE: u8 = 2;
    /// The server could not be reached.
    pub const UNREACHABLE: u8 = 3;
    /// The login was refused: wrong name or password, revoked token, throttled, or the
    /// device in use elsewhere; or there was no password to log in with.
    pub const LOGIN: u8 = 4;
    /// The server refused the request (not a member, no such user, rate limited): nothing
    /// was stored.
    pub const REFUSED: u8 = 5;
    /// `--timeout` passed before the server confirmed: the message may or may not be stored.
    pub const TIMEOUT: u8 = 6;
}

const AFTER_HELP: &str = "\
Keys: Enter sends; Tab completes; Up/Down recall sent lines; PageUp/PageDown and the mouse
wheel scroll (PageUp at the top loads older messages); Ctrl-N/Ctrl-P or Alt-1..9 switch
conversations; Ctrl-W, Ctrl-U, Ctrl-K delete; Ctrl-C quits. /help lists the commands:
/join /leave /dm /close /who /rooms /contacts /accept /decline /send /get /history /quit.

The password is read from PARLEY_PASSWORD if it is set, else asked for without echo (when
standard input is a terminal; scripts without a stored token need PARLEY_PASSWORD). After
a password login the device's token is kept in $XDG_CONFIG_HOME/parley/tokens/ (default
~/.config/parley/tokens/, mode 0600) and used instead of the password next time.

Colours use the terminal's palette and read on light and dark backgrounds; NO_COLOR=1
turns them off.

Exit status (for --send, --tail and --logout; the full-screen client exits 0 on /quit):
  0  done (sent and stored; logged out; --tail stopped by SIGINT/SIGTERM)
  1  a local failure (terminal, file)
  2  bad command line
  3  the server could not be reached
  4  login refused (wrong name or password, revoked token, throttled, device in use),
     or no password to log in with
  5  the server refused the request (not a member, no such user, rate limited): not stored
  6  --timeout passed before the server confirmed: the message may or may not be stored";

/// `parley chat`'s command line.
#[derive(Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct ChatArgs {
    /// The server's address.
    #[arg(value_name = "HOST:PORT", default_value = "127.0.0.1:5555")]
    pub server: String,
    /// Your user name.
    #[arg(long, short, env = "PARLEY_USER")]
    pub user: String,
    /// This device's name: its own place in every conversation and its own token
    /// [default: the host name; --send and --tail use HOST-send and HOST-tail, so they
    /// can run beside the full-screen client].
    #[arg(long)]
    pub device: Option<String>,
    /// Speak TLS (the server must have a certificate; see `parley cert`).
    #[arg(long)]
    pub tls: bool,
    /// Trust the certificates in this PEM file instead of the system's (implies --tls).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Create the account first (asks for the password twice when it is typed).
    #[arg(long)]
    pub register: bool,
    /// Revoke this device's token on the server, forget it here, and exit.
    #[arg(long, conflicts_with_all = ["send", "tail", "register"])]
    pub logout: bool,
    /// Send TEXT to TARGET (#room, or a user name) without the full screen; exit once it
    /// is stored. TEXT `-` reads the message from standard input.
    #[arg(long, num_args = 2, value_names = ["TARGET", "TEXT"], conflicts_with = "tail")]
    pub send: Option<Vec<String>>,
    /// Print TARGET's new messages (#room, a user name, or * for messages to everyone) as
    /// lines `DATE TIME TARGET <FROM> TEXT`, until interrupted. The device's place is kept:
    /// the next --tail starts with what arrived in between.
    #[arg(long, value_name = "TARGET")]
    pub tail: Option<String>,
    /// Where /get saves files [default: $XDG_DOWNLOAD_DIR, else ~/Downloads if it exists,
    /// else the current directory].
    #[arg(long, value_name = "DIR", env = "PARLEY_DOWNLOAD_DIR")]
    pub download_dir: Option<PathBuf>,
    /// How long --send and --logout may take, in seconds (a dropped connection is retried
    /// within it).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
    /// The first wait before reconnecting, in milliseconds (doubled on each failure up to
    /// 30 s).
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub reconnect_ms: u64,
}

/// Runs `parley chat`; returns the exit status (see `exit`).
pub fn run(args: ChatArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("parley chat: starting the async runtime: {e}");
            return exit::FAILED;
        }
    };
    let code = runtime.block_on(async move {
        if args.logout {
            script::logout(&args).await
        } else if let Some(send) = &args.send {
            script::send(&args, &send[0], &send[1]).await
        } else if let Some(target) = &args.tail {
            script::tail(&args, target).await
        } else {
            interactive(&args).await
        }
    });
    // Tasks still running (a link's reconnect loop) are abandoned, not awaited.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

/// The device name: `--device`, else the host name (with `suffix` for script modes), made
/// into a valid name (no spaces or control characters, at most 32 bytes).
fn device_name(args: &ChatArgs, suffix: &str) -> String {
    if let Some(d) = &args.device {
        return d.clone();
    }
    let host = hostname().unwrap_or_else(|| "terminal".to_string());
    let mut name: String = host
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '-'
            } else {
                c
            }
        })
        .collect();
    let max = 32 - suffix.len();
    while name.len() > max {
        name.pop();
    }
    format!("{name}{suffix}")
}

/// The machine's name, as the kernel has it (or `HOSTNAME`).
fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .chain(std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
}

fn endpoint(args: &ChatArgs) -> Endpoint {
    let mut endpoint = Endpoint::tcp(args.server.clone());
    if args.tls || args.ca.is_some() {
        endpoint.tls = Some(TlsOptions {
            ca: args.ca.clone(),
        });
    }
    endpoint
}

/// The password: `PARLEY_PASSWORD`, else asked on the terminal without echo (twice when
/// registering).
fn password(args: &ChatArgs, confirm: bool) -> Result<String, String> {
    if let Ok(p) = std::env::var("PARLEY_PASSWORD") {
        return Ok(p);
    }
    // A script (standard input not a terminal) is never stopped by a question.
    if !std::io::stdin().is_terminal() {
        return Err("no password: set PARLEY_PASSWORD (standard input is not a terminal)".into());
    }
    let prompt = format!("password for {} at {}: ", args.user, args.server);
    let first = rpassword::prompt_password(prompt)
        .map_err(|e| format!("no password (set PARLEY_PASSWORD, or run in a terminal): {e}"))?;
    if confirm {
        let again =
            rpassword::prompt_password("the same password again: ").map_err(|e| e.to_string())?;
        if again != first {
            return Err("the two passwords differ".into());
        }
    }
    Ok(first)
}

/// A logged-in link, or why there is none.
pub(crate) struct Login {
    pub link: Link,
    pub events: mpsc::Receiver<LinkEvent>,
    /// Events read while waiting for the first outcome, to be handled first.
    pub early: Vec<LinkEvent>,
    pub token: Option<TokenFile>,
}

/// How a login attempt ended.
pub(crate) enum Outcome {
    Online(Login),
    /// Not reachable yet; the link keeps trying.
    Unreachable(Login, String),
    /// No password to log in with: none in the environment and no terminal to ask on.
    NoPassword(String),
    Failed(Error),
}

/// Spawns a link with the stored token (or the password) and waits for its first outcome.
/// A refused token is forgotten and the password asked for; a refused password is asked
/// again (three times) when it was typed.
pub(crate) async fn login(args: &ChatArgs, device: &str, max_attempts: Option<u32>) -> Outcome {
    let token_file =
        tokens::config_dir().map(|dir| TokenFile::new(&dir, &args.server, &args.user, device));
    let mut token = if args.register {
        None
    } else {
        token_file.as_ref().and_then(TokenFile::load)
    };
    let typed = std::env::var_os("PARLEY_PASSWORD").is_none();
    let mut tries = 0;
    loop {
        let password = match token {
            Some(_) => None,
            None => match password(args, args.register && tries == 0) {
                Ok(p) => Some(p),
                Err(e) => return Outcome::NoPassword(e),
            },
        };
        let mut options = LinkOptions::new(endpoint(args), &args.user, device);
        options.token = token.clone();
        options.password = password;
        options.register = args.register && tries == 0;
        options.backoff_first = Duration::from_millis(args.reconnect_ms.max(10));
        options.max_attempts = max_attempts;
        let (link, mut events) = Link::spawn(options);
        let mut early = Vec::new();
        let outcome = loop {
            let Some(event) = events.recv().await else {
                break Err(Error::Closed);
            };
            let status = match &event {
                LinkEvent::Status(s) => Some(s.clone()),
                _ => None,
            };
            early.push(event);
            match status {
                Some(LinkStatus::Online) => break Ok(None),
                Some(LinkStatus::Offline { reason, .. }) => break Ok(Some(reason)),
                Some(LinkStatus::Stopped(e)) => break Err(e),
                _ => {}
            }
        };
        let login = |link, events, early| Login {
            link,
            events,
            early,
            token: token_file.clone(),
        };
        match outcome {
            Ok(None) => return Outcome::Online(login(link, events, early)),
            Ok(Some(reason)) => return Outcome::Unreachable(login(link, events, early), reason),
            Err(e) if e.is_auth() && token.is_some() => {
                // The token was revoked or expired: forget it, use the password.
                if let Some(f) = &token_file {
                    let _ = f.remove();
                }
                eprintln!("the stored device token was refused; log in with the password");
                token = None;
            }
            Err(e)
                if e == Error::Refused(parley_proto::binary::code::UNAUTHORIZED)
                    && typed
                    && tries < 2 =>
            {
                eprintln!("{e}");
                tries += 1;
            }
            Err(e) => return Outcome::Failed(e),
        }
    }
}

/// The exit status for a failed login.
fn login_failure(e: &Error) -> u8 {
    match e {
        Error::Connect(_) | Error::Disconnected => exit::UNREACHABLE,
        Error::Refused(_) => exit::LOGIN,
        _ => exit::FAILED,
    }
}

/// Where downloads go.
fn download_dir(args: &ChatArgs) -> PathBuf {
    if let Some(dir) = &args.download_dir {
        return dir.clone();
    }
    if let Some(dir) = std::env::var_os("XDG_DOWNLOAD_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let dir = PathBuf::from(home).join("Downloads");
        if dir.is_dir() {
            return dir;
        }
    }
    PathBuf::from(".")
}

/// The full-screen client.
async fn interactive(args: &ChatArgs) -> u8 {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        eprintln!("parley chat: the full-screen client needs a terminal (scripts: --send, --tail)");
        return exit::USAGE;
    }
    let device = device_name(args, "");
    let login = match login(args, &device, None).await {
        Outcome::Online(login) | Outcome::Unreachable(login, _) => login,
        Outcome::NoPassword(e) => {
            eprintln!("parley chat: {e}");
            return exit::LOGIN;
        }
        Outcome::Failed(e) => {
            eprintln!("parley chat: {e}");
            return login_failure(&e);
        }
    };
    match run_screen(args, &device, login).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("parley chat: {e}");
            exit::FAILED
        }
    }
}

/// Messages of ours still waiting for their OK.
fn pending(app: &App) -> usize {
    app.convs
        .iter()
        .flat_map(|c| &c.entries)
        .filter(|e| matches!(e, Entry::Msg(m) if m.status == Delivery::Pending))
        .count()
}

async fn run_screen(args: &ChatArgs, device: &str, login: Login) -> std::io::Result<()> {
    let theme = Theme::from_env();
    let (mut screen, mut keys) = terminal::Screen::enter()?;
    let size = screen.terminal.size()?;
    let mut app = App::new(
        &args.user,
        device,
        &args.server,
        download_dir(args),
        text::now_ms(),
    );
    app.resize(size.width, size.height);
    let (action_tx, action_rx) = mpsc::unbounded_channel();
    let (update_tx, mut updates) = mpsc::channel(1024);
    let Login {
        link,
        events,
        early,
        token,
    } = login;
    let net = tokio::spawn(net::run(link, early, events, action_rx, update_tx, token));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let send = |actions: Vec<Action>| {
        for action in actions {
            let _ = action_tx.send(action);
        }
    };
    let mut quit_at: Option<tokio::time::Instant> = None;
    loop {
        if std::mem::take(&mut app.redraw) {
            screen.terminal.clear()?;
        }
        screen
            .terminal
            .draw(|frame| render::draw(frame, &app, &theme))?;
        if app.quit && quit_at.is_none() {
            // Messages in flight get a moment to be confirmed before the screen goes.
            quit_at = Some(tokio::time::Instant::now() + Duration::from_secs(3));
        }
        if let Some(at) = quit_at {
            if pending(&app) == 0 || tokio::time::Instant::now() >= at {
                break;
            }
        }
        tokio::select! {
            key = keys.recv() => {
                let Some(key) = key else { break };
                send(input::handle(&mut app, key));
                // Typing fast (or a paste) is drawn once.
                for _ in 0..64 {
                    match keys.try_recv() {
                        Ok(key) => send(input::handle(&mut app, key)),
                        Err(_) => break,
                    }
                }
            }
            update = updates.recv() => {
                let Some(update) = update else { break };
                let actions = app.apply(update);
                send(actions);
                for _ in 0..512 {
                    match updates.try_recv() {
                        Ok(update) => {
                            let actions = app.apply(update);
                            send(actions);
                        }
                        Err(_) => break,
                    }
                }
            }
            _ = tick.tick() => {
                let actions = app.tick(text::now_ms());
                send(actions);
            }
        }
    }
    let _ = action_tx.send(Action::Quit);
    drop(screen);
    let left = pending(&app);
    if left > 0 {
        eprintln!(
            "parley chat: {left} message(s) were not confirmed by the server before quitting"
        );
    }
    net.abort();
    Ok(())
}

#[cfg(test)]
mod tests;
