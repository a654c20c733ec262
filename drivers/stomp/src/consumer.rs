//! Consumers and the settling of their deliveries.
//!
//! A subscription's MESSAGE frames arrive on an unbounded channel fed by the link (the broker's
//! prefetch bounds it); [`StompConsumer::next`] decodes them, so it is cancel-safe. Messages
//! the broker matched more widely than the tidings pattern (see the dialects), and expired
//! ones, are acked and skipped here.
//!
//! An ACK is written by the task that settles (no hop to the connection task), and those of one
//! batch of deliveries — the ones already waiting when the consumer asks for the next — go out
//! in one write: they are held back until the consumer next asks and finds nothing waiting, the
//! batch reaches 64 deliveries or 1 ms, or the consumer is cancelled (at the latest, 1 s later,
//! by the connection's own check). Each delivery is still acked individually
//! (`client-individual`).
//!
//! Settling (see `docs/brokers/`): `Ack` is an ACK; `Requeue` and `Retry` give the message
//! back as the dialect says — NACK, a confirmed copy sent straight to the queue followed by the
//! ACK of the original, or, for a private queue, the ACK and a local redelivery; `DeadLetter`
//! sends the dead letter to the durable dead-letter queue, confirmed, then ACKs.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidings_core::driver::{Completion, Consumer, Delivery, Outcome, Settle};
use tidings_core::envelope::now_ms;
use tidings_core::{async_trait, Envelope, Pattern, Result};
use tokio::sync::mpsc;

use crate::dialect::GiveBack;
use crate::frame::{self, Outgoing};
use crate::link::Incoming;
use crate::outbox::Outbox;
use crate::wire;

/// What a delivery of one subscription needs to be settled.
#[derive(Debug)]
pub(crate) struct SubContext {
    pub(crate) id: String,
    pub(crate) outbox: Arc<Outbox>,
    /// Filter with this pattern (the broker's is wider).
    pub(crate) filter: Option<Pattern>,
    pub(crate) retry: GiveBack,
    pub(crate) requeue: GiveBack,
    /// The destination of this subscription's dead-letter queue.
    pub(crate) dead_letters: String,
    /// The subscription name dead letters record.
    pub(crate) from: String,
    /// Local redeliveries (`GiveBack::Local`) go here, ahead of the wire.
    pub(crate) local: mpsc::UnboundedSender<Envelope>,
    /// Ack ids handed out and not settled, to give back on cancel (RabbitMQ only).
    pub(crate) outstanding: Option<Mutex<HashSet<(u64, String)>>>,
    pub(crate) cancelled: AtomicBool,
    /// ACKs are held back (queued, not written) until the consumer's batch ends; see
    /// [`StompConsumer::next`].
    pub(crate) held: AtomicBool,
}

impl SubContext {
    fn ack(&self, generation: u64, id: String) {
        if self.untrack(generation, &id) {
            self.outbox.link.settle_on(
                generation,
                Outgoing::Raw(frame::settle("ACK", &id), None),
                &self.held,
            );
        }
    }

    /// Whether the delivery may still be settled by this consumer.
    fn untrack(&self, generation: u64, id: &str) -> bool {
        if self.cancelled.load(Ordering::Acquire) {
            // Given back on cancel already (or by the broker).
            return false;
        }
        if let Some(set) = &self.outstanding {
            set.lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(generation, id.to_owned()));
        }
        true
    }
}

/// One subscription.
pub(crate) struct StompConsumer {
    pub(crate) ctx: Arc<SubContext>,
    pub(crate) wire: mpsc::UnboundedReceiver<Incoming>,
    pub(crate) local: mpsc::UnboundedReceiver<Envelope>,
    /// Whether MESSAGE frames must be acked (false for `auto` subscriptions: inboxes).
    pub(crate) acks: bool,
    pub(crate) done: bool,
    /// Deliveries handed out since ACKs are held back, and when that began.
    pub(crate) batch: Batch,
}

/// The ACKs a consumer holds back: those of one batch of deliveries, so that a single write
/// sends them all instead of one write (or one wake-up of another task) each.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    size: usize,
    since: Option<Instant>,
}

/// A batch is written after this many deliveries...
const BATCH_SIZE: usize = 64;
/// ... or this long, whichever comes first (when handlers are slow, an ACK does not wait for
/// the next ones).
const BATCH_TIME: Duration = Duration::from_millis(1);

impl std::fmt::Debug for StompConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StompConsumer")
            .field("id", &self.ctx.id)
            .finish_non_exhaustive()
    }
}

impl StompConsumer {
    /// A delivery is handed out: its ACK joins the batch. The batch is written when the
    /// consumer next finds nothing waiting (before it waits), when it is full or old, and on
    /// cancel; at the latest by the connection's periodic check (see `Link::settle_on`).
    fn batch(&mut self) {
        if !self.acks {
            return;
        }
        let now = Instant::now();
        if self.batch.size >= BATCH_SIZE
            || self
                .batch
                .since
                .is_some_and(|t| now.duration_since(t) >= BATCH_TIME)
        {
            self.end_batch();
        }
        if self.batch.size == 0 {
            self.ctx.held.store(true, Ordering::Release);
            self.batch.since = Some(now);
        }
        self.batch.size += 1;
    }

    /// Writes the ACKs held back.
    fn end_batch(&mut self) {
        if self.batch.size > 0 {
            self.batch = Batch::default();
            self.ctx.outbox.link.release(&self.ctx.held);
        }
    }

    fn delivery(&self, envelope: Envelope, ack: Option<(u64, String)>) -> Delivery {
        // Shared with the delivery, not cloned: only Retry and DeadLetter need a copy.
        let envelope = Arc::new(envelope);
        Delivery::new(
            envelope.clone(),
            Box::new(StompSettle {
                ctx: self.ctx.clone(),
                ack,
                envelope: Some(envelope),
            }),
        )
    }

    /// The delivery of a MESSAGE, or `None` (acked here) when the consumer does not want it.
    fn accept(&mut self, incoming: Incoming) -> Option<Delivery> {
        let envelope = wire::decode(&incoming.message, &self.ctx.outbox.topics);
        let ack = if self.acks {
            incoming.ack.map(|id| (incoming.generation, id))
        } else {
            None
        };
        let unwanted = self
            .ctx
            .filter
            .as_ref()
            .is_some_and(|p| !p.matches(&envelope.routing_key))
            || (envelope.ttl.is_some() && envelope.is_expired_at(now_ms()));
        if unwanted {
            if let Some((generation, id)) = ack {
                self.ctx.ack(generation, id);
            }
            return None;
        }
        if let (Some(set), Some(key)) = (&self.ctx.outstanding, &ack) {
            set.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone());
        }
        Some(self.delivery(envelope, ack))
    }

    fn stop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.end_batch();
        let ctx = &self.ctx;
        ctx.outbox.link.unsubscribe(&ctx.id);
        ctx.cancelled.store(true, Ordering::Release);
        // RabbitMQ keeps unacked messages of a cancelled subscription until the connection
        // closes: give them back now, both the handed-out ones and those not yet read.
        if let Some(set) = &ctx.outstanding {
            let mut pending: Vec<(u64, String)> = set
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
                .collect();
            self.wire.close();
            while let Ok(incoming) = self.wire.try_recv() {
                if let Some(id) = incoming.ack {
                    pending.push((incoming.generation, id));
                }
            }
            // The batch ended above, so nothing holds these back.
            for (generation, id) in pending {
                ctx.outbox.link.settle_on(
                    generation,
                    Outgoing::Raw(frame::settle("NACK", &id), None),
                    &ctx.held,
                );
            }
        }
    }
}

#[async_trait]
impl Consumer for StompConsumer {
    fn next(&mut self) -> Completion<'_, Option<Delivery>> {
        // Deliveries already received are handed out without a future (the broker's prefetch
        // usually has some waiting); a completion holds its delivery, so none is lost.
        loop {
            if let Ok(envelope) = self.local.try_recv() {
                // A local redelivery (a retry) has no ACK to join the batch: write what is held.
                self.end_batch();
                return Completion::ready(Some(self.delivery(envelope, None)));
            }
            match self.wire.try_recv() {
                Ok(incoming) => {
                    if let Some(delivery) = self.accept(incoming) {
                        self.batch();
                        return Completion::ready(Some(delivery));
                    }
                }
                Err(_) => break,
            }
        }
        // Nothing waiting: the batch ends here.
        self.end_batch();
        Completion::later(async move {
            loop {
                let incoming = tokio::select! {
                    biased;
                    Some(envelope) = self.local.recv() => {
                        return Some(self.delivery(envelope, None));
                    }
                    incoming = self.wire.recv() => incoming?,
                };
                if let Some(delivery) = self.accept(incoming) {
                    self.batch();
                    return Some(delivery);
                }
            }
        })
    }

    async fn cancel(mut self: Box<Self>) -> Result<()> {
        self.stop();
        Ok(())
    }
}

impl Drop for StompConsumer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Settles one delivery.
struct StompSettle {
    ctx: Arc<SubContext>,
    /// The connection generation and ack id; `None` for local redeliveries and `auto` mode.
    ack: Option<(u64, String)>,
    envelope: Option<Arc<Envelope>>,
}

impl StompSettle {
    fn ack(&mut self) {
        if let Some((generation, id)) = self.ack.take() {
            self.ctx.ack(generation, id);
        }
    }

    async fn give_back(mut self, how: &GiveBack, envelope: Envelope) -> Result<()> {
        match how {
            GiveBack::Republish(destination) => {
                self.ctx.outbox.send(destination, &envelope, true).await?;
                self.ack();
            }
            GiveBack::Local => {
                self.ack();
                if !self.ctx.cancelled.load(Ordering::Acquire) {
                    let _ = self.ctx.local.send(envelope);
                }
            }
        }
        Ok(())
    }
}

impl StompSettle {
    /// Everything but an ack: the message goes somewhere first, then the original is acked.
    async fn give_up(mut self: Box<Self>, outcome: Outcome) -> Result<()> {
        let ctx = self.ctx.clone();
        let Some(envelope) = self.envelope.take() else {
            return Ok(());
        };
        let envelope = Arc::unwrap_or_clone(envelope);
        match outcome {
            Outcome::Ack => {
                self.ack();
                Ok(())
            }
            Outcome::Requeue => self.give_back(&ctx.requeue, envelope).await,
            Outcome::Decline { headers } => {
                let mut envelope = envelope;
                envelope.headers.extend(headers);
                self.give_back(&ctx.requeue, envelope).await
            }
            Outcome::Retry => {
                let mut envelope = envelope;
                envelope.attempt = envelope.attempt.saturating_add(1);
                self.give_back(&ctx.retry, envelope).await
            }
            Outcome::DeadLetter { reason } => {
                let dead = envelope.into_dead_letter(&reason, &ctx.from);
                ctx.outbox.send(&ctx.dead_letters, &dead, true).await?;
                self.ack();
                Ok(())
            }
            other => Err(other.unsupported()),
        }
    }
}

impl Settle for StompSettle {
    fn settle(mut self: Box<Self>, outcome: Outcome) -> Completion<'static, Result<()>> {
        if outcome == Outcome::Ack {
            // An ack is queued on the connection, not waited for.
            self.ack();
            return Completion::done(Ok(()));
        }
        Completion::later(self.give_up(outcome))
    }
}
