//! Repeated log lines, limited per connection and per cause, with a count of what was left
//! out.
//!
//! One connection sending bad frames wrote 6,700 WARN lines in 56 ms, and throttled logins
//! 9,463 lines a minute: a log an operator cannot read, and a disk an attacker can fill. So
//! each cause (a line's message: "bad frame", "wrong name or password", ...) may write a
//! burst of lines and then a few a second; the lines past that are counted, and the next
//! line of that cause that is written says how many were left out:
//! `bad frame (1234 similar suppressed)`, with a `suppressed=1234` field. The limit holds
//! per connection ([`PerConnection`], which reports what it still holds when the session
//! ends) and server-wide ([`ServerWide`], for causes that many connections share), so
//! neither one connection nor many flood the log; counts that no later line carried are
//! written every few seconds ([`ServerWide::report`]). Lines that happen once per connection
//! (logged in, disconnected) are not limited: operators count on them.

use std::sync::Mutex;

use tokio::time::Instant;

/// How many lines of a cause are written at once, and how many a second after that.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub burst: f32,
    pub per_second: f32,
}

/// A connection's lines of one cause: 10 at once, then one a second.
pub const PER_CONNECTION: Rate = Rate {
    burst: 10.0,
    per_second: 1.0,
};

/// The server's lines of one cause over every connection: 100 at once, then 10 a second.
pub const SERVER_WIDE: Rate = Rate {
    burst: 100.0,
    per_second: 10.0,
};

/// One cause's budget of lines, and the lines it left out since the last one written.
#[derive(Debug)]
struct Slot {
    cause: &'static str,
    tokens: f32,
    last: Instant,
    suppressed: u64,
}

/// The budgets of the causes seen so far (a handful: a short list beats a map).
#[derive(Debug, Default)]
struct Causes(Vec<Slot>);

impl Causes {
    /// Whether a line of `cause` may be written now; if so, how many lines of it were left
    /// out before it (reported with it, so counted no more). If not, it is counted.
    fn allow(&mut self, cause: &'static str, rate: Rate, now: Instant) -> Option<u64> {
        let at = match self.0.iter().position(|s| s.cause == cause) {
            Some(at) => at,
            None => {
                self.0.push(Slot {
                    cause,
                    tokens: rate.burst,
                    last: now,
                    suppressed: 0,
                });
                self.0.len() - 1
            }
        };
        let slot = &mut self.0[at];
        let earned = now.duration_since(slot.last).as_secs_f32() * rate.per_second;
        slot.tokens = (slot.tokens + earned).min(rate.burst);
        slot.last = now;
        if slot.tokens >= 1.0 {
            slot.tokens -= 1.0;
            Some(std::mem::take(&mut slot.suppressed))
        } else {
            slot.suppressed += 1;
            None
        }
    }

    /// Counts `lines` of `cause` as left out.
    fn suppress(&mut self, cause: &'static str, lines: u64, rate: Rate, now: Instant) {
        if lines == 0 {
            return;
        }
        match self.0.iter_mut().find(|s| s.cause == cause) {
            Some(slot) => slot.suppressed += lines,
            None => self.0.push(Slot {
                cause,
                tokens: rate.burst,
                last: now,
                suppressed: lines,
            }),
        }
    }

    /// The causes with lines left out and not reported yet, and how many; forgets them.
    fn take_suppressed(&mut self) -> Vec<(&'static str, u64)> {
        let held = self.0.iter_mut().filter(|s| s.suppressed > 0);
        held.map(|s| (s.cause, std::mem::take(&mut s.suppressed)))
            .collect()
    }
}

/// One connection's limit. Only the session's own task locks it (the lock is never
/// contended); it holds no list until the connection first logs a limited line.
#[derive(Debug, Default)]
pub struct PerConnection(Mutex<Option<Box<Causes>>>);

impl PerConnection {
    /// Whether a line of `cause` may be written now, and how many lines of it this
    /// connection left out since the last one (see `Causes::allow`).
    pub fn allow(&self, cause: &'static str) -> Option<u64> {
        let mut causes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let causes = causes.get_or_insert_with(Default::default);
        causes.allow(cause, PER_CONNECTION, Instant::now())
    }

    /// What the connection left out and has not reported yet (at its end).
    pub fn take_suppressed(&self) -> Vec<(&'static str, u64)> {
        let mut causes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        causes.as_mut().map_or(Vec::new(), |c| c.take_suppressed())
    }
}

/// The server's limit, over every connection.
#[derive(Debug, Default)]
pub struct ServerWide(Mutex<Causes>);

impl ServerWide {
    /// Whether a line of `cause` may be written now, and how many lines of it the server
    /// left out since the last one.
    pub fn allow(&self, cause: &'static str) -> Option<u64> {
        let mut causes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        causes.allow(cause, SERVER_WIDE, Instant::now())
    }

    /// Counts lines another limit let through that this one did not write after all.
    pub fn suppress(&self, cause: &'static str, lines: u64) {
        let mut causes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        causes.suppress(cause, lines, SERVER_WIDE, Instant::now());
    }

    /// Writes, for each cause, how many lines were left out and not reported yet. A burst
    /// that ends before its cause's budget refills has no later line to carry its count,
    /// so the server calls this every [`REPORT_EVERY`] and once at its end.
    pub fn report(&self) {
        let held = {
            let mut causes = self.0.lock().unwrap_or_else(|e| e.into_inner());
            causes.take_suppressed()
        };
        for (cause, suppressed) in held {
            tracing::warn!(suppressed, "{cause} ({suppressed} similar suppressed)");
        }
    }
}

/// How often the server writes the counts of lines left out that no later line reported.
pub const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Logs `$cause` at `$level` with the given fields, unless lines of that cause are over
/// the server-wide limit `$limit` ([`ServerWide`]); a line written after some were left out
/// says how many.
macro_rules! limited {
    ($limit:expr, $level:ident, $cause:literal $(, $($field:tt)+)?) => {
        if let Some(suppressed) = $limit.allow($cause) {
            $crate::log_limit::write_line!($level, suppressed, $cause $(, $($field)+)?);
        }
    };
}
pub(crate) use limited;

/// Writes a line of `$cause` that a limit let through, with how many were left out before.
macro_rules! write_line {
    ($level:ident, $suppressed:expr, $cause:literal $(, $($field:tt)+)?) => {
        match $suppressed {
            0 => tracing::$level!($($($field)+,)? $cause),
            suppressed => tracing::$level!(
                $($($field)+,)? suppressed,
                "{} ({} similar suppressed)", $cause, suppressed
            ),
        }
    };
}
pub(crate) use write_line;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A burst, then refusals counted, and the next line allowed reports them.
    #[test]
    fn a_burst_then_counted_refusals_reported_by_the_next_line() {
        let rate = Rate {
            burst: 3.0,
            per_second: 1.0,
        };
        let mut causes = Causes::default();
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let allowed: Vec<_> = (0..5).map(|_| causes.allow("bad", rate, at(0))).collect();
        assert_eq!(allowed, [Some(0), Some(0), Some(0), None, None]);
        assert_eq!(
            causes.allow("other", rate, at(0)),
            Some(0),
            "causes are apart"
        );
        assert_eq!(
            causes.allow("bad", rate, at(1000)),
            Some(2),
            "a second later"
        );
        assert_eq!(causes.allow("bad", rate, at(1000)), None);
        assert_eq!(causes.take_suppressed(), [("bad", 1)]);
        assert!(causes.take_suppressed().is_empty(), "reported once");
    }

    /// A connection's limit lets 10 of a flood through; the rest are counted.
    #[tokio::test]
    async fn a_connection_writes_a_bounded_number_of_lines() {
        let limit = PerConnection::default();
        let written = (0..10_000).filter(|_| limit.allow("bad frame").is_some());
        assert!((10..=12).contains(&written.count()));
        let held = limit.take_suppressed();
        assert!(held[0].1 >= 9_988, "{held:?}");
    }
}
