//! One binary-protocol connection shared by many concurrent requests.
//!
//! A driver task owns the socket. Callers hand it a frame and wait for the response with
//! that frame's correlation id; the data frames the server sends before a response (a token,
//! a history page, file data) are collected and returned with it. Pushed messages (cid 0)
//! go to a channel of their own. So a download, a history request and a dozen sends can be
//! in flight at once, and none waits behind another's caller.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use parley_proto::binary::{self, code, Event, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::transport::{self, BoxStream, Endpoint};
use crate::Error;

/// The largest frame accepted from the server. Its history pages can be long (up to
/// `max_history` messages), so this is far above the 64 KiB the server accepts from us.
const MAX_FRAME: usize = 64 << 20;

/// Pushes waiting for their consumer before reading pauses (then the server's outbound
/// queue fills, and past its bound it drops us: the messages come again at the next login).
const PUSH_QUEUE: usize = 4096;

/// A message the server pushed without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// An event, on a connection that enabled acks: ack it once it is safe.
    Event(Event),
    /// A seed-000 message frame (a connection without acks).
    Message {
        from: bytes::Bytes,
        to: bytes::Bytes,
        message: bytes::Bytes,
        time: u64,
    },
    /// A message was deleted: `event` is the deletion's own place in its conversation (ack
    /// it like a message), `message_seq` the deleted message's.
    Deleted {
        event: Event,
        message_id: u64,
        message_seq: u64,
    },
    /// A watched user came online or went offline.
    Presence {
        user: bytes::Bytes,
        online: bool,
        last_seen: u64,
    },
    /// Something happened in a room (`binary::change`).
    Notice {
        room: bytes::Bytes,
        change: u8,
        user: bytes::Bytes,
        by: bytes::Bytes,
        text: bytes::Bytes,
    },
}

/// The data frames that came before an OK response, in order.
pub type Reply = Vec<Frame>;

/// A request on its way: resolves to its reply.
pub type Answer =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, Error>> + Send + 'static>>;

enum Outgoing {
    /// A request: its answer goes to `reply`.
    Request {
        frame: Frame,
        reply: oneshot::Sender<Result<Reply, Error>>,
    },
    /// A frame that gets no response (an ack).
    Notify(Frame),
}

/// A handle on one connection. Cheap to clone; the connection closes when `close` is
/// called, when the server closes it, or when every handle is dropped.
#[derive(Clone)]
pub struct Connection {
    out: mpsc::UnboundedSender<Outgoing>,
    next_cid: Arc<AtomicU32>,
    closed: CancellationToken,
}

impl Connection {
    /// Connects; pushes arrive on the returned receiver (which ends when the connection
    /// does). The consumer must drain it independently of any request it waits for: the
    /// responses come behind the pushes on the same socket.
    pub async fn connect(endpoint: &Endpoint) -> Result<(Connection, mpsc::Receiver<Push>), Error> {
        let stream = transport::connect(endpoint).await?;
        let (out, requests) = mpsc::unbounded_channel();
        let (push_tx, pushes) = mpsc::channel(PUSH_QUEUE);
        let closed = CancellationToken::new();
        tokio::spawn(drive(stream, requests, push_tx, closed.clone()));
        let conn = Connection {
            out,
            next_cid: Arc::new(AtomicU32::new(1)),
            closed,
        };
        Ok((conn, pushes))
    }

    /// A fresh correlation id (never 0, which marks pushes).
    pub fn cid(&self) -> u32 {
        loop {
            let cid = self.next_cid.fetch_add(1, Ordering::Relaxed);
            if cid != 0 {
                return cid;
            }
        }
    }

    /// Sends the frame `make(cid)` and waits for its response: the data frames before an
    /// OK, `Error::Refused` for any other code, `Error::Disconnected` if the connection ends
    /// first.
    pub async fn request(&self, make: impl FnOnce(u32) -> Frame) -> Result<Reply, Error> {
        self.start(make).await
    }

    /// Queues the frame `make(cid)` now, and returns the wait for its response: requests
    /// started one after the other reach the server in that order (file chunks must).
    pub fn start(&self, make: impl FnOnce(u32) -> Frame) -> Answer {
        let frame = make(self.cid());
        let (reply, answer) = oneshot::channel();
        let queued = self.out.send(Outgoing::Request { frame, reply });
        Box::pin(async move {
            queued.map_err(|_| Error::Disconnected)?;
            answer.await.unwrap_or(Err(Error::Disconnected))
        })
    }

    /// Sends a frame that gets no response (an ack). Lost silently if the connection is
    /// gone: an ack that never arrives only means the message comes again.
    pub fn notify(&self, frame: Frame) {
        let _ = self.out.send(Outgoing::Notify(frame));
    }

    /// Closes the connection: requests in flight fail with `Disconnected`.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled() || self.out.is_closed()
    }

    /// Resolves once the connection has ended.
    pub async fn closed(&self) {
        tokio::select! {
            _ = self.closed.cancelled() => {}
            _ = self.out.closed() => {}
        }
    }
}

/// A request waiting for its response, with the data frames so far.
struct Waiter {
    reply: oneshot::Sender<Result<Reply, Error>>,
    data: Reply,
}

/// Owns the socket: writes what callers queue, routes what the server sends. Ends (failing
/// every waiting request) when either side closes.
async fn drive(
    stream: BoxStream,
    mut requests: mpsc::UnboundedReceiver<Outgoing>,
    pushes: mpsc::Sender<Push>,
    closed: CancellationToken,
) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut waiting: HashMap<u32, Waiter> = HashMap::new();
    let mut inbuf = BytesMut::with_capacity(64 * 1024);
    let mut outbuf = BytesMut::with_capacity(64 * 1024);
    'run: loop {
        tokio::select! {
            _ = closed.cancelled() => break,
            next = requests.recv() => {
                let Some(first) = next else { break };
                // Everything queued goes out in one write.
                outbuf.clear();
                let mut next = Some(first);
                while let Some(outgoing) = next {
                    let frame = match outgoing {
                        Outgoing::Request { frame, reply } => {
                            waiting.insert(frame.cid(), Waiter { reply, data: Vec::new() });
                            frame
                        }
                        Outgoing::Notify(frame) => frame,
                    };
                    if let Err(e) = frame.encode(&mut outbuf) {
                        // A field over 65,535 bytes: that request fails, the others go.
                        if let Some(w) = waiting.remove(&frame.cid()) {
                            let _ = w.reply.send(Err(Error::Local(format!("field too long: {e:?}"))));
                        }
                    }
                    next = requests.try_recv().ok();
                }
                if wr.write_all(&outbuf).await.is_err() {
                    break;
                }
            }
            read = rd.read_buf(&mut inbuf) => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                loop {
                    let frame = match binary::decode(&mut inbuf, MAX_FRAME) {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        // Bytes we cannot frame: nothing after them can be trusted.
                        Err(_) => break 'run,
                    };
                    if route(frame, &mut waiting, &pushes).await.is_err() {
                        break 'run;
                    }
                }
            }
        }
    }
    closed.cancel();
    for (_, w) in waiting.drain() {
        let _ = w.reply.send(Err(Error::Disconnected));
    }
    let _ = wr.shutdown().await;
}

/// Hands one frame from the server to whoever waits for it. Fails if the push consumer is
/// gone (then nobody wants this connection any more).
async fn route(
    frame: Frame,
    waiting: &mut HashMap<u32, Waiter>,
    pushes: &mpsc::Sender<Push>,
) -> Result<(), ()> {
    match frame {
        Frame::Response { cid, code: c } => {
            if let Some(w) = waiting.remove(&cid) {
                let result = if c == code::OK {
                    Ok(w.data)
                } else {
                    Err(Error::Refused(c))
                };
                let _ = w.reply.send(result);
            }
        }
        Frame::Event { cid: 0, event } => {
            pushes.send(Push::Event(event)).await.map_err(drop)?;
        }
        Frame::Message {
            cid: 0,
            message,
            from,
            to,
            time,
        } => {
            let push = Push::Message {
                from,
                to,
                message,
                time,
            };
            pushes.send(push).await.map_err(drop)?;
        }
        Frame::Deleted {
            cid: 0,
            event,
            message_id,
            message_seq,
        } => {
            let push = Push::Deleted {
                event,
                message_id,
                message_seq,
            };
            pushes.send(push).await.map_err(drop)?;
        }
        Frame::Presence {
            cid: 0,
            user,
            online,
            last_seen,
        } => {
            let push = Push::Presence {
                user,
                online,
                last_seen,
            };
            pushes.send(push).await.map_err(drop)?;
        }
        Frame::Notice {
            cid: 0,
            room,
            change,
            user,
            by,
            text,
        } => {
            let push = Push::Notice {
                room,
                change,
                user,
                by,
                text,
            };
            pushes.send(push).await.map_err(drop)?;
        }
        data => {
            // A data frame belongs to the request with its cid; one for no request we sent
            // is ignored (the server never sends such a frame).
            if let Some(w) = waiting.get_mut(&data.cid()) {
                w.data.push(data);
            }
        }
    }
    Ok(())
}
