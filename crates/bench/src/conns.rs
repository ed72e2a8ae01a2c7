//! `conns`: C connections that log in and stay idle; the connect+login rate and, when the
//! server's PID is known, its resident memory per connection.
//!
//! Connections are opened `--concurrency` at a time and all held open until the last one is
//! in. The server's RSS and CPU time are read from `/proc` before the first connection and
//! again once all are in (after a short settle). The bench raises its own open-file limit to the hard
//! limit, and past ~28,000 connections (one loopback address's ephemeral ports) spreads them
//! over several source addresses 127.0.0.x.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::conn::Conn;
use crate::report::{cpu_ns, cpu_per, rate, rss, Figures};
use crate::{run_tag, Common, Proto};

/// Connections one loopback source address can make to one server port, with margin
/// (Linux's default ephemeral range holds 28,232 ports).
const PER_SOURCE: usize = 28_000;

#[derive(clap::Args, Debug, Clone)]
pub struct ConnsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open and log in.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Connections being set up at once. Keep it under the server's listen backlog (tokio's
    /// default is 128): past it the kernel drops SYNs, and each drop costs a connection a 1 s
    /// retransmission, which would be measured instead of the server.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Loopback source addresses to spread connections over (0: as many as needed).
    #[arg(long, default_value_t = 0)]
    pub sources: usize,
    /// Protocol the connections log in with.
    #[arg(long, value_enum, default_value = "binary")]
    pub proto: Proto,
    /// Milliseconds between the last login and reading the server's RSS (longer shows what
    /// the allocator hands back once idle sessions have shed their start-up memory).
    #[arg(long, default_value_t = 500)]
    pub settle_ms: u64,
}

pub async fn run(addr: SocketAddr, args: ConnsArgs) -> anyhow::Result<Figures> {
    let sources = match args.sources {
        0 => args.conns.div_ceil(PER_SOURCE).max(1),
        n => n,
    };
    // Binding a source address only makes sense on loopback, and only when several are used.
    let spread = sources > 1 && addr.ip().is_loopback();
    let pid = args.common.pid;
    let rss_before = pid.and_then(rss);
    let cpu_before = pid.and_then(cpu_ns);
    let tag = run_tag();
    let limit = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let deadline = args.common.deadline();
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..args.conns {
        let limit = limit.clone();
        let name = format!("{tag}c{i}");
        let source = spread.then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % sources) as u8)));
        let proto = args.proto;
        tasks.spawn(async move {
            let _permit = limit.acquire().await?;
            let mut conn = Conn::connect(addr, source).await?;
            conn.log_in(proto, &name).await?;
            anyhow::Ok(conn.into_parts().0)
        });
    }
    let mut open: Vec<TcpStream> = Vec::with_capacity(args.conns);
    let mut failed = 0u64;
    let mut first_error = None;
    let mut timed_out = false;
    loop {
        let next = tokio::time::timeout_at(deadline, tasks.join_next()).await;
        match next {
            Err(_) => {
                timed_out = true;
                tasks.abort_all();
                break;
            }
            Ok(None) => break,
            Ok(Some(Ok(Ok(stream)))) => open.push(stream),
            Ok(Some(Ok(Err(e)))) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Ok(Some(Err(e))) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // Let the server finish what the logins left behind (log lines, allocator caches).
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    let rss_after = pid.and_then(rss);
    let connected = open.len() as u64;
    let cpu = cpu_per(cpu_before, pid, connected);
    let mut figures = Figures::default();
    figures
        .put("connected", connected)
        .put("failed", failed)
        .put("seconds", (seconds * 1000.0).round() / 1000.0)
        .put("connects_per_sec", rate(connected, seconds))
        .put("settle_ms", args.settle_ms);
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let per = after.saturating_sub(before) / connected.max(1);
        figures
            .put("rss_before_bytes", before)
            .put("rss_after_bytes", after)
            .put("rss_bytes_per_conn", per);
    }
    if let Some(cpu) = cpu {
        figures.put("server_cpu_us_per_conn", cpu);
    }
    figures.put("sources", if spread { sources } else { 1 });
    figures.put("timed_out", timed_out);
    if let Some(e) = first_error {
        figures.put("first_error", e);
    }
    drop(open);
    Ok(figures)
}

/// Raises this process's soft limit on open files to the hard limit: every connection is a
/// file descriptor. (A limit left lower shows as failed connections in the figures.)
pub fn raise_fd_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}
