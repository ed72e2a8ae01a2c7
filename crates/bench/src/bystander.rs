//! A bystander pair: two users who send each other a DM every few milliseconds while a
//! workload runs, and the latency of those DMs. The storm and the stall workloads measure
//! with it whether everyone else is still served while the server is busy with a crowd.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parley_proto::binary::{self, code, Frame};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::conn::{read_more, Conn};
use crate::dm::Sent;
use crate::report::{Figures, Tally};
use crate::{now_ns, stamp, unstamp, PREFIX};

/// How long the bystanders wait for their last DMs once they stop sending.
const DRAIN: Duration = Duration::from_secs(2);

/// Two users sending each other a DM every few milliseconds until `stop`. They run on a
/// thread and a runtime of their own, as a client on another machine would: among the
/// thousands of tasks of a storm, the bench's own scheduling would add to their latency.
pub struct Bystanders {
    stop: CancellationToken,
    seen: oneshot::Receiver<Seen>,
}

/// What the bystanders saw.
pub struct Seen {
    tally: Tally,
    sent: Sent,
    /// The longest latency (µs) of the DMs received in each `WINDOW` since the start.
    worst: Vec<u64>,
}

/// The bystanders' latency over time: the worst of each window.
const WINDOW_NS: u64 = 250_000_000;

impl Bystanders {
    /// Logs `both` in (binary) and starts their DMs, one every `every_ms` each way, for at
    /// most `timeout` seconds.
    pub async fn start(
        addr: SocketAddr,
        both: [String; 2],
        every_ms: u64,
        timeout: u64,
    ) -> anyhow::Result<Bystanders> {
        let (ready, started) = oneshot::channel();
        let (done, seen) = oneshot::channel();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("bystanders".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(e) => return drop(ready.send(Err(e.into()))),
                };
                runtime.block_on(async move {
                    let mut conns = Vec::new();
                    for name in &both {
                        match Conn::login(addr, crate::Proto::Binary, name).await {
                            Ok(conn) => conns.push(conn),
                            Err(e) => return drop(ready.send(Err(e))),
                        }
                    }
                    let _ = ready.send(Ok(()));
                    let every = Duration::from_millis(every_ms);
                    let _ = done.send(converse(conns, both, every, timeout, stopped).await);
                });
            })?;
        started.await??;
        Ok(Bystanders { stop, seen })
    }

    /// Stops sending and waits (bounded) for what is still on its way.
    pub async fn stop(self) -> Seen {
        self.stop.cancel();
        match tokio::time::timeout(DRAIN * 2, self.seen).await {
            Ok(Ok(seen)) => seen,
            _ => Seen {
                tally: Tally::new(&[]),
                sent: Sent::default(),
                worst: Vec::new(),
            },
        }
    }
}

/// Runs both sides until `stop` and their drain.
async fn converse(
    conns: Vec<Conn>,
    both: [String; 2],
    every: Duration,
    timeout: u64,
    stop: CancellationToken,
) -> Seen {
    // The most either side can send before `--timeout`; receivers keep a bit for each.
    let most = timeout * 1000 / (every.as_millis() as u64).max(1) + 2;
    let counts: Arc<[AtomicU64; 2]> = Arc::default();
    let finished: Arc<[AtomicBool; 2]> = Arc::default();
    let began = now_ns();
    let mut sides = JoinSet::new();
    for (me, conn) in conns.into_iter().enumerate() {
        let names = both.clone();
        let (stop, counts, finished) = (stop.clone(), counts.clone(), finished.clone());
        sides.spawn(async move {
            let side = Side {
                me,
                names,
                every,
                most,
                began,
            };
            side.run(conn, &counts, &finished, &stop).await
        });
    }
    let mut seen = Seen {
        tally: Tally::new(&[]),
        sent: Sent::default(),
        worst: Vec::new(),
    };
    while let Some(side) = sides.join_next().await {
        if let Ok((tally, sent, worst)) = side {
            seen.tally.merge(&tally);
            seen.sent.sent += sent.sent;
            seen.sent.errors += sent.errors;
            if seen.worst.len() < worst.len() {
                seen.worst.resize(worst.len(), 0);
            }
            for (all, w) in seen.worst.iter_mut().zip(worst) {
                *all = (*all).max(w);
            }
        }
    }
    seen
}

impl Seen {
    /// `bystander_*`: DMs sent, lost, refused, latency, and any duplicated, reordered or
    /// unreadable (`bystander_bad`).
    pub fn figures(&self, figures: &mut Figures) {
        let h = self.tally.latencies().expect("bystanders keep latencies");
        figures
            .put("bystander_sent", self.sent.sent)
            .put(
                "bystander_lost",
                self.sent.sent.saturating_sub(self.tally.received),
            )
            .put("bystander_errors", self.sent.errors)
            .put("bystander_p50_us", h.value_at_quantile(0.50))
            .put("bystander_p99_us", h.value_at_quantile(0.99))
            .put("bystander_max_us", h.max());
        let bad = self.tally.duplicated + self.tally.reordered + self.tally.unexpected;
        figures.put("bystander_bad", bad);
        let worst: Vec<u64> = self.worst.iter().map(|us| us / 1000).collect();
        figures.put("bystander_worst_ms_every_250ms", worst);
    }
}

/// One bystander.
struct Side {
    me: usize,
    names: [String; 2],
    every: Duration,
    /// Most DMs this side may send.
    most: u64,
    /// When the bystanders began (ns, the bench's clock).
    began: u64,
}

impl Side {
    /// Sends a DM to the other side every `every` until `stop`, and reads the other side's
    /// until it has stopped and everything it sent arrived (or `DRAIN` passed).
    async fn run(
        self,
        conn: Conn,
        counts: &[AtomicU64; 2],
        finished: &[AtomicBool; 2],
        stop: &CancellationToken,
    ) -> (Tally, Sent, Vec<u64>) {
        let (me, other) = (self.me, 1 - self.me);
        let (from, to) = (&self.names[me], &self.names[other]);
        let (mut stream, mut buf) = conn.into_parts();
        let mut tally = Tally::new(&[self.most]);
        let mut sent = Sent::default();
        let mut payload = [b'.'; PREFIX];
        let mut out = BytesMut::new();
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let never = CancellationToken::new();
        let mut drain_by = None;
        let mut worst: Vec<u64> = Vec::new();
        loop {
            if drain_by.is_none() && stop.is_cancelled() {
                finished[me].store(true, Ordering::Release);
                drain_by = Some(tokio::time::Instant::now() + DRAIN);
            }
            if let Some(by) = drain_by {
                let done = finished[other].load(Ordering::Acquire)
                    && tally.received >= counts[other].load(Ordering::Acquire);
                if done || tokio::time::Instant::now() >= by {
                    return (tally, sent, worst);
                }
            }
            let wait = drain_by.unwrap_or_else(|| tokio::time::Instant::now() + self.every * 4);
            tokio::select! {
                _ = tick.tick(), if drain_by.is_none() && sent.sent < self.most => {
                    stamp(&mut payload, sent.sent);
                    let cid = (sent.sent as u32).wrapping_add(1);
                    let _ = binary::encode_message(cid, &payload, from.as_bytes(), to.as_bytes(), 0, &mut out);
                    if stream.write_all(&out).await.is_err() {
                        return (tally, sent, worst);
                    }
                    out.clear();
                    sent.sent += 1;
                    counts[me].store(sent.sent, Ordering::Release);
                }
                read = read_more(&mut stream, &mut buf, 4096, &never) => {
                    if read.is_none() {
                        return (tally, sent, worst);
                    }
                    let now = now_ns();
                    while let Ok(Some(frame)) = binary::decode(&mut buf, usize::MAX >> 1) {
                        match frame {
                            Frame::Message { message, .. } => match message.get(..PREFIX).and_then(unstamp) {
                                Some((seq, at)) => {
                                    tally.record(0, seq, at, now);
                                    let window = (at.saturating_sub(self.began) / WINDOW_NS) as usize;
                                    if worst.len() <= window {
                                        worst.resize(window + 1, 0);
                                    }
                                    worst[window] = worst[window].max(now.saturating_sub(at) / 1000);
                                }
                                None => tally.unexpected += 1,
                            },
                            Frame::Response { code, .. } => sent.errors += u64::from(code != code::OK),
                            _ => tally.unexpected += 1,
                        }
                    }
                }
                _ = tokio::time::sleep_until(wait) => {}
                _ = stop.cancelled(), if drain_by.is_none() => {}
            }
        }
    }
}
