//! `parley admin`: the command line of the operator's commands (`parley_server::admin`).
//!
//! It talks to the running server over `data_dir/admin.sock`; with no server running it
//! does the work itself on the data directory (every command but `sessions`, `server
//! reload` and `server drain`). The data directory comes from `--data-dir`, else from the
//! configuration the server reads (`--config`, `PARLEY_*`).

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use parley_server::admin::{Failure, Request};
use parley_server::Config;
use serde_json::Value;

/// Which server: its configuration, or its data directory.
#[derive(Args)]
pub struct Target {
    /// The server's configuration file (for its data directory, and, with the server
    /// stopped, its settings).
    #[arg(long, env = "PARLEY_CONFIG")]
    config: Option<PathBuf>,
    /// The server's data directory (default: the configuration's).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct AdminArgs {
    #[command(flatten)]
    target: Target,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Group,
}

#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    target: Target,
    /// The new directory to write the backup into (absent or empty).
    #[arg(long)]
    out: PathBuf,
    /// Print the manifest as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The backup's directory (as `parley backup --out` wrote it).
    #[arg(long)]
    from: PathBuf,
    /// The data directory to fill (absent or empty; default: the configuration's).
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand)]
enum Group {
    /// Accounts.
    #[command(subcommand)]
    Users(Users),
    /// A user's devices and their tokens.
    #[command(subcommand)]
    Devices(Devices),
    #[command(subcommand)]
    Rooms(Rooms),
    /// Who is online (needs a running server).
    #[command(subcommand)]
    Sessions(Sessions),
    #[command(subcommand)]
    Server(Server),
}

#[derive(Subcommand)]
enum Users {
    /// Every user.
    List,
    /// One user: devices, tokens, rooms, contacts, sessions.
    Show {
        name: String,
    },
    /// Creates an account (the password is asked for, or read from stdin).
    Create {
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Sets a new password; every token is revoked and every session ends.
    ResetPassword {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Refuses the user's logins and ends its sessions at once.
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    /// Deletes the account: sessions end, password and tokens go, it leaves its rooms and
    /// contacts. Its messages are kept, and its name stays taken.
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum Devices {
    /// A user's devices, each with its tokens.
    List { name: String },
    /// Revokes a device's tokens (every device's with --all) and ends its sessions.
    Revoke {
        name: String,
        /// The device (as `devices list` names it).
        #[arg(long, required_unless_present = "all")]
        device: Option<String>,
        #[arg(long, conflicts_with = "device")]
        all: bool,
    },
}

#[derive(Subcommand)]
enum Rooms {
    /// Every room with its member count.
    List,
    /// A room's members.
    Members { room: String },
    /// Deletes a room: its members leave it, its name is free again; its messages stay in
    /// the log, reachable by no one.
    Delete { room: String },
}

#[derive(Subcommand)]
enum Sessions {
    /// Sessions online: user, device, protocol, peer, since.
    List,
    /// Ends the sessions of a user (of one device with --device), or one session.
    Kick {
        #[arg(long, required_unless_present = "session")]
        user: Option<String>,
        #[arg(long, requires = "user")]
        device: Option<String>,
        #[arg(long, conflicts_with = "user")]
        session: Option<u64>,
    },
}

#[derive(Subcommand)]
enum Server {
    /// Counts: users, sessions, rooms, connections, store size.
    Stats,
    /// Reloads the TLS certificate and the settings that may change live (as SIGHUP).
    Reload,
    /// Stops accepting, asks clients to reconnect elsewhere, and shuts down once they
    /// are gone or after the timeout.
    Drain {
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
}

/// Runs `parley admin`; the exit code is 1 when the command failed.
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let config = load_config(&args.target)?;
    let request = request(args.command)?;
    answer(config, request, args.json, "parley admin")
}

/// `parley backup`: the running server copies its data directory (over the admin socket),
/// or, with none running, this process copies it.
pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let config = load_config(&args.target)?;
    // The server resolves the path: relative to this shell's directory, not the server's.
    let out = std::path::absolute(&args.out).context("the backup directory")?;
    let request = Request::ServerBackup {
        out: out.to_string_lossy().into_owned(),
    };
    answer(config, request, args.json, "parley backup")
}

/// `parley restore`: fills an empty data directory from a backup, checking every file
/// against the manifest, then checks the result as `parley check` does (exit 1 on a
/// problem).
pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let config = load_config(&args.target)?;
    let (manifest, report) = parley_server::backup::restore(&args.from, &config.data_dir)?;
    println!(
        "restored {} messages (up to id {}), {} users, {} rooms, {} files into {}",
        manifest.messages,
        manifest.last_message_id,
        manifest.users,
        manifest.rooms,
        manifest.files.len(),
        config.data_dir.display()
    );
    for line in &report.problems {
        println!("DAMAGED: {line}");
    }
    if !report.problems.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs `request` and prints its answer; a failure exits with 1.
fn answer(config: Config, request: Request, json: bool, who: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let answer = runtime.block_on(ask(config, request))?;
    match answer {
        Ok(data) if json => println!("{}", serde_json::to_string_pretty(&data)?),
        Ok(data) => print(&data),
        Err(Failure(error)) => {
            eprintln!("{who}: {error}");
            std::process::exit(1);
        }
    }
    Ok(())
}

/// Asks the running server, or works on the data directory if none runs.
async fn ask(config: Config, request: Request) -> anyhow::Result<parley_server::admin::Answer> {
    let socket = parley_server::admin::socket_path(&config.data_dir);
    match parley_server::admin::ask(&socket, &request).await {
        Ok(answer) => Ok(answer),
        Err(e) if not_running(&e) => {
            eprintln!(
                "parley admin: no server answers on {}; working on the data directory",
                socket.display()
            );
            parley_server::admin::run_offline(config, request).await
        }
        Err(e) => Err(e),
    }
}

/// Whether connecting failed because no server listens there.
fn not_running(e: &anyhow::Error) -> bool {
    let io = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>());
    io.is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        )
    })
}

fn request(group: Group) -> anyhow::Result<Request> {
    Ok(match group {
        Group::Users(users) => match users {
            Users::List => Request::UsersList,
            Users::Show { name } => Request::UsersShow { name },
            Users::Create {
                name,
                password_stdin,
            } => Request::UsersCreate {
                password: password(password_stdin)?,
                name,
            },
            Users::ResetPassword {
                name,
                password_stdin,
            } => Request::UsersResetPassword {
                password: password(password_stdin)?,
                name,
            },
            Users::Disable { name } => Request::UsersDisable { name },
            Users::Enable { name } => Request::UsersEnable { name },
            Users::Delete { name } => Request::UsersDelete { name },
        },
        Group::Devices(Devices::List { name }) => Request::DevicesList { name },
        Group::Devices(Devices::Revoke { name, device, .. }) => {
            Request::DevicesRevoke { name, device }
        }
        Group::Rooms(Rooms::List) => Request::RoomsList,
        Group::Rooms(Rooms::Members { room }) => Request::RoomsMembers { room },
        Group::Rooms(Rooms::Delete { room }) => Request::RoomsDelete { room },
        Group::Sessions(Sessions::List) => Request::SessionsList,
        Group::Sessions(Sessions::Kick {
            user,
            device,
            session,
        }) => Request::SessionsKick {
            user,
            device,
            session,
        },
        Group::Server(Server::Stats) => Request::ServerStats,
        Group::Server(Server::Reload) => Request::ServerReload,
        Group::Server(Server::Drain { timeout_secs }) => Request::ServerDrain { timeout_secs },
    })
}

/// A password from stdin's first line, or asked for on the terminal (twice).
fn password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let first = rpassword::prompt_password("password: ")?;
    let again = rpassword::prompt_password("again: ")?;
    anyhow::ensure!(first == again, "the two passwords differ");
    Ok(first)
}

/// The server's configuration as `parley serve` would read it, with `--data-dir` on top.
fn load_config(args: &Target) -> anyhow::Result<Config> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = &args.config {
        anyhow::ensure!(path.exists(), "config file {} not found", path.display());
        figment = figment.merge(Toml::file(path));
    }
    figment = figment.merge(Env::prefixed("PARLEY_").ignore(&["config", "log", "log_format"]));
    if let Some(dir) = &args.data_dir {
        figment = figment.merge(Serialized::global("data_dir", dir));
    }
    let config: Config = figment.extract().context("reading the configuration")?;
    Ok(config)
}

/// Prints an answer for a person: lists of records as aligned columns, the rest as
/// `key: value` lines (times as RFC 3339, in UTC).
fn print(data: &Value) {
    match data {
        Value::Array(rows) if rows.is_empty() => println!("(none)"),
        Value::Array(rows) if rows.iter().all(Value::is_object) => table(rows),
        Value::Object(map) => fields(map, ""),
        other => println!("{}", cell("", other)),
    }
}

fn fields(map: &serde_json::Map<String, Value>, indent: &str) {
    for key in ordered(map.keys()) {
        match &map[key] {
            Value::Array(rows) if !rows.is_empty() && rows.iter().all(Value::is_object) => {
                println!("{indent}{key}:");
                table(rows);
            }
            Value::Object(inner) => {
                println!("{indent}{key}:");
                fields(inner, &format!("{indent}  "));
            }
            value => println!("{indent}{key}: {}", cell(key, value)),
        }
    }
}

/// The columns an operator reads first, in this order; any other follows by name.
const FIRST: &[&str] = &[
    "session",
    "id",
    "name",
    "user",
    "device",
    "protocol",
    "peer",
    "since",
    "account",
    "disabled",
    "deleted",
    "members",
    "online",
    "devices",
    "tokens",
    "valid",
    "created_at",
    "last_seen_at",
    "expires_at",
    "revoked_at",
];

fn ordered<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut keys: Vec<&String> = keys.collect();
    let rank = |k: &String| FIRST.iter().position(|f| f == k).unwrap_or(FIRST.len());
    keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    keys
}

fn table(rows: &[Value]) {
    let columns = match rows[0].as_object() {
        Some(first) => ordered(first.keys()),
        None => return,
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|c| cell(c, &row[c.as_str()])).collect())
        .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            let widest = cells.iter().map(|r| r[i].len()).max().unwrap_or(0);
            widest.max(columns[i].len())
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|c| c.to_uppercase()).collect());
    for row in cells {
        line(row);
    }
}

/// One value as a cell: a time (a key ending in `_at`, or `since`) as RFC 3339, a list of
/// records as its length, nothing as `-`.
fn cell(key: &str, value: &Value) -> String {
    let is_time = key.ends_with("_at") || key == "since";
    match value {
        Value::Null => "-".into(),
        Value::Number(n) if is_time => match n.as_i64() {
            Some(0) => "-".into(),
            Some(ms) => rfc3339(ms),
            None => n.to_string(),
        },
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_object) => items.len().to_string(),
        Value::Array(items) => items
            .iter()
            .map(|v| cell("", v))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

fn rfc3339(ms: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}
