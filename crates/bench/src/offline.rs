//! `offline`: Q messages to a user who is away, then the time from its login until all of
//! them are delivered (catch-up from the store).
//!
//! User `off` logs in once (so the name exists) and leaves; a sender pipelines Q messages to
//! it (W unanswered at most) and waits for every OK, i.e. until all are stored. Then `off`
//! logs in again and receives them. The relay has no storage: this measures parley alone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use anyhow::ensure;
use tokio_util::sync::CancellationToken;

use crate::conn::Conn;
use crate::dm::{receive, send_binary, Pair};
use crate::report::{cpu_ns, cpu_per, rate, Figures};
use crate::{now_ns, run_tag, watch, Common, Ended, Proto, MAX_MESSAGES, PREFIX};

#[derive(clap::Args, Debug, Clone)]
pub struct OfflineArgs {
    #[command(flatten)]
    pub common: Common,
    /// Messages stored for the offline user.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Unanswered messages of the sender.
    #[arg(long, default_value_t = 256)]
    pub window: u64,
    /// Payload bytes per message (at least 16).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
}

pub async fn run(addr: SocketAddr, args: OfflineArgs) -> anyhow::Result<Figures> {
    ensure!(args.window > 0, "--window must be positive");
    ensure!(args.size >= PREFIX, "--size must be at least {PREFIX}");
    ensure!(
        args.messages <= MAX_MESSAGES,
        "--messages is at most {MAX_MESSAGES}"
    );
    let deadline = args.common.deadline();
    let tag = run_tag();
    let (off, sender) = (format!("{tag}off"), format!("{tag}snd"));
    drop(Conn::login(addr, Proto::Binary, &off).await?);
    // Let the server see the close before anything is sent to `off`.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let conn = Conn::login(addr, Proto::Binary, &sender).await?;
    let cancel = CancellationToken::new();
    let stored_at = Instant::now();
    let stop = cancel.clone();
    let send = tokio::time::timeout_at(
        deadline,
        send_binary(
            conn,
            &sender,
            &off,
            args.messages,
            args.window,
            args.size,
            &stop,
        ),
    );
    let sent = send
        .await
        .map_err(|_| anyhow::anyhow!("timed out storing"))?;
    let store_seconds = stored_at.elapsed().as_secs_f64();

    let cpu = args.common.pid.and_then(cpu_ns);
    let login_ns = now_ns();
    let conn = Conn::login(addr, Proto::Binary, &off).await?;
    let (pair, total) = (Pair::default(), AtomicU64::new(0));
    let done = AtomicUsize::new(1);
    let (tally, ended) = tokio::join!(
        receive(
            Proto::Binary,
            conn,
            sender,
            args.messages,
            &pair,
            &total,
            &cancel
        ),
        watch(
            "offline",
            &total,
            args.messages,
            &done,
            1,
            deadline,
            &cancel
        ),
    );
    let cpu = cpu_per(cpu, args.common.pid, tally.received);
    let seconds = tally.last_ns.saturating_sub(login_ns) as f64 / 1e9;
    let mut figures = Figures::default();
    figures
        .put("delivered", tally.received)
        .put("seconds", (seconds * 1000.0).round() / 1000.0)
        .put("delivered_per_sec", rate(tally.received, seconds));
    tally.counts(args.messages, &mut figures);
    figures
        .put("store_seconds", (store_seconds * 1000.0).round() / 1000.0)
        .put("stored_per_sec", rate(sent.sent, store_seconds))
        .put("errors", sent.errors)
        .put("timed_out", ended == Ended::TimedOut);
    if let Some(cpu) = cpu {
        figures.put("server_cpu_us_per_msg", cpu);
    }
    Ok(figures)
}
