//! A subscription's worker: takes deliveries from its consumer (pausing while the
//! `active_when` guard is false), runs each through the receive path, and settles it.
//!
//! # When a delivery is settled
//! - The handler returns `Ok` → acked.
//! - The handler returns `Err` or panics → retried (redelivered with `attempt + 1`) until
//!   `max_attempts` is reached, then dead-lettered with the error text as reason.
//! - The payload cannot be decoded, or carries another event type → dead-lettered at once,
//!   never retried (it would fail the same way forever).
//! - The emitter does not match the `from` filter → acked without calling the handler.
//! - A layer stops it → dead-lettered with the layer's reason.
//! - An RPC server declines it ([`Decline`](crate::rpc::Decline)) → given back to the group
//!   with who declined it added (same attempt).
//! - The active-when guard is false → given back to the broker (requeued, same attempt) and the
//!   subscription pauses until the guard is true again.
//! - The process dies before settling → the broker redelivers it to another consumer.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::handler::{panic_text, Done, Failure, Handler};
use super::settings::Settings;
use crate::bus::Bus;
use crate::driver::{Consumer, Delivery, Outcome, SubscribeSpec};
use crate::envelope::Envelope;
use crate::layer::{Handled, Incoming, Kind};
use crate::receive::receive;
use crate::routing::Pattern;

pub(super) struct Worker<H> {
    pub(super) bus: Bus,
    pub(super) spec: SubscribeSpec,
    pub(super) handler: H,
    pub(super) from: Option<Pattern>,
    pub(super) settings: Settings,
    pub(super) stop: CancellationToken,
    /// What layers are told about each delivery.
    pub(super) kind: Kind,
    pub(super) subscription: Arc<str>,
    pub(super) group: Option<Arc<str>>,
}

impl<H: Handler> Worker<H> {
    fn is_active(&self) -> bool {
        self.settings
            .active_when
            .as_ref()
            .is_none_or(|guard| guard())
    }

    pub(super) async fn run(self, mut consumer: Option<Box<dyn Consumer>>) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.settings.concurrency));
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut current = match consumer.take() {
                Some(c) => c,
                None => {
                    // Paused by the guard, or re-opening after a pause.
                    if !this.wait_until_active().await {
                        break;
                    }
                    match this.bus.shared.provider.subscribe(this.spec.clone()).await {
                        Ok(c) => {
                            backoff = Duration::from_millis(50);
                            c
                        }
                        Err(e) => {
                            tracing::warn!(pattern = %this.spec.pattern, error = %e, "re-subscribe failed; retrying");
                            tokio::select! {
                                _ = this.stop.cancelled() => break,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    }
                }
            };
            let paused = this.consume(&mut current, &permits).await;
            // Wait for in-flight handlers so their settlements reach the broker before cancel.
            // (Holding every permit means none is in use; dropping them frees them again.)
            drop(permits.acquire_many(this.settings.concurrency as u32).await);
            if let Err(e) = current.cancel().await {
                tracing::debug!(error = %e, "cancel failed");
            }
            if !paused {
                break;
            }
        }
    }

    /// Consumes until stopped (returns false) or paused by the guard (returns true).
    async fn consume(
        self: &Arc<Self>,
        consumer: &mut Box<dyn Consumer>,
        permits: &Arc<Semaphore>,
    ) -> bool {
        // Registered once, not once per message.
        let stop = self.stop.cancelled();
        tokio::pin!(stop);
        let sequential = self.settings.concurrency == 1;
        loop {
            // At concurrency 1 the handler runs inline, so no permit is needed.
            let permit = if sequential {
                None
            } else {
                tokio::select! {
                    biased;
                    _ = &mut stop => return false,
                    p = permits.clone().acquire_owned() => Some(p.expect("semaphore never closed")),
                }
            };
            // Stopping is checked with a plain load per message; the cancellation future is
            // polled only while waiting, which keeps it off the per-message path.
            if self.stop.is_cancelled() {
                return false;
            }
            let delivery = tokio::select! {
                biased;
                d = consumer.next() => match d {
                    Some(d) => d,
                    None => return false,
                },
                _ = &mut stop => return false,
            };
            if !self.is_active() {
                let _ = delivery.settle(Outcome::Requeue).await;
                return true;
            }
            match permit {
                None => self.process(delivery).await,
                Some(permit) => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.process(delivery).await;
                        drop(permit);
                    });
                }
            }
        }
    }

    /// Waits until the guard allows work; false if stopped meanwhile.
    async fn wait_until_active(&self) -> bool {
        while !self.is_active() {
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        !self.stop.is_cancelled()
    }

    /// Runs one delivery through the receive path (the layers, then [`steps`](Self::steps)),
    /// and settles it as the path decided.
    async fn process(&self, delivery: Delivery) {
        let (envelope, settle) = delivery.into_parts();
        let layers = &self.bus.layers;
        let handled = if layers.is_empty() {
            // No layer to tell: the steps alone, without building what layers see.
            self.steps(envelope, false).await
        } else {
            let incoming = Incoming::new(
                envelope,
                self.kind,
                self.bus.shared.provider.system(),
                self.subscription.clone(),
                self.group.clone(),
            );
            // The handler's run time is measured only for layers to see.
            receive(layers, incoming, |message| {
                self.steps(message.envelope, true)
            })
            .await
        };
        if handled.outcome == Outcome::Retry && !self.settings.retry_delay.is_zero() {
            tokio::time::sleep(self.settings.retry_delay).await;
        }
        if let Err(e) = settle.settle(handled.outcome).await {
            tracing::warn!(error = %e, "could not settle a delivery; the broker will redeliver it");
        }
    }

    /// The receive path's own steps, inside every layer: the emitter filter, the handler (its
    /// panics caught), then the retry / dead-letter policy.
    async fn steps(&self, envelope: Arc<Envelope>, timed: bool) -> Handled {
        if !self.emitter_passes(&envelope) {
            return Handled::settled(Outcome::Ack);
        }
        let attempt = envelope.attempt;
        let started = timed.then(Instant::now);
        let result = match AssertUnwindSafe(self.handler.call(envelope))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(panic) => Err(Failure::Handler(format!(
                "handler panicked: {}",
                panic_text(&panic)
            ))),
        };
        let mut handled = self.policy(attempt, result);
        handled.handler_time = started.map(|at| at.elapsed());
        handled
    }

    /// The emitter filter (`from`): messages from other emitters are acked unseen.
    fn emitter_passes(&self, envelope: &Envelope) -> bool {
        self.from
            .as_ref()
            .is_none_or(|from| from.matches(&envelope.emitter))
    }

    /// The retry / dead-letter policy: how a handler's result settles the delivery.
    #[inline]
    fn policy(&self, attempt: u32, result: Result<Done, Failure>) -> Handled {
        let max_attempts = self.settings.max_attempts;
        let (outcome, error, replied) = match result {
            Ok(done) => (Outcome::Ack, done.error, done.replied),
            Err(Failure::Poison(reason)) => (
                Outcome::DeadLetter {
                    reason: reason.clone(),
                },
                Some(reason),
                false,
            ),
            // Not a failure: another member of the group gets it, with the same attempt.
            Err(Failure::Decline(headers)) => (Outcome::Decline { headers }, None, false),
            Err(Failure::Handler(error)) if attempt < max_attempts => {
                tracing::debug!(attempt, %error, "handler failed; retrying");
                (Outcome::Retry, Some(error), false)
            }
            Err(Failure::Handler(error)) => {
                let reason =
                    format!("handler failed on attempt {attempt} of {max_attempts}: {error}");
                tracing::warn!(pattern = %self.spec.pattern, %reason, "dead-lettering");
                (Outcome::DeadLetter { reason }, Some(error), false)
            }
        };
        let mut handled = Handled::settled(outcome);
        handled.error = error;
        handled.replied = replied;
        handled
    }
}
