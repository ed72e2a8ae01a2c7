//! The relay: a deliberately minimal server of the seed-000 binary protocol, the ceiling
//! parley's figures are compared against.
//!
//! It does what a server of this protocol cannot avoid and nothing else: per connection a
//! reader that decodes frames, a map from name to the writer of the connection logged in
//! under it, and a writer task that drains its queue and writes everything pending with one
//! call. Login answers OK (0x04 if the name is online); a message is re-encoded with cid 0 and
//! queued to the recipient's writer if it is online (dropped otherwise) and answered OK;
//! 0x09 answers OK. No storage, no ordering guarantees beyond TCP's, no limits but a bounded
//! queue per connection (a full one makes the sender's reader wait). Idle connections hold no
//! read buffer, so the memory figure per connection is honest too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use parley_proto::binary::{self, code, Frame};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::conn::read_more;

/// Frames queued per connection before its senders wait.
const QUEUE: usize = 4096;
/// Largest frame accepted. The benchmark's frames are small; parley's default
/// `max_frame_bytes` is larger (seed 000's largest legal frame, 196,626 bytes).
const MAX_FRAME: usize = 64 * 1024;
/// Bytes read at a time (as parley's sessions do).
const READ_CHUNK: usize = 8 * 1024;
/// Bytes gathered into one write at most.
const WRITE_BATCH: usize = 64 * 1024;

/// `parley bench relay`.
#[derive(clap::Args, Debug, Clone)]
pub struct RelayArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5556")]
    pub listen: SocketAddr,
}

type Online = Arc<Mutex<HashMap<Bytes, mpsc::Sender<Bytes>>>>;

/// Runs the relay until the process is killed.
pub fn main(args: RelayArgs) -> anyhow::Result<()> {
    crate::conns::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.listen).await?;
        eprintln!("relay listening addr={}", listener.local_addr()?);
        serve(listener, CancellationToken::new()).await;
        Ok(())
    })
}

/// Binds `listen` and serves in a background task (for tests): its address and the task.
pub async fn spawn(
    listen: SocketAddr,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    Ok((addr, tokio::spawn(serve(listener, stop))))
}

/// Accepts connections until `stop` is cancelled.
pub async fn serve(listener: TcpListener, stop: CancellationToken) {
    let online: Online = Arc::default();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, online.clone(), stop.clone()));
            }
            // Out of file descriptors: wait a little rather than spin.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

async fn connection(stream: TcpStream, online: Online, stop: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let (mut read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel(QUEUE);
    let writer = tokio::spawn(writer(write, rx));
    let mut name: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    'read: loop {
        if buf.is_empty() {
            // Idle connections hold no buffer: wait for data before allocating one.
            buf = BytesMut::new();
            tokio::select! {
                _ = stop.cancelled() => break,
                ready = read.readable() => if ready.is_err() { break },
            }
        }
        if read_more(&mut read, &mut buf, READ_CHUNK, &stop)
            .await
            .is_none()
        {
            break;
        }
        // The answers to everything in this read go out as one queue entry.
        let mut answers = BytesMut::new();
        loop {
            let frame = match binary::decode(&mut buf, MAX_FRAME) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) if e.is_fatal() => break 'read,
                Err(e) => {
                    let code = binary::error_code(e.kind());
                    binary::encode_response(e.correlation_id().unwrap_or(0), code, &mut answers);
                    continue;
                }
            };
            let (cid, code) = match frame {
                Frame::Login { cid, username } => (cid, login(&online, &mut name, username, &tx)),
                Frame::Message {
                    cid,
                    message,
                    from,
                    to,
                    time,
                } => {
                    if name.is_none() {
                        (cid, code::NOT_LOGGED_IN)
                    } else {
                        let target = online.lock().expect("not poisoned").get(&to).cloned();
                        if let Some(target) = target {
                            let mut push = BytesMut::new();
                            let _ =
                                binary::encode_message(0, &message, &from, &to, time, &mut push);
                            let _ = target.send(push.freeze()).await;
                        }
                        (cid, code::OK)
                    }
                }
                Frame::CorrelationTest { cid } => (cid, code::OK),
                other => (other.cid(), code::UNKNOWN_COMMAND),
            };
            binary::encode_response(cid, code, &mut answers);
        }
        if !answers.is_empty() && tx.send(answers.freeze()).await.is_err() {
            break;
        }
    }
    if let Some(name) = name {
        let mut online = online.lock().expect("not poisoned");
        if online.get(&name).is_some_and(|s| s.same_channel(&tx)) {
            online.remove(&name);
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn login(
    online: &Online,
    name: &mut Option<Bytes>,
    username: Bytes,
    tx: &mpsc::Sender<Bytes>,
) -> u16 {
    if name.is_some() {
        return code::USER_ALREADY_LOGGED;
    }
    let mut online = online.lock().expect("not poisoned");
    if online.contains_key(&username) {
        return code::USER_ALREADY_LOGGED;
    }
    // A copy: the decoded name is a slice of the read buffer and would keep all of it alive.
    let username = Bytes::copy_from_slice(&username);
    online.insert(username.clone(), tx.clone());
    *name = Some(username);
    code::OK
}

/// Drains the queue and writes everything pending with one call.
async fn writer(mut socket: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    let mut out = BytesMut::new();
    while let Some(first) = rx.recv().await {
        if rx.is_empty() {
            if socket.write_all(&first).await.is_err() {
                return;
            }
            continue;
        }
        out.extend_from_slice(&first);
        while out.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(more) => out.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if socket.write_all(&out).await.is_err() {
            return;
        }
        out = BytesMut::new();
    }
}
