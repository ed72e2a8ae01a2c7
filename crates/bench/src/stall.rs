//! `stall`: N clients that log in and never read, while others send them large DMs and they
//! ask for history: the server's resident memory over time and at the end.
//!
//! The stalled clients (binary) shrink their receive buffers, so the kernel holds little of
//! what is meant for them and the server holds the rest. S senders send each of them D DMs
//! of `--size` bytes and wait for every OK (the messages are stored); then each stalled
//! client sends H `History` requests for its conversation with its sender (the latest page)
//! and still reads nothing. After `--hold-ms` the bench reads what every stalled client was
//! sent, to find which the server cut off (its connection ended) and which it kept. A
//! bystander pair exchanges DMs throughout. Whether memory stays bounded is the point: a
//! server that keeps everything for a client that does not read holds about N × (D + H × D)
//! × size bytes (`offered_bytes`); the kernel's socket buffers hold part of it
//! (`tcp_mem_end_bytes`, machine-wide). The relay has no history: this measures parley
//! alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bytes::{Bytes, BytesMut};
use parley_proto::binary::{page, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bystander::Bystanders;
use crate::conn::Conn;
use crate::dm::{send_to_many, Sent};
use crate::report::{rate, rss, rss_hwm, sample_rss, Figures};
use crate::{run_tag, Common, PREFIX};

/// The receive buffer a stalled client asks for (the kernel doubles it, and keeps a floor).
const SMALL_RCVBUF: u32 = 4096;
/// How long a stalled client's final read waits for more before it counts as kept.
const QUIET: Duration = Duration::from_millis(500);

#[derive(clap::Args, Debug, Clone)]
pub struct StallArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients that log in and never read.
    #[arg(long, default_value_t = 1_000)]
    pub clients: usize,
    /// DMs sent to each of them.
    #[arg(long, default_value_t = 8)]
    pub dms: u64,
    /// Payload bytes per DM (at least 16; the server's default `max_frame_bytes` is 64 KiB).
    #[arg(long, default_value_t = 60_000)]
    pub size: usize,
    /// History requests each stalled client sends (the latest page of its DMs).
    #[arg(long, default_value_t = 2)]
    pub history: u64,
    /// Users sending the DMs (client i gets its DMs from sender i mod S).
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Unanswered DMs per sender.
    #[arg(long, default_value_t = 16)]
    pub window: u64,
    /// Milliseconds to keep measuring once everything is sent and asked.
    #[arg(long, default_value_t = 3_000)]
    pub hold_ms: u64,
    /// Milliseconds between two DMs of each bystander to the other (0: no bystanders).
    #[arg(long, default_value_t = 10)]
    pub bystander_ms: u64,
    /// Clients logging in at once.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
}

impl StallArgs {
    /// Defaults for `clients` clients with `dms` DMs of `size` bytes each (tests).
    pub fn small(common: Common, clients: usize, dms: u64, size: usize) -> StallArgs {
        StallArgs {
            common,
            clients,
            dms,
            size,
            history: 1,
            senders: 2,
            window: 8,
            hold_ms: 100,
            bystander_ms: 5,
            concurrency: 16,
        }
    }

    /// What a server that kept everything would hold for the stalled clients.
    fn offered_bytes(&self) -> u64 {
        let page = self.dms.min(50);
        self.clients as u64 * (self.dms + self.history * page) * self.size as u64
    }
}

pub async fn run(addr: SocketAddr, args: StallArgs) -> anyhow::Result<Figures> {
    ensure!(args.clients > 0, "--clients must be positive");
    ensure!(args.senders > 0, "--senders must be positive");
    ensure!(args.window > 0, "--window must be positive");
    ensure!(args.size >= PREFIX, "--size must be at least {PREFIX}");
    let deadline = args.common.deadline();
    let tag = run_tag();
    let pid = args.common.pid;
    let sender = |k: usize| format!("{tag}s{k}");
    let rss_before = pid.and_then(rss);
    let sampling = CancellationToken::new();
    let sampler = pid.map(|pid| tokio::spawn(sample_rss(pid, 500, sampling.clone())));
    let start = Instant::now();

    let stalled = tokio::time::timeout_at(deadline, log_in_stalled(addr, &args, &tag))
        .await
        .context("timed out logging in")??;
    let bystanders = match args.bystander_ms {
        0 => None,
        ms => {
            let both = [format!("{tag}b0"), format!("{tag}b1")];
            Some(Bystanders::start(addr, both, ms, args.common.timeout).await?)
        }
    };

    // The DMs, until every one is stored.
    let names: Arc<Vec<String>> =
        Arc::new((0..args.clients).map(|i| format!("{tag}c{i}")).collect());
    let mut senders = JoinSet::new();
    for k in 0..args.senders.min(args.clients) {
        let conn = Conn::login(addr, crate::Proto::Binary, &sender(k)).await?;
        let (names, from) = (names.clone(), sender(k));
        let (count, step) = (args.dms, args.senders);
        let (window, size) = (args.window, args.size);
        senders.spawn(async move {
            let to: Vec<usize> = (k..names.len()).step_by(step).collect();
            let plan =
                (0..count).flat_map(move |seq| to.clone().into_iter().map(move |i| (i, seq)));
            send_to_many(conn, &from, &names, plan, window, size).await
        });
    }
    let mut stored = Sent::default();
    let sending = async {
        while let Some(sent) = senders.join_next().await {
            let sent = sent??;
            stored.sent += sent.sent;
            stored.errors += sent.errors;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout_at(deadline, sending)
        .await
        .context("timed out sending the DMs")??;
    let stored_at = start.elapsed().as_secs_f64();

    // The history requests, never read either.
    let mut stalled = stalled;
    let mut asked = 0u64;
    for (i, stream) in stalled.iter_mut().enumerate() {
        let mut out = BytesMut::new();
        for h in 0..args.history {
            Frame::History {
                cid: 1 + h as u32,
                target: Bytes::from(sender(i % args.senders)),
                mode: page::LATEST,
                value: 0,
                limit: 0,
            }
            .encode(&mut out)?;
        }
        // A stalled client's requests are small: its send buffer takes them at once. One
        // the server has already closed fails here, which the final read finds too.
        if stream.write_all(&out).await.is_ok() {
            asked += args.history;
        }
    }
    let asked_at = start.elapsed().as_secs_f64();
    tokio::time::sleep_until(
        (tokio::time::Instant::now() + Duration::from_millis(args.hold_ms)).min(deadline),
    )
    .await;
    let rss_end = pid.and_then(rss);
    let tcp_end = tcp_memory();
    sampling.cancel();
    let (rss_peak, timeline) = match sampler {
        Some(s) => s.await?,
        None => (None, Vec::new()),
    };
    let bystanders = match bystanders {
        Some(b) => Some(b.stop().await),
        None => None,
    };

    // Who is still connected, and what each was sent.
    let mut reads = JoinSet::new();
    for stream in stalled {
        reads.spawn(read_all(stream));
    }
    let (mut cut_off, mut kept, mut received) = (0u64, 0u64, 0u64);
    while let Some(read) = reads.join_next().await {
        let (bytes, ended) = read?;
        received += bytes;
        if ended {
            cut_off += 1;
        } else {
            kept += 1;
        }
    }

    let mut figures = Figures::default();
    figures
        .put("stored", stored.sent)
        .put("errors", stored.errors)
        .put("stored_seconds", round3(stored_at))
        .put("stored_per_sec", rate(stored.sent, stored_at))
        .put("history_asked", asked)
        .put("asked_seconds", round3(asked_at))
        .put("offered_bytes", args.offered_bytes());
    if let Some(before) = rss_before {
        figures.put("rss_before_bytes", before);
    }
    if let Some(peak) = rss_peak {
        figures.put("rss_peak_bytes", peak);
    }
    if let (Some(end), Some(before)) = (rss_end, rss_before) {
        let per = end.saturating_sub(before) / args.clients as u64;
        figures
            .put("rss_end_bytes", end)
            .put("rss_per_client_bytes", per);
    }
    if let Some(hwm) = pid.and_then(rss_hwm) {
        figures.put("rss_hwm_bytes", hwm);
    }
    if !timeline.is_empty() {
        figures.put("rss_mb_every_500ms", timeline);
    }
    if let Some(tcp) = tcp_end {
        figures.put("tcp_mem_end_bytes", tcp);
    }
    figures
        .put("cut_off", cut_off)
        .put("kept", kept)
        .put("received_bytes", received);
    if let Some(b) = bystanders {
        b.figures(&mut figures);
    }
    figures
        .put("load_1m", crate::report::load_1m())
        .put("timed_out", tokio::time::Instant::now() >= deadline);
    Ok(figures)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Logs the stalled clients in, a bounded number at a time, each with a small receive
/// buffer; after the login's answer none of them reads again until the end.
async fn log_in_stalled(
    addr: SocketAddr,
    args: &StallArgs,
    tag: &str,
) -> anyhow::Result<Vec<TcpStream>> {
    let limit = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for i in 0..args.clients {
        let limit = limit.clone();
        let name = format!("{tag}c{i}");
        tasks.spawn(async move {
            let _permit = limit.acquire().await?;
            let socket = TcpSocket::new_v4()?;
            socket.set_recv_buffer_size(SMALL_RCVBUF)?;
            let mut conn = Conn::on(socket, addr).await?;
            conn.log_in(crate::Proto::Binary, &name).await?;
            let (stream, buf) = conn.into_parts();
            ensure!(buf.is_empty(), "{name} was sent something before any DM");
            anyhow::Ok((i, stream))
        });
    }
    let mut streams: Vec<Option<TcpStream>> = (0..args.clients).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (i, stream) = joined?.context("a stalled client's login")?;
        streams[i] = Some(stream);
    }
    Ok(streams.into_iter().flatten().collect())
}

/// Memory the kernel holds in TCP buffers, machine-wide (`mem` of `/proc/net/sockstat`, in
/// pages): what the server has written to the stalled clients' sockets is there, not in its
/// RSS. Other work on the machine counts too.
fn tcp_memory() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    let pages: u64 = words.next()?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// Reads everything a stalled client was sent: the bytes, and whether the server had ended
/// the connection (else it went quiet for `QUIET` with the connection open).
async fn read_all(mut stream: TcpStream) -> (u64, bool) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match tokio::time::timeout(QUIET, stream.read(&mut buf)).await {
            Err(_) => return (total, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (total, true),
            Ok(Ok(n)) => total += n as u64,
        }
    }
}
