//! One live AMQP connection and its publishing channels. A reconnect makes a new session; the
//! old one is dropped with everything that was bound to it.
//!
//! # Publishing
//! Ordinary publishes share one channel in confirm mode, pipelined: each publish queues its
//! frames and then waits for its own confirm without holding any lock, so thousands can be in
//! flight at once. lapin registers a publish's confirm (its delivery tag) and queues its frames
//! under two separate locks; two tasks racing between those steps would get each other's
//! confirms, so that short synchronous step runs under a mutex (never held across an await).
//!
//! Mandatory publishes (casts, RPC requests) go to a small pool of channels, each with one
//! publish in flight: lapin hands a `basic.return` to whichever confirm completes next on the
//! channel, so only a channel with a single outstanding publish can say for sure which message
//! came back. These channels also carry the RPC requests, and each consumes RabbitMQ's direct
//! reply-to for the requests it sent (see `inbox`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    DefaultConnectionBuilder,
};
use tidings_core::broker_url::Node;
use tidings_core::{ErrorKind, Result};

use crate::config::Config;
use crate::errors::transport;
use crate::inbox::{ReplyFeed, DIRECT_REPLY_TO};
use crate::topology::declare_exchange;

/// How many channels carry mandatory publishes concurrently.
const MANDATORY_CHANNELS: usize = 4;

/// What the broker said about a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Stored (or routed) and confirmed.
    Confirmed,
    /// Mandatory and no queue took it.
    Returned,
    /// The broker refused it (`basic.nack`).
    Nacked,
}

/// A confirm-mode channel, replaced when the broker closes it.
struct ConfirmChannel {
    /// Shared behind an `Arc`: a publish takes one reference (a `Channel` clone is a dozen).
    current: Mutex<Option<Arc<Channel>>>,
    reopen: tokio::sync::Mutex<()>,
}

impl ConfirmChannel {
    fn new(channel: Channel) -> Self {
        Self {
            current: Mutex::new(Some(Arc::new(channel))),
            reopen: tokio::sync::Mutex::new(()),
        }
    }

    fn live(&self) -> Option<Arc<Channel>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|c| c.status().connected())
            .cloned()
    }

    /// Drops `stale` if it is still the current channel, so the next publish opens a fresh
    /// one. A RabbitMQ 3.x channel can keep refusing (`basic.nack`) every publish to a quorum
    /// queue whose leader moved while it was sending, although a new channel's are accepted.
    fn discard(&self, stale: &Channel) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|c| c.id() == stale.id()) {
            *current = None;
            let stale = stale.clone();
            tokio::spawn(async move {
                let _ = stale.close(200, "tidings: publishes refused".into()).await;
            });
        }
    }

    /// The channel, opened again if the broker closed it (for example after a publish to a
    /// deleted exchange).
    async fn get(&self, connection: &Connection) -> lapin::Result<Arc<Channel>> {
        if let Some(channel) = self.live() {
            return Ok(channel);
        }
        let _one_at_a_time = self.reopen.lock().await;
        if let Some(channel) = self.live() {
            return Ok(channel);
        }
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let channel = Arc::new(channel);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(channel.clone());
        Ok(channel)
    }
}

/// A channel for mandatory publishes, used by one publish at a time (under its slot's lock).
#[derive(Default)]
struct MandatorySlot {
    channel: Option<Channel>,
    /// Whether this channel consumes direct reply-to (it must, before it sends a request).
    replying: bool,
}

impl MandatorySlot {
    /// The channel, opened again if the broker closed it, consuming direct reply-to when a
    /// request is about to be sent on it.
    async fn ready(
        &mut self,
        connection: &Connection,
        replies: Option<&ReplyFeed>,
    ) -> lapin::Result<&Channel> {
        let live = self
            .channel
            .as_ref()
            .is_some_and(|c| c.status().connected());
        if !live {
            self.channel = None;
            self.replying = false;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            self.channel = Some(channel);
        }
        let channel = self.channel.as_ref().expect("opened above");
        if let (Some(feed), false) = (replies, self.replying) {
            let consumer = channel
                .basic_consume(
                    DIRECT_REPLY_TO.into(),
                    ShortString::default(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            // A closed feed means the inbox is gone; its replies are not wanted.
            let _ = feed.send(consumer);
            self.replying = true;
        }
        Ok(channel)
    }
}

/// One live connection.
pub(crate) struct Session {
    pub(crate) connection: Connection,
    publisher: ConfirmChannel,
    /// Serialises lapin's "register confirm + queue frames" step (see the module docs).
    send_order: Mutex<()>,
    mandatory: Vec<tokio::sync::Mutex<MandatorySlot>>,
    next_mandatory: AtomicUsize,
    /// Dead-letter queues already declared on this connection.
    declared: Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// Connects to `node`, declares the exchange and opens the publishing channel.
    pub(crate) async fn open(config: &Config, node: &Node) -> Result<Self> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("tidings ({})", config.exchange).into());
        let cert_chain = match &config.tls {
            Some(tls) => tls.ca_pem()?,
            None => None,
        };
        let connect = async {
            DefaultConnectionBuilder::new()?
                .with_uri_str(config.lapin_uri(node))
                .with_properties(properties)
                .with_tls_config(OwnedTLSConfig {
                    identity: None,
                    cert_chain,
                })
                .connect()
                .await
        };
        let connection = connect.await.map_err(|e| {
            let check = if e.to_string().contains("certificate") {
                "does the url's host match the broker's certificate, and is its CA trusted \
                 (installed on the host, or given as ?ca=<pem file>)?"
            } else {
                "check that RabbitMQ runs there and that the user, password and vhost are right"
            };
            transport(
                ErrorKind::Connection,
                format!(
                    "cannot connect to RabbitMQ node {node} of {}: {e}; {check}",
                    config.redacted
                ),
                e,
            )
        })?;
        let channel = connection.create_channel().await.map_err(|e| {
            transport(
                ErrorKind::Connection,
                format!("cannot open a channel on {}: {e}", config.redacted),
                e,
            )
        })?;
        declare_exchange(&channel, &config.exchange).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| {
                transport(
                    ErrorKind::Connection,
                    format!("cannot enable publisher confirms: {e}"),
                    e,
                )
            })?;
        Ok(Self {
            connection,
            publisher: ConfirmChannel::new(channel),
            send_order: Mutex::new(()),
            mandatory: (0..MANDATORY_CHANNELS)
                .map(|_| tokio::sync::Mutex::default())
                .collect(),
            next_mandatory: AtomicUsize::new(0),
            declared: Mutex::new(Default::default()),
        })
    }

    /// Whether the connection is still up.
    pub(crate) fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Whether `queue` was already declared on this connection; marks it declared.
    pub(crate) fn mark_declared(&self, queue: &str) -> bool {
        !self
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.to_owned())
    }

    /// Forgets a declaration (it failed, or the queue may have been deleted).
    pub(crate) fn forget_declared(&self, queue: &str) {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(queue);
    }

    /// Publishes and waits for the broker's confirm. An RPC request (`replies`: the inbox that
    /// reads its reply) goes out on a channel that consumes direct reply-to.
    ///
    /// This future is moved (copied) a few times on every publish, so it is kept small: what
    /// is rare or only for mandatory publishes is boxed.
    pub(crate) async fn publish(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        mandatory: bool,
        replies: Option<&ReplyFeed>,
        body: &[u8],
        properties: BasicProperties,
    ) -> lapin::Result<Sent> {
        if mandatory || replies.is_some() {
            return Box::pin(self.publish_mandatory(
                exchange,
                routing_key,
                mandatory,
                replies,
                body,
                properties,
            ))
            .await;
        }
        let channel = match self.publisher.live() {
            Some(channel) => channel,
            None => Box::pin(self.publisher.get(&self.connection)).await?,
        };
        let mut publish = std::pin::pin!(channel.basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions::default(),
            body,
            properties,
        ));
        // The first poll registers the confirm and queues the frames, synchronously.
        let first = {
            let _order = self.send_order.lock().unwrap_or_else(|p| p.into_inner());
            let waker = futures::task::noop_waker();
            publish.as_mut().poll(&mut Context::from_waker(&waker))
        };
        let confirm = match first {
            Poll::Ready(result) => result?,
            Poll::Pending => publish.await?,
        };
        let sent = outcome(confirm.await?);
        if sent == Sent::Nacked {
            self.publisher.discard(&channel);
        }
        Ok(sent)
    }

    /// A mandatory publish or an RPC request, on one of the mandatory channels.
    async fn publish_mandatory(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        mandatory: bool,
        replies: Option<&ReplyFeed>,
        body: &[u8],
        properties: BasicProperties,
    ) -> lapin::Result<Sent> {
        // Held until the confirm arrives: one publish in flight on this channel. The first
        // free channel, so that one caller at a time keeps using one channel (and the
        // broker's process behind it) instead of waking the next one each time.
        let free = self.mandatory.iter().find_map(|slot| slot.try_lock().ok());
        let mut slot = match free {
            Some(slot) => slot,
            None => {
                let i = self.next_mandatory.fetch_add(1, Ordering::Relaxed) % self.mandatory.len();
                self.mandatory[i].lock().await
            }
        };
        let channel = slot.ready(&self.connection, replies).await?;
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let confirm = channel
            .basic_publish(exchange, routing_key, options, body, properties)
            .await?
            .await?;
        let sent = outcome(confirm);
        if sent == Sent::Nacked {
            // See `ConfirmChannel::discard`; the next publish on this slot opens another.
            slot.channel = None;
        }
        Ok(sent)
    }

    /// Closes the connection politely: the broker requeues what was not acked.
    pub(crate) async fn close(&self) {
        if self.is_connected() {
            if let Err(e) = self.connection.close(200, "tidings: closed".into()).await {
                tracing::debug!(error = %e, "closing the AMQP connection failed");
            }
        }
    }
}

fn outcome(confirmation: Confirmation) -> Sent {
    match confirmation {
        Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => Sent::Returned,
        Confirmation::Ack(None) | Confirmation::NotRequested => Sent::Confirmed,
        Confirmation::Nack(None) => Sent::Nacked,
    }
}
