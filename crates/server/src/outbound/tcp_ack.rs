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

/// One conversation's furthest sequence in one write, waiting for the peer's
/// acknowledgement of the write's end. Flat (an entry per conversation, not a list per
/// write): a write and a report allocate nothing, where a list per write was an allocation
/// per write and another per report (about 200 instructions a message at W = 1, callgrind).
struct Pending {
    /// The stream's offset the peer must acknowledge; `OPEN` while the write is encoded.
    end: u64,
    conv: ConvId,
    seq: Seq,
}

/// The end of a write still being encoded: never confirmed.
const OPEN: u64 = u64::MAX;
/// A pending list that grew past this many entries is released once empty: a parked
/// writer keeps its tracker.
const KEEP_PENDING: usize = 16;

/// Per-connection bookkeeping of unacknowledged deliveries.
pub struct AckTracker {
    fd: RawFd,
    /// Bytes written so far, counted on a plain TCP connection (`plain`: every byte of its
    /// stream is the writer's): a write's end is then known without asking the kernel. Not
    /// under TLS, where the records on the wire are longer than what was written. (A flag
    /// beside `dead` rather than an `Option`: 8 bytes less in every parked writer.)
    sent: u64,
    plain: bool,
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
            sent: 0,
            plain,
            pending: VecDeque::new(),
            dead: false,
        }
    }

    /// Notes that the write being encoded carries `conv` up to `seq` (a run of one
    /// conversation's deliveries is one entry: only its furthest sequence counts).
    pub fn carries(&mut self, conv: ConvId, seq: Seq) {
        match self.pending.back_mut() {
            Some(last) if last.end == OPEN && last.conv == conv => last.seq = last.seq.max(seq),
            _ => self.pending.push_back(Pending {
                end: OPEN,
                conv,
                seq,
            }),
        }
    }

    /// Records that the write being encoded, `bytes` long, completed (call right after
    /// every write completed, with or without deliveries). `count`: its deliveries wait for
    /// the peer's acknowledgement (false for a client that acks them itself).
    pub fn written(&mut self, bytes: usize, count: bool) {
        if self.plain {
            // The peer acknowledges exactly the stream's bytes (`tcpi_bytes_acked`), and a
            // peer that reset never acknowledges what came after: no kernel call needed.
            self.sent += bytes as u64;
            return self.close(count && !self.dead, self.sent);
        }
        if !self.has_open() || !count || self.dead {
            return self.close(false, 0);
        }
        match (info(self.fd), queued(self.fd)) {
            (Some(info), Some(_)) if info.reset => {
                self.dead = true;
                self.close(false, 0);
            }
            // The stream's end so far: what the peer acknowledged plus what is still queued
            // (unsent or unacknowledged). A reset purges the queue, hence the check above.
            (Some(info), Some(queued)) => self.close(true, info.acked + queued),
            // No way to ask (not Linux, or the socket is gone): trust the write.
            _ => self.close(true, 0),
        }
    }

    /// The write being encoded failed: what it carried is never confirmed.
    pub fn failed(&mut self) {
        self.close(false, 0);
    }

    fn has_open(&self) -> bool {
        self.pending.back().is_some_and(|p| p.end == OPEN)
    }

    /// Gives the open write's entries their `end` (`keep`), or drops them.
    fn close(&mut self, keep: bool, end: u64) {
        if !keep {
            while self.has_open() {
                self.pending.pop_back();
            }
            return;
        }
        let open = self.pending.iter_mut().rev().take_while(|p| p.end == OPEN);
        open.for_each(|p| p.end = end);
    }

    /// Hands each delivery the peer has acknowledged since the last call to `each`.
    pub fn confirmed(&mut self, mut each: impl FnMut(ConvId, Seq)) {
        if self.pending.is_empty() {
            return;
        }
        let (acked, reset) = match info(self.fd) {
            Some(info) => (info.acked, info.reset),
            None if self.dead => return,
            None => (u64::MAX - 1, false),
        };
        while let Some(p) = self.pending.front() {
            if p.end > acked {
                break;
            }
            each(p.conv, p.seq);
            self.pending.pop_front();
        }
        if reset {
            // The rest will never be acknowledged: stop waiting for it.
            self.dead = true;
            self.pending.clear();
        }
        if self.pending.is_empty() && self.pending.capacity() > KEEP_PENDING {
            self.pending = VecDeque::new();
        }
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
