//! The RPC inbox on RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`).
//!
//! The connection has one inbox (the driver contract's RPC section), opened by
//! `Provider::open_inbox` and shared by every bus over the provider. `Provider::request` is
//! the one path that sends requests: it sets `reply-to: amq.rabbitmq.reply-to`, which RabbitMQ
//! rewrites into an address of the channel that published the request, and the server's reply
//! goes from its channel straight to that one, without a queue in between: no declaration, no
//! enqueue, no confirm from a queue. RabbitMQ only accepts such a request on a channel that
//! consumes `amq.rabbitmq.reply-to` itself, so every channel that sends requests (the session's
//! mandatory channels, see `session`) starts consuming it before its first request and hands
//! that consumer to the inbox through a [`ReplyFeed`]. The inbox reads all of them. Nothing
//! else looks at a message's `reply-to`: `publish` sends one it is given as it is.
//!
//! A reconnect brings new channels and with them new consumers. A reply to a request sent on
//! a channel that died is lost with it (RabbitMQ drops it), so such a call ends with its
//! timeout; a request not yet confirmed when the connection died is sent again, on a new
//! channel, and gets its reply.

use std::future::poll_fn;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use tidings_core::driver::{Completion, Consumer, Delivery, Outcome, Settle};
use tidings_core::{async_trait, Result};
use tokio::sync::mpsc;

use crate::wire;

/// The address a request names as its `reply-to`.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Hands the inbox the reply consumer of each channel that sends requests.
pub(crate) type ReplyFeed = mpsc::UnboundedSender<lapin::Consumer>;

/// The inbox: reads the replies arriving on every request channel.
pub(crate) struct ReplyInbox {
    feed: mpsc::UnboundedReceiver<lapin::Consumer>,
    consumers: Vec<lapin::Consumer>,
}

impl ReplyInbox {
    pub(crate) fn new(feed: mpsc::UnboundedReceiver<lapin::Consumer>) -> Self {
        Self {
            feed,
            consumers: Vec::new(),
        }
    }

    /// The next reply from any channel. Ends when the provider closed (no more channels will
    /// come) and the last consumer ended.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let mut feed_closed = false;
        loop {
            match self.feed.poll_recv(cx) {
                Poll::Ready(Some(consumer)) => self.consumers.push(consumer),
                Poll::Ready(None) => {
                    feed_closed = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        let mut i = 0;
        while i < self.consumers.len() {
            match self.consumers[i].poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(delivery))) => return Poll::Ready(Some(reply(delivery))),
                Poll::Ready(Some(Err(e))) => {
                    // Its channel or connection is gone; a new channel brings a new consumer.
                    tracing::debug!(error = %e, "a reply consumer ended");
                    self.consumers.swap_remove(i);
                }
                Poll::Ready(None) => {
                    self.consumers.swap_remove(i);
                }
                Poll::Pending => i += 1,
            }
        }
        if feed_closed && self.consumers.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

fn reply(delivery: lapin::message::Delivery) -> Delivery {
    let envelope = wire::decode(
        &delivery.properties,
        delivery.routing_key.as_str(),
        delivery.redelivered,
        Bytes::from(delivery.data),
    );
    Delivery::new(envelope, Box::new(NoSettle))
}

#[async_trait]
impl Consumer for ReplyInbox {
    fn next(&mut self) -> Completion<'_, Option<Delivery>> {
        Completion::later(poll_fn(move |cx| self.poll_reply(cx)))
    }

    async fn cancel(self: Box<Self>) -> Result<()> {
        // Dropping the lapin consumers cancels them; their channels stay for publishing.
        Ok(())
    }
}

/// Settles a reply: nothing to do, replies are consumed without acks (direct reply-to
/// requires it).
struct NoSettle;

impl Settle for NoSettle {
    fn settle(self: Box<Self>, _outcome: Outcome) -> Completion<'static, Result<()>> {
        Completion::done(Ok(()))
    }
}
