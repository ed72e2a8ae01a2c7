//! `parley admin`: the operator's commands, over a Unix socket in the data directory.
//!
//! The socket (`data_dir/admin.sock`) is created with mode 0600 (bound under a temporary
//! name, restricted, then renamed into place, so it is never reachable by others even for
//! a moment): whoever may read the data directory's files may administer the server, and
//! nobody else; nothing of it is on the network.
//!
//! The protocol is one JSON object per line each way, like mini-redis's frames but in
//! JSON: a request `{"command":"users.list", ...arguments}` is answered by
//! `{"ok":true,"data":...}` or `{"ok":false,"error":"..."}`, in order; a connection may send
//! any number of requests. Each command is one variant of [`Request`] and one handler
//! (`users.rs`, `devices.rs`, `rooms.rs`, `sessions.rs`, `control.rs`, `backup.rs`).
//!
//! With the server stopped, `parley admin` runs the same handlers in its own process over
//! the data directory (`offline.rs`): the store and the hub as the server would open them,
//! without listeners, under the data directory's lock (`lock.rs`) that a running server
//! holds, so the two never write at once. Sessions, reload and drain need a running server.

mod backup;
mod control;
mod devices;
mod lock;
mod offline;
mod rooms;
mod sessions;
mod users;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use control::{Control, ReloadConfig};
pub use lock::DataLock;
pub use offline::run_offline;

use crate::session::Shared;

/// The admin socket inside the data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// Longest request line read (a password is the longest argument).
const MAX_REQUEST: usize = 64 * 1024;

/// One operator command. `command` names it, the other fields are its arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", deny_unknown_fields)]
pub enum Request {
    #[serde(rename = "users.list")]
    UsersList,
    #[serde(rename = "users.show")]
    UsersShow { name: String },
    #[serde(rename = "users.create")]
    UsersCreate { name: String, password: String },
    #[serde(rename = "users.reset-password")]
    UsersResetPassword { name: String, password: String },
    #[serde(rename = "users.disable")]
    UsersDisable { name: String },
    #[serde(rename = "users.enable")]
    UsersEnable { name: String },
    #[serde(rename = "users.delete")]
    UsersDelete { name: String },
    #[serde(rename = "devices.list")]
    DevicesList { name: String },
    /// Revokes the tokens of one device of a user (every device without `device`) and ends
    /// its sessions.
    #[serde(rename = "devices.revoke")]
    DevicesRevoke {
        name: String,
        device: Option<String>,
    },
    #[serde(rename = "rooms.list")]
    RoomsList,
    #[serde(rename = "rooms.members")]
    RoomsMembers { room: String },
    #[serde(rename = "rooms.delete")]
    RoomsDelete { room: String },
    #[serde(rename = "sessions.list")]
    SessionsList,
    /// Ends the sessions of a user (or of one of its devices), or one session by its id.
    #[serde(rename = "sessions.kick")]
    SessionsKick {
        user: Option<String>,
        device: Option<String>,
        session: Option<u64>,
    },
    #[serde(rename = "server.stats")]
    ServerStats,
    #[serde(rename = "server.reload")]
    ServerReload,
    /// Stops accepting, asks every session to reconnect elsewhere, and shuts down once
    /// they are gone or after `timeout_secs`.
    #[serde(rename = "server.drain")]
    ServerDrain { timeout_secs: u64 },
    /// A consistent copy of the data directory into the new directory `out` (an absolute
    /// path, written by the server's process): see `store::backup`.
    #[serde(rename = "server.backup")]
    ServerBackup { out: String },
}

impl Request {
    /// Whether the command can run with the server stopped (`offline.rs`).
    pub fn works_offline(&self) -> bool {
        !matches!(
            self,
            Request::SessionsList
                | Request::SessionsKick { .. }
                | Request::ServerReload
                | Request::ServerDrain { .. }
        )
    }
}

/// A command's failure, as the operator reads it.
#[derive(Debug)]
pub struct Failure(pub String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

/// A command's result: its data, or why it failed.
pub type Answer = Result<Value, Failure>;

/// What a handler works with: the server's shared state, and (only in a running server)
/// what controls the server itself.
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub control: Option<Arc<Control>>,
}

/// Runs one command.
pub async fn handle(request: Request, ctx: &Ctx) -> Answer {
    match request {
        Request::UsersList => users::list(ctx).await,
        Request::UsersShow { name } => users::show(ctx, name).await,
        Request::UsersCreate { name, password } => users::create(ctx, name, password).await,
        Request::UsersResetPassword { name, password } => {
            users::reset_password(ctx, name, password).await
        }
        Request::UsersDisable { name } => users::set_disabled(ctx, name, true).await,
        Request::UsersEnable { name } => users::set_disabled(ctx, name, false).await,
        Request::UsersDelete { name } => users::delete(ctx, name).await,
        Request::DevicesList { name } => devices::list(ctx, name).await,
        Request::DevicesRevoke { name, device } => devices::revoke(ctx, name, device).await,
        Request::RoomsList => rooms::list(ctx).await,
        Request::RoomsMembers { room } => rooms::members(ctx, room).await,
        Request::RoomsDelete { room } => rooms::delete(ctx, room).await,
        Request::SessionsList => sessions::list(ctx).await,
        Request::SessionsKick {
            user,
            device,
            session,
        } => sessions::kick(ctx, user, device, session).await,
        Request::ServerStats => control::stats(ctx).await,
        Request::ServerReload => control::reload(ctx).await,
        Request::ServerDrain { timeout_secs } => control::drain_command(ctx, timeout_secs).await,
        Request::ServerBackup { out } => backup::online(ctx, out).await,
    }
}

/// Binds the admin socket in `data_dir`, readable and writable by the server's user only.
/// The caller holds the data directory's lock, so a socket file already there is stale.
pub fn bind(data_dir: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    let temporary = data_dir.join(format!("admin.sock.{}", std::process::id()));
    for stale in [&path, &temporary] {
        match std::fs::remove_file(stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", stale.display()))
            }
            _ => {}
        }
    }
    let listener = UnixListener::bind(&temporary)
        .with_context(|| format!("binding the admin socket {}", temporary.display()))?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .context("restricting the admin socket")?;
    std::fs::rename(&temporary, &path).context("moving the admin socket into place")?;
    Ok(listener)
}

/// Serves the admin socket until `stop`; removes it then.
pub async fn listen(listener: UnixListener, ctx: Arc<Ctx>, stop: CancellationToken) {
    let path = socket_path(&ctx.shared.config.data_dir);
    info!(path = %path.display(), "admin socket listening");
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "admin socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                result = connection(stream, &ctx) => if let Err(e) = result {
                    warn!(error = %format!("{e:#}"), "admin connection failed");
                },
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

/// Answers one connection's requests, one line each, in order.
async fn connection(stream: UnixStream, ctx: &Ctx) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_REQUEST as u64 + 1)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let answer = match line.len() > MAX_REQUEST {
            true => Err(Failure("request too long".into())),
            false => match serde_json::from_str::<Request>(&line) {
                Ok(request) => {
                    let command = command_name(&request);
                    let answer = handle(request, ctx).await;
                    match &answer {
                        Ok(_) => info!(command, "admin command"),
                        Err(e) => warn!(command, error = %e.0, "admin command failed"),
                    }
                    answer
                }
                Err(e) => Err(Failure(format!("bad request: {e}"))),
            },
        };
        let mut out = encode(answer);
        out.push('\n');
        write.write_all(out.as_bytes()).await?;
        if line.len() > MAX_REQUEST {
            return Ok(());
        }
    }
}

/// A request's command name, for the log (never its arguments: they may hold a password).
fn command_name(request: &Request) -> String {
    let value = serde_json::to_value(request).unwrap_or(Value::Null);
    value["command"].as_str().unwrap_or("?").to_string()
}

/// The wire form of an answer.
pub fn encode(answer: Answer) -> String {
    match answer {
        Ok(data) => json!({"ok": true, "data": data}).to_string(),
        Err(Failure(error)) => json!({"ok": false, "error": error}).to_string(),
    }
}

/// Sends `request` to the server whose admin socket is `path`, and returns its answer.
pub async fn ask(path: &Path, request: &Request) -> anyhow::Result<Answer> {
    let stream = UnixStream::connect(path)
        .await
        .with_context(|| format!("connecting to {}", path.display()))?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    anyhow::ensure!(!answer.is_empty(), "the server closed the admin connection");
    decode(&answer)
}

/// An answer line as [`encode`] wrote it.
pub fn decode(line: &str) -> anyhow::Result<Answer> {
    let value: Value = serde_json::from_str(line).context("a malformed admin answer")?;
    Ok(match value["ok"].as_bool() {
        Some(true) => Ok(value["data"].clone()),
        _ => Err(Failure(
            value["error"]
                .as_str()
                .unwrap_or("unknown error")
                .to_string(),
        )),
    })
}
