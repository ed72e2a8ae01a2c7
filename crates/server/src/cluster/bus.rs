//! The node's NATS connection: what the hub commits goes out, what other nodes committed
//! comes in (filtered by the hub's interest) as operations on the hub's channel.
//!
//! Every node subscribes to every committed message and drops what it does not deliver
//! before the hub sees it: no subscription has to be made (and waited for) when a user
//! logs in or a conversation begins, so nothing can slip past between a subscription and
//! the read of where a conversation stands. What that costs, and how a larger deployment
//! would subscribe by conversation instead, is in docs/PERFORMANCE.md.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::wire::{self, Event};
use super::{Incoming, IncomingSink, Interest, Outgoing};

/// Connects to NATS as node `node`, retrying until it answers. Its own publications do not
/// come back to it (`no_echo`); `reconnected` is notified at every reconnection and
/// whenever the client dropped messages because this node read too slowly.
pub async fn connect(
    url: &str,
    node: &str,
    reconnected: Arc<tokio::sync::Notify>,
) -> anyhow::Result<async_nats::Client> {
    let client = async_nats::ConnectOptions::new()
        .name(format!("parley {node}"))
        .no_echo()
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let reconnected = reconnected.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        info!("NATS connected");
                        reconnected.notify_one();
                    }
                    async_nats::Event::Disconnected => warn!("NATS disconnected"),
                    // Messages were dropped: look for what they began, as after a
                    // reconnection.
                    async_nats::Event::SlowConsumer(sid) => {
                        warn!(
                            sid,
                            "NATS: this node read too slowly, messages were dropped"
                        );
                        reconnected.notify_one();
                    }
                    other => info!(event = %other, "NATS"),
                }
            }
        })
        .connect(url)
        .await?;
    Ok(client)
}

pub struct Bus {
    pub client: async_nats::Client,
    pub hub: Arc<dyn IncomingSink>,
    pub interest: Arc<Interest>,
    /// Other nodes' password attempts and wrong tokens are counted here (throttle.rs), not by the hub.
    pub throttle: Arc<crate::throttle::Throttle>,
}

impl Bus {
    /// Subscribes, then publishes and receives in tasks of their own until `shutdown`.
    pub async fn start(
        self,
        mut outgoing: tokio::sync::mpsc::Receiver<Outgoing>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut messages = self.client.subscribe(wire::MESSAGES).await?;
        let mut events = self.client.subscribe(wire::EVENTS).await?;
        let publisher = self.client.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = outgoing.recv() => next,
                };
                let Some(out) = next else { break };
                // While NATS is away the client queues what it can; past that, this waits
                // and the hub's queue fills instead (and drops, counted).
                if let Err(e) = publisher.publish(out.subject, out.payload).await {
                    warn!(error = %e, "publishing to NATS");
                }
            }
        });
        let (hub, interest, throttle) = (self.hub, self.interest, self.throttle);
        tokio::spawn(async move {
            let mut names = wire::Names::default();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    message = messages.next() => {
                        let Some(message) = message else { break };
                        match interest.decode(message.payload, &mut names) {
                            Ok(batch) => {
                                if !batch.is_empty() {
                                    hub.incoming(Incoming::Messages(batch));
                                }
                            }
                            Err(e) => warn!(error = %format!("{e:#}"), "a bad message batch from NATS"),
                        }
                    }
                    event = events.next() => {
                        let Some(event) = event else { break };
                        match serde_json::from_slice::<Event>(&event.payload) {
                            Ok(Event::Login { name, ip, succeeded, unchecked, token }) => {
                                let attempt = match (succeeded, unchecked, token) {
                                    (true, _, _) => crate::throttle::Attempt::Succeeded,
                                    (_, true, _) => crate::throttle::Attempt::Unchecked,
                                    (_, _, true) => crate::throttle::Attempt::TokenFailed,
                                    _ => crate::throttle::Attempt::Begun,
                                };
                                throttle.remote(&name, ip, attempt);
                            }
                            Ok(event) => hub.incoming(Incoming::Event(event)),
                            Err(e) => warn!(error = %e, "a bad event from NATS"),
                        }
                    }
                }
            }
        });
        Ok(())
    }
}
