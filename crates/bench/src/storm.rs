//! `storm`: the reconnect storm after a network blip. C devices that were away, each with M
//! messages waiting, log in within one second: the time until all C×M are delivered, the
//! login latency, the server's peak memory, and meanwhile a bystander pair's DM latency.
//!
//! Set-up (not timed). The devices log in with acks enabled (binary `EnableAcks` before
//! `Login`: pushes are `Event` frames, and a device's cursor moves only when it acks). Each
//! of S senders sends every device one greeting, which the device acks: each device now has
//! a cursor in each of its S conversations. The devices leave; then the senders store M/S
//! messages per device each, round after round over the devices, so that a device's
//! messages lie scattered over the log as they do after a blip, and wait for every OK.
//!
//! The storm. Device i connects at i/C of `--spread-ms`, enables acks, logs in, reads its
//! backlog and acks what it read after every read. Every payload carries the sender's
//! sequence number: a device checks that it gets each of its M messages exactly once and in
//! order per sender, and that no greeting (acked before the blip) comes again. A bystander
//! pair, logged in before the storm, sends each other a DM every `--bystander-ms` and measures
//! their latency. The relay has no storage: this measures parley alone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use bytes::{Bytes, BytesMut};
use parley_proto::binary::{self, code, Frame};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bystander::Bystanders;
use crate::conn::{read_more, Conn};
use crate::dm::{send_to_many, Sent};
use crate::report::{cpu_ns, cpu_per, histogram, rate, rss, rss_hwm, sample_rss, Figures, Tally};
use crate::{decimal, now_ns, run_tag, share, unstamp, watch, Common, Ended, PREFIX};

/// The sequence number of the greeting each sender sends each device before the blip.
const GREETING: u64 = u64::MAX;
/// Bytes a device makes room for before each read: a device's whole backlog is a few KB.
const CHUNK: usize = 4 * 1024;

#[derive(clap::Args, Debug, Clone)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,
    /// Devices that come back at once.
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// Messages waiting for each device.
    #[arg(long, default_value_t = 100)]
    pub messages: u64,
    /// Users the waiting messages come from: each device has a conversation with each, and
    /// its messages are split evenly among them.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Milliseconds over which the devices' logins are spread, evenly.
    #[arg(long, default_value_t = 1000)]
    pub spread_ms: u64,
    /// Payload bytes per message (at least 16).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Milliseconds between two DMs of each bystander to the other (0: no bystanders).
    #[arg(long, default_value_t = 10)]
    pub bystander_ms: u64,
    /// Set-up: devices logging in at once (keep it under the server's listen backlog).
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Set-up: unanswered messages per sender.
    #[arg(long, default_value_t = 256)]
    pub window: u64,
}

impl StormArgs {
    /// Defaults for `devices` devices with `messages` each (tests).
    pub fn small(common: Common, devices: usize, messages: u64, senders: usize) -> StormArgs {
        StormArgs {
            common,
            devices,
            messages,
            senders,
            spread_ms: 100,
            size: 32,
            bystander_ms: 5,
            concurrency: 16,
            window: 64,
        }
    }
}

/// The names of one run.
struct Names {
    tag: String,
}

impl Names {
    fn device(&self, i: usize) -> String {
        format!("{}d{i}", self.tag)
    }
    fn sender_prefix(&self) -> String {
        format!("{}s", self.tag)
    }
    fn sender(&self, k: usize) -> String {
        format!("{}s{k}", self.tag)
    }
    fn bystander(&self, side: usize) -> String {
        format!("{}b{side}", self.tag)
    }
}

pub async fn run(addr: SocketAddr, args: StormArgs) -> anyhow::Result<Figures> {
    ensure!(args.devices > 0, "--devices must be positive");
    ensure!(args.senders > 0, "--senders must be positive");
    ensure!(args.window > 0, "--window must be positive");
    ensure!(args.size >= PREFIX, "--size must be at least {PREFIX}");
    ensure!(
        args.messages >= args.senders as u64,
        "--messages must be at least --senders (each sender has something to say)"
    );
    let deadline = args.common.deadline();
    let names = Arc::new(Names { tag: run_tag() });
    let pid = args.common.pid;
    let devices: Vec<String> = (0..args.devices).map(|i| names.device(i)).collect();
    let devices = Arc::new(devices);

    // Set-up: every device exists, holds a cursor in each conversation, and is away.
    let setup_at = std::time::Instant::now();
    let (stored, store_seconds) =
        tokio::time::timeout_at(deadline, set_up(addr, &args, &names, &devices))
            .await
            .map_err(|_| anyhow::anyhow!("timed out setting up"))??;
    let setup_seconds = setup_at.elapsed().as_secs_f64();
    // A mark for whoever watches the server (a profiler, say): the timed part begins.
    eprintln!("storm: set up in {setup_seconds:.1} s; the storm begins");

    let bystanders = match args.bystander_ms {
        0 => None,
        ms => {
            let both = [names.bystander(0), names.bystander(1)];
            Some(Bystanders::start(addr, both, ms, args.common.timeout).await?)
        }
    };

    // The storm.
    let expected = args.devices as u64 * args.messages;
    let total = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();
    let rss_before = pid.and_then(rss);
    let cpu = pid.and_then(cpu_ns);
    let sampler = pid.map(|pid| tokio::spawn(sample_rss(pid, 250, cancel.clone())));
    let start = now_ns();
    let begin = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..args.devices {
        let at = begin + args_spread(&args, i);
        let (names, devices) = (names.clone(), devices.clone());
        let (total, answered, cancel) = (total.clone(), answered.clone(), cancel.clone());
        let per_sender: Vec<u64> = (0..args.senders)
            .map(|k| share(args.messages, args.senders, k))
            .collect();
        tasks.spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut device = Device::new(&devices[i], names.sender_prefix(), &per_sender);
            let began = now_ns();
            let arrived = tokio::select! {
                arrived = arrive(addr, &devices[i]) => arrived,
                _ = cancel.cancelled() => Err(anyhow::anyhow!("the storm ended first")),
            };
            answered.fetch_add(1, Ordering::Relaxed);
            let conn = match arrived {
                Ok(conn) => conn,
                Err(e) => return (device.tally, Err(e)),
            };
            let login = now_ns().saturating_sub(began);
            let want = per_sender.iter().sum();
            device.catch_up(conn, want, &total, &cancel).await;
            (device.tally, Ok((login, began)))
        });
    }
    let ended = watch(
        "storm",
        &total,
        expected,
        &answered,
        args.devices,
        deadline,
        &cancel,
    )
    .await;
    let cpu = cpu_per(cpu, pid, total.load(Ordering::Relaxed));
    let rss_after = pid.and_then(rss);
    let bystanders = match bystanders {
        Some(b) => Some(b.stop().await),
        None => None,
    };

    let mut tally = Tally::counting(&[]);
    let mut logins = histogram();
    let (mut failed, mut first_error, mut last_login) = (0u64, None, 0u64);
    while let Some(joined) = tasks.join_next().await {
        let (device, login) = joined?;
        tally.merge(&device);
        match login {
            Ok((took, began)) => {
                logins.saturating_record(took / 1_000);
                last_login = last_login.max(began + took);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let (rss_peak, timeline) = match sampler {
        Some(s) => s.await?,
        None => (None, Vec::new()),
    };

    let seconds = tally.last_ns.saturating_sub(start) as f64 / 1e9;
    let mut figures = Figures::default();
    figures
        .put("delivered", tally.received)
        .put("seconds", round3(seconds))
        .put("delivered_per_sec", rate(tally.received, seconds));
    tally.counts(expected, &mut figures);
    figures
        .put("logins", logins.len())
        .put("login_failed", failed)
        .put("login_p50_us", logins.value_at_quantile(0.50))
        .put("login_p99_us", logins.value_at_quantile(0.99))
        .put("login_max_us", logins.max())
        .put("logins_over_2s", logins.count_between(2_000_001, u64::MAX))
        .put(
            "last_login_seconds",
            round3(last_login.saturating_sub(start) as f64 / 1e9),
        );
    if let Some(b) = bystanders {
        b.figures(&mut figures);
    }
    if let Some(before) = rss_before {
        figures.put("rss_before_bytes", before);
    }
    if let Some(peak) = rss_peak {
        figures.put("rss_peak_bytes", peak);
    }
    if let Some(after) = rss_after {
        figures.put("rss_after_bytes", after);
    }
    if let Some(hwm) = pid.and_then(rss_hwm) {
        figures.put("rss_hwm_bytes", hwm);
    }
    if !timeline.is_empty() {
        figures.put("rss_mb_every_250ms", timeline);
    }
    if let Some(cpu) = cpu {
        figures.put("server_cpu_us_per_msg", cpu);
    }
    figures
        .put("setup_seconds", round3(setup_seconds))
        .put("stored_per_sec", rate(stored.sent, store_seconds))
        .put("errors", stored.errors)
        .put("load_1m", crate::report::load_1m())
        .put("timed_out", ended == Ended::TimedOut);
    if let Some(e) = first_error {
        figures.put("first_error", e);
    }
    Ok(figures)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// When device `i` starts to come back, after the storm begins.
fn args_spread(args: &StormArgs, i: usize) -> Duration {
    Duration::from_micros(args.spread_ms * 1000 * i as u64 / args.devices as u64)
}

/// Logs in as `name` with acks enabled: `EnableAcks` and `Login` in one write, and both
/// answers (nothing of the backlog comes before the login's OK).
async fn arrive(addr: SocketAddr, name: &str) -> anyhow::Result<Conn> {
    let mut conn = Conn::connect(addr, None).await?;
    let mut out = BytesMut::new();
    Frame::EnableAcks { cid: 1 }.encode(&mut out)?;
    Frame::Login {
        cid: 2,
        username: Bytes::copy_from_slice(name.as_bytes()),
    }
    .encode(&mut out)?;
    conn.stream.write_all(&out).await?;
    for cid in [1, 2] {
        match conn.frame().await? {
            Frame::Response { cid: c, code } if c == cid && code == code::OK => {}
            other => bail!("login of {name}: {other:?}"),
        }
    }
    Ok(conn)
}

/// The set-up: devices log in, get a greeting from each sender and ack it, leave; then the
/// senders store the messages that wait for them. What the senders sent, their errors, and
/// how long storing took (seconds).
async fn set_up(
    addr: SocketAddr,
    args: &StormArgs,
    names: &Names,
    devices: &Arc<Vec<String>>,
) -> anyhow::Result<(Sent, f64)> {
    // 1. The devices log in, a bounded number at a time.
    let limit = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut joining = JoinSet::new();
    for i in 0..args.devices {
        let (limit, devices) = (limit.clone(), devices.clone());
        joining.spawn(async move {
            let _permit = limit.acquire().await?;
            let conn = arrive(addr, &devices[i]).await?;
            anyhow::Ok((i, conn))
        });
    }
    let mut conns: Vec<Option<Conn>> = (0..args.devices).map(|_| None).collect();
    while let Some(joined) = joining.join_next().await {
        let (i, conn) = joined?.context("a device's first login")?;
        conns[i] = Some(conn);
    }

    // 2. Each sender greets each device; the devices ack and leave.
    let mut senders = Vec::new();
    for k in 0..args.senders {
        senders.push(Conn::login(addr, crate::Proto::Binary, &names.sender(k)).await?);
    }
    let (greeted, cancel) = (Arc::new(AtomicU64::new(0)), CancellationToken::new());
    let mut leaving = JoinSet::new();
    let greetings = vec![1; args.senders];
    for (i, conn) in conns.into_iter().enumerate() {
        let conn = conn.expect("every device logged in");
        let mut device = Device::new(&devices[i], names.sender_prefix(), &greetings);
        let (greeted, cancel) = (greeted.clone(), cancel.clone());
        let senders = args.senders as u64;
        leaving.spawn(async move {
            device.greeted(conn, senders, &greeted, &cancel).await;
            device.greetings
        });
    }
    let sent = send_all(senders, names, devices, 1, args, true).await?;
    let mut short = 0;
    while let Some(left) = leaving.join_next().await {
        short += u64::from(left? < args.senders as u64);
    }
    ensure!(
        short == 0 && sent.errors == 0,
        "set-up: {short} devices missed a greeting, {} greetings refused",
        sent.errors
    );
    // Let the server see every device leave before anything is sent to them (a login of a
    // name still online waits for it anyway: `login_grace_ms`).
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 3. The messages that wait for the devices.
    let mut senders = Vec::new();
    for k in 0..args.senders {
        senders.push(Conn::login(addr, crate::Proto::Binary, &names.sender(k)).await?);
    }
    let rounds = args.messages.div_ceil(args.senders as u64);
    let storing = std::time::Instant::now();
    let stored = send_all(senders, names, devices, rounds, args, false).await?;
    ensure!(
        stored.errors == 0,
        "set-up: {} messages refused",
        stored.errors
    );
    Ok((stored, storing.elapsed().as_secs_f64()))
}

/// Every sender sends its messages to the devices: `rounds` rounds over them (sender
/// k skips the rounds past its share of `--messages`), each round in device order, at most
/// `--window` unanswered; returns when all are answered.
async fn send_all(
    senders: Vec<Conn>,
    names: &Names,
    devices: &Arc<Vec<String>>,
    rounds: u64,
    args: &StormArgs,
    greeting: bool,
) -> anyhow::Result<Sent> {
    let mut tasks = JoinSet::new();
    let count = args.senders;
    for (k, conn) in senders.into_iter().enumerate() {
        let from = names.sender(k);
        let devices = devices.clone();
        let mine = if greeting {
            1
        } else {
            share(args.messages, count, k).min(rounds)
        };
        let (window, size) = (args.window, args.size);
        tasks.spawn(async move {
            let n = devices.len();
            let plan = (0..mine).flat_map(move |round| (0..n).map(move |i| (i, round)));
            let plan = plan.map(|(i, round)| (i, if greeting { GREETING } else { round }));
            send_to_many(conn, &from, &devices, plan, window, size).await
        });
    }
    let mut all = Sent::default();
    while let Some(sent) = tasks.join_next().await {
        let sent = sent??;
        all.sent += sent.sent;
        all.errors += sent.errors;
    }
    Ok(all)
}

/// One device: what it received, checked per sender.
struct Device {
    name: Bytes,
    /// Senders are `<prefix><k>`.
    prefix: String,
    tally: Tally,
    /// Greetings received (set-up).
    greetings: u64,
    /// The last sequence read per conversation in this read, to ack.
    acks: Vec<(u64, u64)>,
}

impl Device {
    fn new(name: &str, prefix: String, per_sender: &[u64]) -> Device {
        Device {
            name: Bytes::copy_from_slice(name.as_bytes()),
            prefix,
            tally: Tally::counting(per_sender),
            greetings: 0,
            acks: Vec::new(),
        }
    }

    /// Reads frames until `until(self)` holds, acking after each read; false if the
    /// connection ended or `cancel` came first.
    async fn read_until(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        total: &AtomicU64,
        cancel: &CancellationToken,
        until: impl Fn(&Device) -> bool,
    ) -> bool {
        let mut out = BytesMut::new();
        loop {
            let (before, now) = (self.tally.received, now_ns());
            while let Ok(Some(frame)) = binary::decode(buf, usize::MAX >> 1) {
                self.frame(frame, now);
            }
            total.fetch_add(self.tally.received - before, Ordering::Relaxed);
            for (conversation, seq) in self.acks.drain(..) {
                let ack = Frame::Ack {
                    cid: 0,
                    conversation,
                    seq,
                };
                ack.encode(&mut out).expect("an ack has no strings");
            }
            if !out.is_empty() {
                if stream.write_all(&out).await.is_err() {
                    return false;
                }
                out.clear();
            }
            if until(self) {
                return true;
            }
            if read_more(stream, buf, CHUNK, cancel).await.is_none() {
                return false;
            }
        }
    }

    /// Set-up: reads a greeting from each of `senders`, acks them, and leaves.
    async fn greeted(
        &mut self,
        conn: Conn,
        senders: u64,
        greeted: &AtomicU64,
        cancel: &CancellationToken,
    ) {
        let (mut stream, mut buf) = conn.into_parts();
        let enough = |d: &Device| d.greetings >= senders;
        self.read_until(&mut stream, &mut buf, greeted, cancel, enough)
            .await;
        // The acks are written; closing now is leaving after them.
    }

    /// The storm: reads the backlog (`want` messages) and keeps the connection until
    /// `cancel` (the end of the storm), so every session lives until it is measured.
    async fn catch_up(
        &mut self,
        conn: Conn,
        want: u64,
        total: &AtomicU64,
        cancel: &CancellationToken,
    ) {
        let (mut stream, mut buf) = conn.into_parts();
        let all = |d: &Device| d.tally.received >= want;
        if self
            .read_until(&mut stream, &mut buf, total, cancel, all)
            .await
        {
            cancel.cancelled().await;
        }
    }

    /// Counts one frame: an event from a sender to this device, or something unexpected.
    fn frame(&mut self, frame: Frame, now: u64) {
        let Frame::Event { event, .. } = frame else {
            self.tally.unexpected += 1;
            return;
        };
        let sender = event
            .from
            .strip_prefix(self.prefix.as_bytes())
            .and_then(decimal);
        let payload = event.message.get(..PREFIX).and_then(unstamp);
        let (Some(k), Some((seq, _)), true) = (sender, payload, event.to == self.name) else {
            self.tally.unexpected += 1;
            return;
        };
        match self.acks.iter_mut().find(|(c, _)| *c == event.conversation) {
            Some(ack) => ack.1 = ack.1.max(event.seq),
            None => self.acks.push((event.conversation, event.seq)),
        }
        if seq == GREETING {
            // Acked before the blip: in the storm, a greeting is a message twice.
            self.greetings += 1;
            self.tally.duplicated += 1;
        } else {
            self.tally.record(k, seq, 0, now);
        }
    }
}
