//! A token bucket: the one rate limit of sessions, on commands of the line protocols (a
//! client past it is read more slowly) and on messages (one past it is refused).

use std::time::Duration;

use tokio::time::Instant;

/// `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub(super) struct TokenBucket {
    /// f32 (exact for any rate up to 16 million a second): a session holds two buckets,
    /// and every connection a session.
    rate: f32,
    burst: f32,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `per_second` tokens a second (0: no limit), at most `burst` saved up (at least one
    /// second's worth); it starts full.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = burst.max(per_second).max(1) as f32;
        TokenBucket {
            rate: per_second as f32,
            burst,
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_n(1)
    }

    /// Takes `n` tokens if there are as many, else none (so more than the burst at once
    /// is never allowed).
    pub fn try_take_n(&mut self, n: usize) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        self.refill();
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes a token, waiting until there is one.
    pub async fn take(&mut self) {
        if self.rate <= 0.0 {
            return;
        }
        self.refill();
        if self.tokens < 1.0 {
            let wait = (1.0 - self.tokens) / f64::from(self.rate);
            tracing::debug!(wait_ms = (wait * 1000.0) as u64, "over the rate: waiting");
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            self.tokens = 1.0;
            self.last = Instant::now();
        }
        self.tokens -= 1.0;
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * f64::from(self.rate);
        self.tokens = (self.tokens + earned).min(f64::from(self.burst));
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full bucket gives its burst at once, then refuses; a rate of 0 never runs dry.
    #[test]
    fn a_burst_then_refusals_and_no_limit_at_rate_zero() {
        // One token an hour: none comes back while the test runs.
        let mut hourly = TokenBucket::new(1, 3);
        hourly.rate = 1.0 / 3600.0;
        assert_eq!(
            [(); 4].map(|_| hourly.try_take()),
            [true, true, true, false]
        );
        let mut none = TokenBucket::new(0, 0);
        assert!((0..10_000).all(|_| none.try_take()));
        assert!(none.try_take_n(1_000_000));
        // The burst is at least one second's worth.
        assert_eq!(TokenBucket::new(50, 2).burst, 50.0);
    }

    /// `n` tokens are taken all or none: a refusal takes nothing.
    #[test]
    fn several_tokens_are_taken_all_or_none() {
        let mut hourly = TokenBucket::new(1, 5);
        hourly.rate = 1.0 / 3600.0;
        assert!(hourly.try_take_n(3));
        assert!(!hourly.try_take_n(3), "2 left");
        assert!(hourly.try_take_n(2), "the refusal took none");
        assert!(!hourly.try_take());
        assert!(!TokenBucket::new(1, 5).try_take_n(6), "more than the burst");
    }

    /// Past its burst, `take` waits for the next token instead of refusing.
    #[tokio::test]
    async fn take_waits_for_a_token() {
        let mut bucket = TokenBucket::new(1000, 1000);
        (bucket.burst, bucket.tokens) = (1.0, 1.0);
        bucket.take().await;
        assert!(!bucket.try_take(), "the burst is spent");
        let waited = tokio::time::timeout(Duration::from_secs(5), bucket.take()).await;
        waited.expect("a token comes back within a millisecond or so");
    }
}
