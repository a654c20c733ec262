//! Settling one delivery of a subscription:
//! - `Ack`: `basic.ack`, queued on the delivery's channel (see `AmqpSettle::ack`).
//! - `Retry`: a copy with `tidings-attempt + 1` is published straight to the same queue through
//!   the default exchange, confirmed, and only then the original is acked. A crash between the
//!   two leaves both (at-least-once), never neither. An expired message is acked, not retried.
//! - `Requeue`: the same, with the attempt unchanged. `basic.reject(requeue)` would set the
//!   broker's redelivered flag, which this driver counts as an attempt (see below).
//! - `DeadLetter`: the dead letter (`Envelope::into_dead_letter`) is published to the durable
//!   dead-letter queue, confirmed, then the original is acked.
//!
//! A delivery whose connection died before it was settled is redelivered by the broker with the
//! redelivered flag set; the driver counts that as one more attempt (the consumer may have died
//! of this very message), so a message that keeps crashing its consumers still reaches the
//! dead letters.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use lapin::options::BasicAckOptions;
use lapin::types::ShortString;
use lapin::{Acker, BasicProperties, Channel};
use tidings_core::driver::{Completion, Outcome, Settle};
use tidings_core::envelope::now_ms;
use tidings_core::{Error, ErrorKind, Result};
use tokio::time::Instant;

use crate::connection::{closed, Shared};
use crate::errors::transport;
use crate::publisher::{publish, Target};
use crate::topology::{declare_queue, QueueKind};
use crate::wire;

/// Where a subscription's dead letters go.
#[derive(Debug)]
pub(crate) struct DeadTarget {
    /// The full dead-letter queue name.
    pub(crate) queue: String,
    /// The subscription name recorded in the dead letter (group name or `broadcast`).
    pub(crate) from: String,
}

/// Settles one delivery of a subscription.
pub(crate) struct AmqpSettle {
    pub(crate) shared: Arc<Shared>,
    /// The channel it came on. Acks go straight to it: lapin's `Acker::ack` hands each ack
    /// to lapin's internal task, which spawns a task for it (docs/benchmarks-amqp091.md).
    pub(crate) channel: Arc<Channel>,
    pub(crate) delivery_tag: u64,
    /// Only to tell whether the delivery's channel died (lapin sets its poison then).
    pub(crate) acker: Acker,
    /// The queue it came from: where retried and requeued copies go.
    pub(crate) queue: Arc<str>,
    pub(crate) dead: Option<Arc<DeadTarget>>,
    /// The message as received, decoded again only when a copy must be published.
    pub(crate) properties: BasicProperties,
    pub(crate) routing_key: ShortString,
    pub(crate) redelivered: bool,
    pub(crate) body: Bytes,
}

impl AmqpSettle {
    /// Queues the `basic.ack` and returns: lapin writes it with the next frames. Waiting for
    /// the write would promise nothing more (an ack has no reply; one written but lost with
    /// its connection is the same redelivery as one never written) and would cost a thread
    /// wake-up per message. Acks leave in order, before a later `basic.cancel` or close.
    fn ack(&self) -> Result<()> {
        if self.acker.poisoned() {
            return Err(lost_before_settle());
        }
        let ack = pin!(self
            .channel
            .basic_ack(self.delivery_tag, BasicAckOptions::default()));
        // The first poll checks the channel and queues the frame; then only the write is left.
        match ack.poll(&mut Context::from_waker(&futures::task::noop_waker())) {
            Poll::Ready(Err(e)) => Err(transport(
                ErrorKind::Connection,
                format!("{}: {e}", lost_before_settle().message()),
                e,
            )),
            Poll::Ready(Ok(())) | Poll::Pending => Ok(()),
        }
    }

    fn envelope(&self) -> tidings_core::Envelope {
        wire::decode(
            &self.properties,
            self.routing_key.as_str(),
            self.redelivered,
            self.body.clone(),
        )
    }

    /// Publishes a copy of the message straight to this queue, with `headers` set, then acks
    /// the original.
    async fn copy_back(&self, attempt_step: u32, headers: BTreeMap<String, String>) -> Result<()> {
        let mut envelope = self.envelope();
        if envelope.is_expired_at(now_ms()) {
            tracing::debug!(id = %envelope.id, "expired while being handled; dropped");
            return self.ack();
        }
        envelope.attempt = envelope.attempt.saturating_add(attempt_step);
        envelope.headers.extend(headers);
        self.replace_with(&self.queue, &envelope).await
    }

    /// Publishes `copy` straight to `queue` and, once the broker confirmed it, acks the
    /// original: a crash in between leaves both, never neither.
    async fn replace_with(&self, queue: &str, copy: &tidings_core::Envelope) -> Result<()> {
        publish(&self.shared, &Target::queue(queue)?, copy, false, None).await?;
        self.ack()
    }

    /// Why this delivery cannot be settled any more, if it cannot.
    fn unsettleable(&self) -> Option<Error> {
        if self
            .shared
            .aborted
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Some(closed());
        }
        self.acker.poisoned().then(lost_before_settle)
    }

    /// Every outcome but an ack (which needs no future): each publishes a copy first.
    async fn settle_with_copy(self: Box<Self>, outcome: Outcome) -> Result<()> {
        if let Some(e) = self.unsettleable() {
            return Err(e);
        }
        match outcome {
            Outcome::Requeue => self.copy_back(0, BTreeMap::new()).await,
            Outcome::Retry => self.copy_back(1, BTreeMap::new()).await,
            Outcome::Decline { headers } => self.copy_back(0, headers).await,
            Outcome::DeadLetter { reason } => {
                let Some(dead) = self.dead.clone() else {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        "this subscription has no dead-letter queue",
                    ));
                };
                let letter = self.envelope().into_dead_letter(&reason, &dead.from);
                ensure_dead_queue(&self.shared, &dead.queue).await?;
                self.replace_with(&dead.queue, &letter).await
            }
            other => Err(other.unsupported()),
        }
    }
}

impl Settle for AmqpSettle {
    fn settle(self: Box<Self>, outcome: Outcome) -> Completion<'static, Result<()>> {
        match outcome {
            // `ready`, not `done`: a worker whose deliveries are all buffered still yields to
            // the runtime now and then.
            Outcome::Ack => Completion::ready(match self.unsettleable() {
                Some(e) => Err(e),
                None => self.ack(),
            }),
            other => Completion::later(self.settle_with_copy(other)),
        }
    }
}

fn lost_before_settle() -> Error {
    Error::new(
        ErrorKind::Connection,
        "the channel of this delivery closed before it was settled (connection lost or \
         subscription cancelled); the broker redelivers it",
    )
}

/// Declares the durable dead-letter queue `queue` once per connection.
async fn ensure_dead_queue(shared: &Arc<Shared>, queue: &str) -> Result<()> {
    let deadline = Instant::now() + shared.config.publish_timeout;
    let session = shared.session_after(0, deadline).await?;
    if session.mark_declared(queue) {
        return Ok(());
    }
    let result = async {
        let channel = session.connection.create_channel().await.map_err(|e| {
            transport(
                ErrorKind::Connection,
                format!("cannot open a channel: {e}"),
                e,
            )
        })?;
        let declared = declare_queue(
            &channel,
            queue,
            &QueueKind::DeadLetters,
            shared.config.queue_type,
        )
        .await;
        if channel.status().connected() {
            let _ = channel.close(200, "declared".into()).await;
        }
        declared.map(|_| ())
    }
    .await;
    if result.is_err() {
        session.forget_declared(queue);
    }
    result
}
