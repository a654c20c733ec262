//! Sending envelopes: the one place that turns an [`Envelope`] into a confirmed SEND.

use std::time::Duration;

use tidings_core::envelope::now_ms;
use tidings_core::{Envelope, Result};

use crate::dialect::Dialect;
use crate::frame::{FrameBuilder, Outgoing};
use crate::link::Link;
use crate::wire::{self, KeyedTopics};

/// Sends envelopes to destinations and waits for the broker's receipt.
#[derive(Debug)]
pub(crate) struct Outbox {
    pub(crate) link: Link,
    pub(crate) dialect: Box<dyn Dialect>,
    pub(crate) namespace: String,
    /// The topics whose destination states the routing key (publishes leave the key out).
    pub(crate) topics: KeyedTopics,
    pub(crate) persistent: bool,
    pub(crate) timeout: Duration,
}

impl Outbox {
    /// Sends `envelope` to `destination`; returns once the broker confirmed it. An envelope
    /// whose TTL has already run out is dropped, as the broker would drop it.
    ///
    /// The SEND frame is serialized once, here, and re-sent as the same bytes after a
    /// reconnect; the body goes from the envelope's `Bytes` to the socket buffer directly.
    pub(crate) async fn send(
        &self,
        destination: &str,
        envelope: &Envelope,
        persistent: bool,
    ) -> Result<()> {
        let mut frame = FrameBuilder::new(
            "SEND",
            256 + destination.len() + envelope.headers.len() * 32,
        );
        frame.header("destination", destination);
        wire::encode(envelope, destination, &self.topics, &mut frame);
        if let Some(ttl) = envelope.ttl {
            let deadline = envelope
                .timestamp_ms
                .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
            let remaining = deadline.saturating_sub(now_ms());
            if remaining == 0 {
                tracing::debug!(id = %envelope.id, "not sending an already expired message");
                return Ok(());
            }
            let (name, value) = self.dialect.expiry_header(remaining, deadline);
            frame.number(name, value);
        }
        if persistent && self.persistent {
            frame.header("persistent", "true");
        }
        // Always say how long the body is: ActiveMQ then keeps it as bytes, not text.
        frame.number("content-length", envelope.body.len() as u64);
        let frame = frame.finish(Some(envelope.body.clone()));
        self.link
            .request(
                || format!("the message {} to {destination}", envelope.id),
                self.timeout,
                || Outgoing::Raw(frame.clone(), None),
            )
            .await
    }
}
