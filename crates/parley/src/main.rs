//! `parley`: the chat server's command line.
//!
//! A thin shell over the library crates: `chat` is `parley_client::chat`; `serve` reads the configuration (defaults, then
//! an optional TOML file, then `PARLEY_*` environment variables, then flags) and runs the
//! server until SIGINT or SIGTERM.

// Unsafe only where allowed: jemalloc's options are a symbol it looks up by name.
#![deny(unsafe_code)]

mod admin;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use parley_server::Config;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// jemalloc instead of the system allocator (docs/perf/2026-12-02-542fa34.md: 15-20 % less
/// CPU per direct message and about 300 bytes less memory per idle connection than glibc's
/// malloc): its size classes and per-thread caches suit a server whose buffers are often
/// freed on another thread than the one that allocated them. (mimalloc was faster still on
/// messages but held 15 % more memory per idle connection.)
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options (`_RJEM_MALLOC_CONF` in the environment still overrides
/// them). Pages freed by a burst (logins' buffers, a writer task that parked) are handed
/// back to the system by jemalloc's own background thread once unused for 200 ms: without
/// it they are purged only during later allocations, so an idle server kept them for good
/// (about 270 bytes per connection after 10,000 logins; docs/perf/2026-12-02-be2c9a1.md).
#[cfg(not(target_env = "msvc"))]
#[allow(unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 42] = b"background_thread:true,dirty_decay_ms:200\0";

#[derive(Parser)]
#[command(
    name = "parley",
    version,
    about = "A chat server: one port, every protocol, nothing lost"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Write a self-signed development certificate (DIR/cert.pem) and key (DIR/key.pem).
    Cert {
        /// Directory to write them to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Measure a server (or run the minimal relay it is compared against).
    Bench(parley_bench::BenchArgs),
    /// Chat from the terminal: a full-screen client (or --send / --tail for scripts).
    Chat(parley_client::chat::ChatArgs),
    /// Administer a server: users, devices, rooms, sessions, reload, drain (over its admin
    /// socket; on its data directory when it is stopped).
    Admin(admin::AdminArgs),
    /// Back a server's data directory up while it runs (a consistent copy of the database
    /// and the message log, with a manifest of counts and checksums).
    Backup(admin::BackupArgs),
    /// Fill an empty data directory from a backup, checking it against its manifest.
    Restore(admin::RestoreArgs),
    /// Verify a stopped server's data directory (database, message log, saved index,
    /// files) and list what is unreadable; exits with 1 if anything is.
    Check {
        /// The data directory to check.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Move a stopped single node's data directory into PostgreSQL, to run it as a cluster
    /// (`serve --cluster`); verified by counts and checksums, resumable if interrupted.
    Migrate {
        /// The PostgreSQL database to fill (empty, or a migration's that was interrupted).
        #[arg(long, value_name = "URL")]
        to_postgres: String,
        /// The single node's data directory (the server must be stopped).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(clap::Args, Serialize)]
struct ServeArgs {
    /// A TOML configuration file (see parley.example.toml).
    #[arg(long, env = "PARLEY_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address of the shared port.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Directory holding the database.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// A port serving only JSON lines, where the server greets first (seed 001 clients).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_json: Option<SocketAddr>,
    /// A port serving only the text protocol.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_text: Option<SocketAddr>,
    /// A port serving only the binary protocol.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_binary: Option<SocketAddr>,
    /// A port serving only HTTP: the web app, files and WebSocket (the shared port serves
    /// them too).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_http: Option<SocketAddr>,
    /// A port serving seed 003's framed JSON (Simple-TCP-Server's clients; that seed used
    /// port 20706).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_simpletcp: Option<SocketAddr>,
    /// A private port serving only /metrics, /healthz and /readyz (then /metrics is not
    /// served on the other ports).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_admin: Option<SocketAddr>,
    /// A port serving only TLS (any protocol inside).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_tls: Option<SocketAddr>,
    /// TLS certificate chain (PEM); with --tls-key, TLS is served (sniffed) on every port.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    /// Run as one node of a cluster (with --postgres, --nats and --node-id).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cluster: bool,
    /// The cluster's PostgreSQL URL.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres: Option<String>,
    /// The cluster's NATS URL.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    nats: Option<String>,
    /// This node's unique name in the cluster.
    #[arg(long, value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "PARLEY_LOG_FORMAT")]
    #[serde(skip)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum, Default)]
enum LogFormat {
    #[default]
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Cert { out } => {
            let (cert, key) = parley_server::write_self_signed(&out)?;
            println!("wrote {} and {}", cert.display(), key.display());
            Ok(())
        }
        Command::Bench(args) => parley_bench::run(args),
        Command::Chat(args) => std::process::exit(i32::from(parley_client::chat::run(args))),
        Command::Admin(args) => admin::run(args),
        Command::Backup(args) => admin::backup(args),
        Command::Restore(args) => admin::restore(args),
        Command::Check { data_dir } => check(&data_dir),
        Command::Migrate {
            to_postgres,
            data_dir,
        } => migrate(&data_dir, &to_postgres),
    }
}

/// `parley migrate`: progress on stderr, the verification on stdout.
fn migrate(data_dir: &std::path::Path, url: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut shown = 0;
    let report = runtime.block_on(parley_server::migrate_to_postgres(
        data_dir,
        url,
        |done, total| {
            // A line per 5 % (and the last).
            if done == total || done >= shown + total.max(20) / 20 {
                shown = done;
                eprintln!("copied {done} of {total} messages");
            }
        },
    ))?;
    for (table, here, there) in &report.counts {
        println!(
            "{table}: {here} in {}, {there} in PostgreSQL",
            data_dir.display()
        );
    }
    println!(
        "messages sha256: {} in {}, {} in PostgreSQL",
        report.checksums.0,
        data_dir.display(),
        report.checksums.1
    );
    println!(
        "migrated: {} messages copied by this run; counts and checksums agree",
        report.copied
    );
    Ok(())
}

/// `parley check`: what was found whole, then what was not; exit code 1 if anything.
fn check(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let report = parley_server::check(data_dir)?;
    for line in &report.checked {
        println!("ok: {line}");
    }
    for line in &report.problems {
        println!("DAMAGED: {line}");
    }
    if report.problems.is_empty() {
        println!("{}: no damage found", data_dir.display());
        Ok(())
    } else {
        println!(
            "{}: {} problems found",
            data_dir.display(),
            report.problems.len()
        );
        std::process::exit(1);
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Kept to the end: dropping it writes out what is still queued.
    let _log = init_logging(args.log_format);
    let config = load_config(&args)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listeners = parley_server::Listeners::bind(&config).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        // SIGHUP and `parley admin server reload` read the same sources again.
        let options = parley_server::Options {
            reload_config: Some(Box::new(move || load_config(&args))),
            reload_on_hangup: true,
        };
        parley_server::serve_with(config, listeners, shutdown, options).await
    })
}

/// Defaults, then the TOML file, then `PARLEY_*` variables, then flags.
fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = &args.config {
        anyhow::ensure!(path.exists(), "config file {} not found", path.display());
        figment = figment.merge(Toml::file(path));
    }
    let config: Config = figment
        .merge(Env::prefixed("PARLEY_").ignore(&["config", "log", "log_format"]))
        .merge(Serialized::globals(args))
        .extract()
        .context("reading the configuration")?;
    config.validate()?;
    Ok(config)
}

/// Log lines go to stderr from a thread of their own, which writes everything queued since
/// its last write in one call: a storm of logins and disconnects (a line each) cost the
/// sessions a `write` system call per line before. Lines are never dropped: a full queue
/// (a stalled stderr) holds up the code that logs, as writing to stderr itself did. The
/// queue's slots are allocated up front (32 bytes each: the default 128,000 were 4 MB of
/// every server's memory); 8,192 lines is most of a second of a login storm's lines, and
/// the thread empties the queue whenever it runs.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARLEY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(8192)
        .thread_name("parley-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}
