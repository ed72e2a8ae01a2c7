//! The JSON protocol over WebSocket (`/ws`): the same requests, answers and pushes as JSON
//! lines, one JSON object per text message. Only the framing differs: frames are read
//! here, and the session's style (`Style::WebSocket`) frames what is written.

use std::sync::Arc;

use bytes::BytesMut;
use parley_proto::ws::{self, close, Message, Opcode};

use super::{Flow, Session, Shared};
use crate::conn::Conn;
use crate::outbound::{Item, Kill, Protocol, Style};

/// Serves a connection whose WebSocket handshake is done; `initial` holds what the client
/// sent after it. As `super::run`, set up before the future exists.
pub fn run(
    conn: Conn,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    initial: BytesMut,
    keep: impl Send + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (mut session, mut socket) = Session::open(conn, peer, Protocol::Json, false, shared);
    // A message is bounded as a JSON line is.
    let max = session.shared.config.max_line_bytes;
    session.websocket = Some(Box::new(ws::Reader::new(max, true)));
    session.set_style(Style::WebSocket);
    let mut buf = initial;
    async move {
        let reason = session.read_loop(&mut socket, &mut buf).await;
        drop((socket, buf));
        Box::pin(session.finish(reason)).await;
        drop(keep);
    }
}

/// A control frame, queued as it is.
fn control(opcode: Opcode, payload: &[u8]) -> Item {
    let mut frame = BytesMut::new();
    ws::encode(opcode, payload, None, &mut frame);
    Item::Raw(frame.freeze())
}

impl Session {
    /// Handles every whole message in `buf`: text messages as JSON requests, pings with
    /// pongs, a close with a close.
    pub(super) async fn drain_websocket(&mut self, buf: &mut BytesMut) -> Flow {
        loop {
            if let Flow::Close(why) = self.room().await {
                return Flow::Close(why);
            }
            let Some(reader) = self.websocket.as_mut() else {
                return Flow::Continue;
            };
            let message = match reader.read(buf) {
                Ok(Some(message)) => message,
                Ok(None) => return Flow::Continue,
                Err(e) => {
                    let code = match e {
                        ws::Error::TooLarge => close::TOO_BIG,
                        _ => close::PROTOCOL_ERROR,
                    };
                    let reason = e.to_string();
                    self.say(control(Opcode::Close, &ws::close_payload(code, &reason)))
                        .await;
                    // What follows cannot be framed: nothing more is read.
                    buf.clear();
                    self.websocket = None;
                    return Flow::Close(format!("WebSocket: {reason}"));
                }
            };
            match message {
                Message::Text(payload) => {
                    self.commands.take().await;
                    if let Flow::Close(why) = self.json_line(payload).await {
                        return Flow::Close(why);
                    }
                }
                Message::Ping(payload) => self.say(control(Opcode::Pong, &payload)).await,
                Message::Pong(_) => {}
                Message::Binary(_) => {
                    let payload = ws::close_payload(close::UNSUPPORTED, "text messages only");
                    self.say(control(Opcode::Close, &payload)).await;
                    self.websocket = None;
                    return Flow::Close("WebSocket: a binary message".into());
                }
                Message::Close(_) => {
                    self.say(control(
                        Opcode::Close,
                        &ws::close_payload(close::NORMAL, ""),
                    ))
                    .await;
                    self.websocket = None;
                    return Flow::Close("closed by peer".into());
                }
            }
        }
    }

    /// Says goodbye with a close frame, unless one was already sent.
    pub(super) fn close_websocket(&self, reason: &str) {
        let code = match reason {
            super::SHUTTING_DOWN => close::GOING_AWAY,
            r if r == Kill::Draining.reason() => close::GOING_AWAY,
            _ => close::NORMAL,
        };
        let payload = ws::close_payload(code, reason);
        self.link.push(control(Opcode::Close, &payload));
    }
}
