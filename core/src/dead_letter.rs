//! Reading dead letters back: why each failed, how often it was tried, where it was going — and
//! replaying or purging it.

use std::fmt;
use std::sync::Arc;

use crate::bus::Bus;
use crate::driver::{Consumer, Outcome, PublishOptions, Settle};
use crate::envelope::{headers, Envelope};
use crate::error::Result;
use crate::layer::Kind;
use crate::subscribe::check_name;

/// A reader of one dead-letter queue. Made by [`Bus::dead_letters`].
pub struct DeadLetters {
    bus: Bus,
    consumer: Box<dyn Consumer>,
}

impl fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters").finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// The next dead letter, waiting for one to arrive; `None` when the bus closes. Cancel-safe:
    /// wrap it in `tokio::time::timeout` to read only what is there.
    pub async fn next(&mut self) -> Option<DeadLetter> {
        let delivery = self.consumer.next().await?;
        let (envelope, settle) = delivery.into_parts();
        Some(DeadLetter {
            bus: self.bus.clone(),
            envelope,
            settle,
        })
    }

    /// Stops reading; dead letters not yet settled stay in the queue.
    pub async fn close(self) -> Result<()> {
        self.consumer.cancel().await
    }
}

/// One dead letter. Settle it with [`purge`](Self::purge), [`replay`](Self::replay) or
/// [`keep`](Self::keep); dropping it unsettled leaves it in the queue once the reader closes.
pub struct DeadLetter {
    bus: Bus,
    envelope: Arc<Envelope>,
    settle: Box<dyn Settle>,
}

impl fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("reason", &self.reason())
            .field("attempts", &self.attempts())
            .field("routing_key", &self.routing_key())
            .finish_non_exhaustive()
    }
}

impl DeadLetter {
    /// Why it was dead-lettered.
    pub fn reason(&self) -> &str {
        self.envelope
            .headers
            .get(headers::DEAD_REASON)
            .map_or("", String::as_str)
    }

    /// How many delivery attempts were made.
    pub fn attempts(&self) -> u32 {
        self.envelope.attempt
    }

    /// The routing key it was originally published under.
    pub fn routing_key(&self) -> &str {
        &self.envelope.routing_key
    }

    /// When it was dead-lettered, in milliseconds since the Unix epoch.
    pub fn dead_at_ms(&self) -> Option<u64> {
        self.envelope.headers.get(headers::DEAD_AT)?.parse().ok()
    }

    /// The subscription it failed in (group name or `broadcast`).
    pub fn from_subscription(&self) -> &str {
        self.envelope
            .headers
            .get(headers::DEAD_FROM)
            .map_or("", String::as_str)
    }

    /// The message as it was dead-lettered.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Removes it for good.
    pub async fn purge(self) -> Result<()> {
        self.settle.settle(Outcome::Ack).await
    }

    /// Leaves it in the dead-letter queue.
    pub async fn keep(self) -> Result<()> {
        self.settle.settle(Outcome::Requeue).await
    }

    /// Publishes it again under its original routing key as a fresh first attempt, then removes
    /// it from the dead letters. Same id, headers and payload.
    pub async fn replay(self) -> Result<()> {
        let mut envelope = Arc::unwrap_or_clone(self.envelope);
        envelope.headers.retain(|k, _| {
            k != headers::DEAD_REASON && k != headers::DEAD_AT && k != headers::DEAD_FROM
        });
        envelope.attempt = 1;
        envelope.timestamp_ms = crate::envelope::now_ms();
        self.bus
            .send(envelope, Kind::Replay, &PublishOptions::DEFAULT, None)
            .await?;
        self.settle.settle(Outcome::Ack).await
    }
}

impl Bus {
    /// Reads the dead-letter queue `name`: a group name, or `broadcast` for broadcast
    /// subscriptions (unless they chose another with `dead_letter_queue`).
    pub async fn dead_letters(&self, name: &str) -> Result<DeadLetters> {
        check_name("dead-letter queue", name)?;
        let consumer = self.shared.provider.dead_letters(name).await?;
        Ok(DeadLetters {
            bus: self.clone(),
            consumer,
        })
    }
}
