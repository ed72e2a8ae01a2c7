//! Knowing which written bytes the peer actually took: a push counts as received only once
//! the peer's TCP stack has acknowledged it.
//!
//! Without acks in the protocol, "written to the socket" is not enough: a write into a
//! connection whose peer has already closed still succeeds (the kernel answers the peer's
//! RST later), and a message counted as received there would be lost. So after each write
//! the writer notes how far the connection's byte stream has got (on plain TCP its own count
//! of bytes written, which costs no system call; under TLS bytes acked + bytes still queued);
//! a batch is confirmed when the peer's acknowledgements pass its end. A peer that
//! read the bytes acknowledged them (at the latest with its FIN); a peer that had closed
//! before they arrived answers them with a reset and never acknowledges them, so that batch
//! is never confirmed and is delivered again at the next login. (A peer that took the bytes into its kernel and then closed without reading
//! them is indistinguishable from one that read them: only protocol-level acks, which
//! later protocol versions add, can tell.)

// TCP_INFO and TIOCOUTQ have no safe wrapper in socket2 or rustix: the crate's only unsafe.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::os::fd::RawFd;

use crate::store::{ConvId, Seq};

/// What one write delivered, waiting for the peer's acknowledgement.
struct Pending {
    end: u64,
    delivered: Vec<(ConvId, Seq)>,
}

/// Per-connection bookkeeping of unacknowledged deliveries.
pub struct AckTracker {
    fd: RawFd,
    /// Bytes written so far, on a plain TCP connection (every byte of its stream is the
    /// writer's): a write's end is then known without asking the kernel. `None` under TLS,
    /// where the records on the wire are longer than what was written.
    sent: Option<u64>,
    pending: VecDeque<Pending>,
    /// The peer has closed or reset: nothing written from now on can be confirmed.
    dead: bool,
}

/// The state of a connection as the kernel sees it.
struct Info {
    /// The peer reset the connection (state CLOSE): queued bytes were thrown away.
    reset: bool,
    acked: u64,
}

impl AckTracker {
    /// `plain`: the writer writes every byte of this TCP stream itself (no TLS).
    pub fn new(fd: RawFd, plain: bool) -> Self {
        AckTracker {
            fd,
            sent: plain.then_some(0),
            pending: VecDeque::new(),
            dead: false,
        }
    }

    /// Records a write of `bytes` that carried `delivered` (call right after every write
    /// completed, with or without deliveries).
    pub fn written(&mut self, bytes: usize, delivered: Vec<(ConvId, Seq)>) {
        if let Some(sent) = &mut self.sent {
            // The peer acknowledges exactly the stream's bytes (`tcpi_bytes_acked`), and a
            // peer that reset never acknowledges what came after: no kernel call needed.
            *sent += bytes as u64;
            if !delivered.is_empty() && !self.dead {
                let end = *sent;
                self.pending.push_back(Pending { end, delivered });
            }
            return;
        }
        if delivered.is_empty() || self.dead {
            return;
        }
        match (info(self.fd), queued(self.fd)) {
            (Some(info), Some(_)) if info.reset => self.dead = true,
            // The stream's end so far: what the peer acknowledged plus what is still queued
            // (unsent or unacknowledged). A reset purges the queue, hence the check above.
            (Some(info), Some(queued)) => self.pending.push_back(Pending {
                end: info.acked + queued,
                delivered,
            }),
            // No way to ask (not Linux, or the socket is gone): trust the write.
            _ => self.pending.push_back(Pending { end: 0, delivered }),
        }
    }

    /// Deliveries the peer has acknowledged since the last call.
    pub fn confirmed(&mut self) -> Vec<(ConvId, Seq)> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let (acked, reset) = match info(self.fd) {
            Some(info) => (info.acked, info.reset),
            None if self.dead => return Vec::new(),
            None => (u64::MAX, false),
        };
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|p| p.end <= acked) {
            out.extend(self.pending.pop_front().expect("checked").delivered);
        }
        if reset {
            // The rest will never be acknowledged: stop waiting for it.
            self.dead = true;
            self.pending.clear();
        }
        out
    }

    /// Whether some written deliveries still wait for an acknowledgement.
    pub fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(target_os = "linux")]
fn info(fd: RawFd) -> Option<Info> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        );
        (rc == 0).then_some(Info {
            reset: info.tcpi_state == 7, // TCP_CLOSE
            acked: info.tcpi_bytes_acked,
        })
    }
}

#[cfg(target_os = "linux")]
fn queued(fd: RawFd) -> Option<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one int.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
    (rc == 0).then_some(queued.max(0) as u64)
}

#[cfg(not(target_os = "linux"))]
fn info(_: RawFd) -> Option<Info> {
    None
}

#[cfg(not(target_os = "linux"))]
fn queued(_: RawFd) -> Option<u64> {
    None
}
