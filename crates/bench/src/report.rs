//! Counting what receivers got, and printing results.
//!
//! Each receiver keeps its own `Tally` (no shared state on the hot path) and they are merged
//! at the end. Output is a human summary on stdout followed by exactly one JSON line, so a
//! script can take the last line of a run.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::Value;

use crate::spawn::Server;

/// What one receiver saw: unique messages per source (a bitset each), duplicates, messages
/// that arrived after a later one from the same source, and latency in µs (unless it only
/// counts: see `counting`).
pub struct Tally {
    hist: Option<Histogram<u64>>,
    seen: Vec<Seen>,
    /// Unique messages received.
    pub received: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Payloads that could not be read or whose sequence number was never sent.
    pub unexpected: u64,
    /// When the last message arrived (ns since the epoch, see `now_ns`).
    pub last_ns: u64,
}

struct Seen {
    bits: Vec<u64>,
    expected: u64,
    /// Highest sequence number received so far plus one (0: none yet).
    high: u64,
}

impl Tally {
    /// A tally for senders that send `expected[i]` messages each, numbered from 0.
    pub fn new(expected: &[u64]) -> Tally {
        Tally {
            hist: Some(histogram()),
            ..Tally::counting(expected)
        }
    }

    /// A tally that counts but keeps no latencies: a storm has 10,000 receivers, and a
    /// histogram each would cost the generator 240 MB.
    pub fn counting(expected: &[u64]) -> Tally {
        Tally {
            hist: None,
            seen: expected
                .iter()
                .map(|&expected| Seen {
                    bits: vec![0; expected.div_ceil(64) as usize],
                    expected,
                    high: 0,
                })
                .collect(),
            received: 0,
            duplicated: 0,
            reordered: 0,
            unexpected: 0,
            last_ns: 0,
        }
    }

    /// Records message `seq` from `source`, sent at `sent_ns`, received at `now_ns`.
    pub fn record(&mut self, source: usize, seq: u64, sent_ns: u64, now_ns: u64) {
        let Some(seen) = self.seen.get_mut(source).filter(|s| seq < s.expected) else {
            self.unexpected += 1;
            return;
        };
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if seen.bits[word] & bit != 0 {
            self.duplicated += 1;
            return;
        }
        seen.bits[word] |= bit;
        if seq + 1 < seen.high {
            self.reordered += 1;
        }
        seen.high = seen.high.max(seq + 1);
        self.received += 1;
        self.last_ns = self.last_ns.max(now_ns);
        if let Some(hist) = &mut self.hist {
            hist.saturating_record(now_ns.saturating_sub(sent_ns) / 1_000);
        }
    }

    /// Adds `other`'s counts and latencies (the bitsets are per receiver and stay apart).
    pub fn merge(&mut self, other: &Tally) {
        match (&mut self.hist, &other.hist) {
            (Some(mine), Some(theirs)) => mine.add(theirs).expect("same histogram bounds"),
            (None, Some(theirs)) => self.hist = Some(theirs.clone()),
            _ => {}
        }
        self.received += other.received;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.unexpected += other.unexpected;
        self.last_ns = self.last_ns.max(other.last_ns);
    }

    /// The standard figures: latency percentiles and the error counts.
    pub fn figures(&self, expected: u64, figures: &mut Figures) {
        if let Some(h) = &self.hist {
            figures
                .put("p50_us", h.value_at_quantile(0.50))
                .put("p99_us", h.value_at_quantile(0.99))
                .put("p999_us", h.value_at_quantile(0.999))
                .put("max_us", h.max());
        }
        self.counts(expected, figures);
    }

    /// The latency histogram, if this tally keeps one.
    pub fn latencies(&self) -> Option<&Histogram<u64>> {
        self.hist.as_ref()
    }

    /// Lost, duplicated, reordered and unexpected messages.
    pub fn counts(&self, expected: u64, figures: &mut Figures) {
        figures
            .put("lost", expected.saturating_sub(self.received))
            .put("duplicated", self.duplicated)
            .put("reordered", self.reordered)
            .put("unexpected", self.unexpected);
    }
}

/// Latencies from 1 µs to 10 minutes, 2 significant digits (within 1 %). Every receiver
/// keeps its own, and a fan-out has 1,000: at 3 digits each held 160 KB of counters, which
/// together missed the caches on most records (14 % of the generator's time, on the cores
/// the server needs); at 2 each holds 24 KB and a run's records touch few of them.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid histogram bounds")
}

/// The results of one run against one server, in the order they are printed.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub items: Vec<(&'static str, Value)>,
    /// Warning and error lines the spawned server logged (first few).
    pub server_log: Vec<String>,
}

impl Figures {
    pub fn put(&mut self, key: &'static str, value: impl Into<Value>) -> &mut Figures {
        self.items.push((key, value.into()));
        self
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.items.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Adds how many warnings the spawned server logged during the run.
    pub fn with_server_log(mut self, server: &Server) -> Figures {
        let (count, first) = server.warnings();
        self.put("server_warnings", count);
        self.server_log = first;
        self
    }
}

/// What a run was: the workload, its protocol and its parameters.
pub struct Meta {
    pub workload: &'static str,
    pub proto: Option<&'static str>,
    pub params: Vec<(&'static str, Value)>,
    /// A remark printed with the summary and put in the JSON line.
    pub note: Option<String>,
}

impl Meta {
    pub fn new(workload: &'static str, proto: Option<&'static str>) -> Meta {
        Meta {
            workload,
            proto,
            params: Vec::new(),
            note: None,
        }
    }

    pub fn param(&mut self, key: &'static str, value: impl Into<Value>) -> &mut Meta {
        self.params.push((key, value.into()));
        self
    }

    fn heading(&self) -> String {
        let mut s = format!("== {}", self.workload);
        if let Some(proto) = self.proto {
            let _ = write!(s, " ({proto})");
        }
        for (k, v) in &self.params {
            let _ = write!(s, " {k}={v}");
        }
        s
    }

    fn json_head(&self, target: &str) -> Vec<(&'static str, Value)> {
        let mut head = vec![("workload", Value::from(self.workload))];
        head.push(("target", target.into()));
        if let Some(proto) = self.proto {
            head.push(("proto", proto.into()));
        }
        head.extend(self.params.iter().cloned());
        head
    }
}

/// `"key":value` for each item, in order.
fn fields<'a>(items: impl IntoIterator<Item = &'a (&'static str, Value)>) -> Vec<String> {
    items
        .into_iter()
        .map(|(k, v)| format!("{}:{}", Value::from(*k), v))
        .collect()
}

/// A JSON object with its keys in the given order.
fn object<'a>(items: impl IntoIterator<Item = &'a (&'static str, Value)>) -> String {
    format!("{{{}}}", fields(items).join(","))
}

fn human(label: &str, figures: &Figures) {
    println!("{label}:");
    for (k, v) in &figures.items {
        println!("  {k:<22} {}", pretty(v));
    }
    for line in &figures.server_log {
        println!("  server log: {line}");
    }
}

fn pretty(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if v.is_f64() => format!("{f:.3}"),
        _ => v.to_string(),
    }
}

/// Prints a run against one server.
pub fn print_one(meta: &Meta, target: &str, figures: &Figures) {
    println!("{}", meta.heading());
    if let Some(note) = &meta.note {
        println!("  ({note})");
    }
    human(target, figures);
    let mut items = meta.json_head(target);
    items.extend(figures.items.iter().cloned());
    if let Some(note) = &meta.note {
        items.push(("note", note.as_str().into()));
    }
    println!("{}", object(&items));
}

/// Prints parley beside the relay, with the ratio parley/relay of the figures in `keys`.
pub fn print_both(meta: &Meta, parley: &Figures, relay: &Figures, keys: &[&'static str]) {
    println!("{}", meta.heading());
    if let Some(note) = &meta.note {
        println!("  ({note})");
    }
    human("relay", relay);
    human("parley", parley);
    let mut ratio = Vec::new();
    for key in keys {
        let a = parley.get(key).and_then(Value::as_f64);
        let b = relay.get(key).and_then(Value::as_f64);
        if let (Some(a), Some(b)) = (a, b) {
            let r = if b == 0.0 { 0.0 } else { a / b };
            ratio.push((*key, Value::from((r * 1000.0).round() / 1000.0)));
        }
    }
    println!("parley/relay:");
    for (k, v) in &ratio {
        println!("  {k:<22} {}", pretty(v));
    }
    let mut line = fields(&meta.json_head("both"));
    line.push(format!("\"parley\":{}", object(&parley.items)));
    line.push(format!("\"relay\":{}", object(&relay.items)));
    line.push(format!("\"ratio\":{}", object(&ratio)));
    if let Some(note) = &meta.note {
        line.push(format!("\"note\":{}", Value::from(note.as_str())));
    }
    println!("{{{}}}", line.join(","));
}

/// A progress bar on stderr, or a hidden one when stderr is not a terminal.
pub fn bar(label: &str, len: u64) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:40}] {pos}/{len} {per_sec} {elapsed}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar
}

/// `count` per second, rounded to a whole number.
pub fn rate(count: u64, seconds: f64) -> u64 {
    if seconds <= 0.0 {
        return 0;
    }
    (count as f64 / seconds).round() as u64
}

/// Resident memory of process `pid` in bytes (`VmRSS` in `/proc/<pid>/status`).
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Peak resident memory of process `pid` since it started (`VmHWM`), in bytes.
pub fn rss_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How often `sample_rss` reads the server's memory.
const RSS_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// Samples the resident memory of `pid` every 10 ms until `cancel`: the peak (bytes), and
/// one sample in MiB every `keep_ms` for a timeline.
pub async fn sample_rss(
    pid: u32,
    keep_ms: u64,
    cancel: tokio_util::sync::CancellationToken,
) -> (Option<u64>, Vec<u64>) {
    let (mut peak, mut timeline) = (None::<u64>, Vec::new());
    let mut tick = tokio::time::interval(RSS_EVERY);
    let keep_every = (keep_ms / RSS_EVERY.as_millis() as u64).max(1);
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => break,
        }
        let Some(now) = rss(pid) else { break };
        peak = Some(peak.map_or(now, |p| p.max(now)));
        if n % keep_every == 0 {
            timeline.push(now >> 20);
        }
    }
    (peak, timeline)
}

/// The machine's load average over the last minute (`/proc/loadavg`; 0 if unknown): on a
/// shared machine, how much else wanted the cores while a run was measured.
pub fn load_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// CPU time (user + system) process `pid` has used, in ns, from `/proc/<pid>/stat` (whose
/// resolution is a clock tick, usually 10 ms: meaningful over runs of a second or so).
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: the fields start after its closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_sec = rustix::param::clock_ticks_per_second();
    (per_sec > 0).then(|| ticks * 1_000_000_000 / per_sec)
}

/// Server CPU time since `before` (a `cpu_ns` reading), per item, in µs with one decimal.
pub fn cpu_per(before: Option<u64>, pid: Option<u32>, items: u64) -> Option<f64> {
    let after = pid.and_then(cpu_ns)?;
    let spent = after.saturating_sub(before?) as f64 / 1000.0;
    Some((spent / items.max(1) as f64 * 10.0).round() / 10.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_our_own_rss_and_cpu() {
        let me = std::process::id();
        assert!(super::rss(me).expect("/proc is there") > 0);
        assert!(super::cpu_ns(me).is_some());
    }
}
