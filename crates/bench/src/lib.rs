//! `parley bench`: a client-side load generator for parley, and the minimal relay server it
//! is compared against.
//!
//! Every workload is bounded in count and in time (`--timeout`), talks only to the address it
//! is given or to servers it spawns itself on loopback, and ends with a human summary and
//! exactly one JSON line on stdout. Absolute numbers depend on the machine, so each figure is
//! given beside the relay's (`relay.rs`), a server that does as little as a server can: the
//! ratio parley/relay is what carries from one machine to another.
//!
//! Layout: `lib.rs` (arguments, dispatch, shared helpers), one file per workload (`dm`,
//! `fanout`, `conns`, `offline`), `relay.rs`, `spawn.rs` (servers as child processes),
//! `conn.rs` (login and line/frame reading), `report.rs` (histograms and output).

#![forbid(unsafe_code)]

pub mod bystander;
pub mod conn;
pub mod conns;
pub mod dm;
pub mod fanout;
pub mod offline;
pub mod relay;
pub mod report;
pub mod spawn;
pub mod stall;
pub mod storm;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::{Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use report::Figures;

/// `parley bench <workload>`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub workload: Workload,
}

#[derive(Subcommand, Debug)]
pub enum Workload {
    /// P sender/receiver pairs exchanging direct messages: rate, latency, losses.
    Dm(dm::DmArgs),
    /// One room, N members, S publishers: deliveries per second, latency, losses.
    Fanout(fanout::FanoutArgs),
    /// C idle logged-in connections: connect+login rate, server memory per connection.
    Conns(conns::ConnsArgs),
    /// Q messages stored for an offline user: time from its login until all are delivered.
    Offline(offline::OfflineArgs),
    /// C devices with M messages waiting each log in within a second: time until all are
    /// delivered, login latency, peak server memory, a bystander's latency meanwhile.
    Storm(storm::StormArgs),
    /// N clients that never read, sent large DMs and asking for history: server memory.
    Stall(stall::StallArgs),
    /// Run the minimal relay server (the ceiling the workloads are compared against).
    Relay(relay::RelayArgs),
}

/// Which server a workload measures when it spawns its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Parley,
    Relay,
    /// The relay first, then parley, and the ratio parley/relay.
    Both,
}

/// The wire protocol a workload's clients speak (where the workload has a choice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Binary,
    Text,
    Json,
    /// The JSON protocol over WebSocket (`/ws`), as the web app speaks it.
    Ws,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Binary => "binary",
            Proto::Text => "text",
            Proto::Json => "json",
            Proto::Ws => "ws",
        }
    }
}

/// Options every workload takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Measure this already-running server instead of spawning servers. Given several
    /// times (the nodes of a cluster), `dm` and `fanout` spread their clients over them:
    /// each receiver on another node than its sender.
    #[arg(long)]
    pub addr: Vec<SocketAddr>,
    /// Which servers to spawn (ignored with --addr).
    #[arg(long, value_enum, default_value = "both")]
    pub target: Target,
    /// Seconds after which the workload stops by itself, whatever it has reached.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// The PID of the server at --addr, to report its CPU time and memory (known without
    /// this when the bench spawns the server).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Spawn parley from this executable instead of the bench's own: two builds measured
    /// under the same load generator (the generator changes between commits too). The
    /// relay stays the bench's own.
    #[arg(long, value_name = "PATH")]
    pub parley_exe: Option<PathBuf>,
}

impl Common {
    /// Defaults, for callers that build arguments in code (tests).
    pub fn to(addr: SocketAddr) -> Common {
        Common {
            addr: vec![addr],
            target: Target::Parley,
            timeout: 60,
            pid: None,
            parley_exe: None,
        }
    }

    pub fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(self.timeout)
    }

    /// The servers a workload's clients connect to: every `--addr` given, else `addr`
    /// (the one server it runs against).
    pub fn nodes(&self, addr: SocketAddr) -> Vec<SocketAddr> {
        if self.addr.len() > 1 {
            self.addr.clone()
        } else {
            vec![addr]
        }
    }
}

/// Runs `parley bench ...`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.workload {
        Workload::Relay(a) => relay::main(a),
        Workload::Dm(a) => {
            let mut meta = report::Meta::new("dm", Some(a.proto.name()));
            meta.param("pairs", a.pairs)
                .param("messages", a.messages)
                .param("window", a.window)
                .param("size", a.size);
            if a.proto != Proto::Binary {
                meta.note = Some("the relay speaks only binary: its figure is binary".into());
            }
            let keys: &[&str] = &["delivered_per_sec", "p99_us", "server_cpu_us_per_msg"];
            drive(&a.common, meta, Some(keys), |at| {
                let mut a = a.clone();
                a.common.pid = a.common.pid.or(at.pid);
                if at.relay {
                    a.proto = Proto::Binary;
                }
                dm::run(at.addr, a)
            })
        }
        Workload::Fanout(a) => {
            let mut meta = report::Meta::new("fanout", Some("text"));
            meta.param("members", a.members)
                .param("publishers", a.publishers)
                .param("messages", a.total_messages())
                .param("window", a.window)
                .param("size", a.size);
            meta.note = Some("relay: n/a (no rooms)".into());
            drive(&a.common, meta, None, |at| {
                let mut a = a.clone();
                a.common.pid = a.common.pid.or(at.pid);
                fanout::run(at.addr, a)
            })
        }
        Workload::Conns(a) => {
            let mut meta = report::Meta::new("conns", Some(a.proto.name()));
            meta.param("conns", a.conns)
                .param("concurrency", a.concurrency);
            if a.proto != Proto::Binary {
                meta.note = Some("the relay speaks only binary: its figure is binary".into());
            }
            let keys: &[&str] = &[
                "connects_per_sec",
                "rss_bytes_per_conn",
                "server_cpu_us_per_conn",
            ];
            drive(&a.common, meta, Some(keys), |at| {
                let mut a = a.clone();
                a.common.pid = a.common.pid.or(at.pid);
                if at.relay {
                    a.proto = Proto::Binary;
                }
                conns::run(at.addr, a)
            })
        }
        Workload::Storm(a) => {
            let mut meta = report::Meta::new("storm", Some("binary"));
            meta.param("devices", a.devices)
                .param("messages", a.messages)
                .param("senders", a.senders)
                .param("spread_ms", a.spread_ms)
                .param("size", a.size);
            meta.note = Some("relay: n/a (no storage)".into());
            drive(&a.common, meta, None, |at| {
                let mut a = a.clone();
                a.common.pid = a.common.pid.or(at.pid);
                storm::run(at.addr, a)
            })
        }
        Workload::Stall(a) => {
            let mut meta = report::Meta::new("stall", Some("binary"));
            meta.param("clients", a.clients)
                .param("dms", a.dms)
                .param("size", a.size)
                .param("history", a.history);
            meta.note = Some("relay: n/a (no history)".into());
            drive(&a.common, meta, None, |at| {
                let mut a = a.clone();
                a.common.pid = a.common.pid.or(at.pid);
                stall::run(at.addr, a)
            })
        }
        Workload::Offline(a) => {
            let mut meta = report::Meta::new("offline", Some("binary"));
            meta.param("messages", a.messages)
                .param("window", a.window)
                .param("size", a.size);
            meta.note = Some("relay: n/a (no storage)".into());
            drive(&a.common, meta, None, |at| {
                let mut a = a.clone();
                a.common.pid = a.common.pid.or(at.pid);
                offline::run(at.addr, a)
            })
        }
    }
}

/// The server one run of a workload measures.
#[derive(Debug, Clone, Copy)]
pub struct At {
    pub addr: SocketAddr,
    /// Its PID, when the bench spawned it.
    pub pid: Option<u32>,
    /// Whether it is the relay (which speaks only binary).
    pub relay: bool,
}

/// Runs a workload against `--addr`, or against spawned servers (the relay first, then
/// parley) and reports them side by side. `ratio` lists the figures compared; `None` means
/// the relay cannot run this workload at all.
fn drive<F, Fut>(
    common: &Common,
    mut meta: report::Meta,
    ratio: Option<&[&'static str]>,
    work: F,
) -> anyhow::Result<()>
where
    F: Fn(At) -> Fut,
    Fut: Future<Output = anyhow::Result<Figures>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    conns::raise_fd_limit();
    if !common.addr.is_empty() || common.target == Target::Parley {
        meta.note = None; // the notes are about the relay
    }
    if let Some(&addr) = common.addr.first() {
        let figures = runtime.block_on(work(At {
            addr,
            pid: None,
            relay: false,
        }))?;
        let target = match common.addr.len() {
            1 => "external".to_string(),
            n => format!("{n} nodes"),
        };
        report::print_one(&meta, &target, &figures);
        return Ok(());
    }
    let want_relay = matches!(common.target, Target::Relay | Target::Both);
    let want_parley = matches!(common.target, Target::Parley | Target::Both);
    let mut relay = None;
    if want_relay {
        match ratio {
            Some(_) => {
                let server = spawn::Server::relay()?;
                let figures = runtime.block_on(work(server.at(true)))?;
                let figures = figures.with_server_log(&server);
                drop(server);
                if !want_parley {
                    report::print_one(&meta, "relay", &figures);
                    return Ok(());
                }
                relay = Some(figures);
            }
            None if !want_parley => anyhow::bail!(
                "{}: {}",
                meta.workload,
                meta.note
                    .as_deref()
                    .unwrap_or("the relay cannot run this workload")
            ),
            None => {}
        }
    }
    let server = spawn::Server::parley(common.parley_exe.as_deref())?;
    let figures = runtime.block_on(work(server.at(false)))?;
    let figures = figures.with_server_log(&server);
    drop(server);
    match (relay, ratio) {
        (Some(relay), Some(keys)) => report::print_both(&meta, &figures, &relay, keys),
        _ => report::print_one(&meta, "parley", &figures),
    }
    Ok(())
}

/// How a measurement phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Everything expected arrived.
    Complete,
    /// The senders were done and nothing arrived for `DRAIN`: the rest counts as lost.
    Drained,
    /// `--timeout` passed.
    TimedOut,
}

/// How long receivers wait for stragglers once every sender is done and nothing arrives.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Waits until `count` reaches `expected`, or the senders (`done` of `senders`) are finished
/// and nothing arrived for `DRAIN`, or `deadline`; then cancels `cancel` so that every task
/// of the phase stops. Keeps a progress bar (on a terminal only) meanwhile.
pub async fn watch(
    label: &str,
    count: &AtomicU64,
    expected: u64,
    done: &AtomicUsize,
    senders: usize,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
) -> Ended {
    let bar = report::bar(label, expected);
    let mut last = (0, tokio::time::Instant::now());
    let ended = loop {
        let n = count.load(Ordering::Relaxed);
        bar.set_position(n);
        let now = tokio::time::Instant::now();
        if n >= expected {
            break Ended::Complete;
        }
        if n != last.0 {
            last = (n, now);
        }
        if done.load(Ordering::Relaxed) >= senders && now - last.1 >= DRAIN {
            break Ended::Drained;
        }
        if now >= deadline {
            break Ended::TimedOut;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    bar.finish_and_clear();
    cancel.cancel();
    ended
}

/// The process-local epoch of every timestamp the bench puts in a message.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since `epoch()`: senders and receivers live in this process, so their clocks
/// agree exactly and latency needs no clock synchronisation.
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Most messages one run may send (receivers keep a bit per message they expect).
pub const MAX_MESSAGES: u64 = 1_000_000_000;

/// Length of the payload prefix: sequence number and send time, both `u64` big-endian.
pub const PREFIX: usize = 16;

/// Writes the payload prefix into `buf` (at least `PREFIX` bytes; the rest is padding).
pub fn stamp(buf: &mut [u8], seq: u64) {
    buf[..8].copy_from_slice(&seq.to_be_bytes());
    buf[8..16].copy_from_slice(&now_ns().to_be_bytes());
}

/// Reads (sequence number, send time) from a payload.
pub fn unstamp(payload: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((seq, sent))
}

/// Lower-case hex, how payloads travel in the text and JSON protocols.
pub fn hex(bytes: &[u8], out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 15) as usize]);
    }
}

/// Decodes the first `PREFIX` bytes of a hex payload (the padding is not needed).
pub fn unhex_prefix(text: &[u8]) -> Option<[u8; PREFIX]> {
    let text = text.get(..PREFIX * 2)?;
    let mut out = [0u8; PREFIX];
    for (digits, bytes) in text.chunks_exact(8).zip(out.chunks_exact_mut(4)) {
        let word = u64::from_be_bytes(digits.try_into().expect("chunks of 8"));
        bytes.copy_from_slice(&unhex8(word)?.to_be_bytes());
    }
    Some(out)
}

/// Eight lower-case hex digits (one per byte of `word`, the first in its top byte) as the
/// four bytes they spell, or `None` if any is not a digit. Every receiver decodes the prefix
/// of every payload it gets; a byte-wise loop took 8 % of the generator's time in a fan-out,
/// this takes a couple of dozen instructions for the eight.
fn unhex8(word: u64) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    if word & HIGH != 0 {
        return None;
    }
    // With every byte below 0x80, adding 0x80 - c sets a byte's top bit exactly where the
    // byte is at least c, and never carries into the next byte.
    let at_least = |c: u8| word + u64::from(0x80 - c) * ONES;
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    if (digit | letter) & HIGH != HIGH {
        return None;
    }
    // '0'..'9' are 0x30..0x39, 'a'..'f' 0x61..0x66: the low nibble, plus 9 for a letter.
    let nibbles = (word & (ONES * 0x0f)) + ((letter >> 7) & ONES) * 9;
    // Pairs of nibbles into bytes, then the four bytes together.
    let bytes = (nibbles | nibbles >> 4) & 0x00ff_00ff_00ff_00ff;
    let pairs = (bytes | bytes >> 8) & 0x0000_ffff_0000_ffff;
    Some((pairs | pairs >> 16) as u32)
}

/// A short tag unique to this run, prefixed to every name the bench uses, so that runs
/// against a long-lived server (`--addr`) never meet each other's users, rooms or stored
/// messages.
pub fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut n = (nanos as u64) ^ (u64::from(std::process::id()) << 40);
    let mut tag = String::new();
    for _ in 0..6 {
        tag.push(char::from(
            b"abcdefghijklmnopqrstuvwxyz0123456789"[(n % 36) as usize],
        ));
        n /= 36;
    }
    tag
}

/// How many of `total` items part `i` of `parts` gets (the remainder goes to the first).
pub fn share(total: u64, parts: usize, i: usize) -> u64 {
    let parts = parts as u64;
    total / parts + u64::from((i as u64) < total % parts)
}

/// A number in a name as the bench writes it (a publisher's, a sender's): decimal digits
/// only.
pub fn decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 9 {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + usize::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_through_hex() {
        let mut payload = [0u8; 32];
        stamp(&mut payload, 42);
        let mut text = Vec::new();
        hex(&payload, &mut text);
        let back = unhex_prefix(&text).unwrap();
        assert_eq!(unstamp(&back), unstamp(&payload));
        assert_eq!(unstamp(&back).unwrap().0, 42);
    }

    #[test]
    fn a_payload_that_is_not_lower_case_hex_is_unreadable() {
        let mut text = Vec::new();
        hex(&[0xab; PREFIX], &mut text);
        assert_eq!(unhex_prefix(&text), Some([0xab; PREFIX]));
        for bad in [b'A', b'g', b' ', b'/', b':', 0xff] {
            let mut t = text.clone();
            t[7] = bad;
            assert_eq!(unhex_prefix(&t), None, "digit {bad:#x}");
        }
        assert_eq!(unhex_prefix(&text[..PREFIX * 2 - 1]), None, "too short");
    }

    #[test]
    fn every_byte_value_decodes_in_every_position() {
        for at in 0..PREFIX {
            for value in 0..=255u8 {
                let mut bytes = [0x5a; PREFIX];
                bytes[at] = value;
                let mut text = Vec::new();
                hex(&bytes, &mut text);
                assert_eq!(unhex_prefix(&text), Some(bytes), "byte {value:#x} at {at}");
            }
        }
    }

    #[test]
    fn only_the_sixteen_lower_case_digits_are_read() {
        let mut text = Vec::new();
        hex(&[0u8; PREFIX], &mut text);
        for at in 0..PREFIX * 2 {
            for c in 0..=255u8 {
                let mut t = text.clone();
                t[at] = c;
                let digit = c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
                assert_eq!(unhex_prefix(&t).is_some(), digit, "{c:#x} at {at}");
            }
        }
    }

    #[test]
    fn shares_add_up() {
        let total: u64 = (0..7).map(|i| share(100, 7, i)).sum();
        assert_eq!(total, 100);
    }
}
