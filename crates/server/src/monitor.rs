//! What the server tells its operator about itself: its metrics and where it is in its life
//! (`/healthz`, `/readyz`, `/metrics`; served by `http/monitor.rs`).
//!
//! Ready means "send me clients": not while the store is opened and the message log read
//! (starting), not while draining (`parley admin server drain`), not once shutting down.
//! Alive (`/healthz`) holds from the first moment until shutdown begins.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::metrics::Metrics;

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Opening the store and reading the message log; nothing accepted yet.
    Starting = 0,
    /// Accepting and serving.
    Ready = 1,
    /// Not accepting; sessions are asked to reconnect elsewhere, and the server stops when
    /// they are gone (or at the drain's deadline).
    Draining = 2,
    /// Shutting down.
    Stopping = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Starting,
            1 => Phase::Ready,
            2 => Phase::Draining,
            _ => Phase::Stopping,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
            Phase::Stopping => "shutting down",
        }
    }
}

/// The server's metrics and phase, shared by the sessions, the hub, and the HTTP handlers
/// (which exist before the rest of the server does: the admin port answers while the
/// server starts).
pub struct Monitor {
    pub metrics: Metrics,
    phase: AtomicU8,
}

impl Monitor {
    pub fn new(metrics: Metrics) -> Monitor {
        metrics.set_ready(false);
        Monitor {
            metrics,
            phase: AtomicU8::new(Phase::Starting as u8),
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves on to `phase`; never back (a draining server does not become ready again).
    pub fn advance(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
        self.metrics.set_ready(self.phase() == Phase::Ready);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_only_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let monitor = Monitor::new(Metrics::new(dir.path()));
        assert_eq!(monitor.phase(), Phase::Starting);
        monitor.advance(Phase::Ready);
        assert!(monitor.metrics.render().contains("parley_ready 1\n"));
        monitor.advance(Phase::Stopping);
        monitor.advance(Phase::Draining);
        assert_eq!(monitor.phase(), Phase::Stopping);
        assert!(monitor.metrics.render().contains("parley_ready 0\n"));
    }
}
