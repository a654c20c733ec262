//! Receiving: one receiver link per subscription, driven by its own task that feeds an mpsc
//! channel (so [`Consumer::next`] is cancel-safe) and re-attaches after every reconnect,
//! re-declaring its queues first. Link credit is the subscription's prefetch.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::{CreditMode, ReceiverAttachError, ReceiverDisposer, RecvError};
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::Receiver;
use futures::FutureExt;
use tidings_core::driver::{Completion, Consumer, Delivery, Outcome, Settle};
use tidings_core::{Envelope, Error, ErrorKind, Result};
use tidings_plumbing::Backoff;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::connection::Shared;
use crate::dialect::QueueSpec;
use crate::sender::SenderPool;
use crate::wire;

/// What a receiver link consumes and how its deliveries are settled.
#[derive(Debug)]
pub(crate) struct ReceiverSpec {
    /// Queues to declare before every attach (the consumed one and its dead-letter queue).
    pub(crate) declare: Vec<QueueSpec>,
    /// The source address.
    pub(crate) address: String,
    /// Link credit: how many unsettled deliveries the broker may send ahead.
    pub(crate) credit: u32,
    /// Where retries and requeues go (straight back into the consumed queue).
    pub(crate) queue_address: String,
    /// Whether copies sent back into the queue are durable.
    pub(crate) durable: bool,
    /// Where dead letters go.
    pub(crate) dead_letter_address: String,
    /// The subscription name a dead letter records.
    pub(crate) from: String,
    /// Whether a redelivery by the broker counts as a new attempt (not for dead letters, which
    /// are read back exactly as stored).
    pub(crate) count_redelivery: bool,
    /// Makes the spec anew for each connection after the first it attached on.
    pub(crate) renew: Option<Renew>,
}

/// Gives a receiver's spec for the connection of a generation: the RPC inbox is a queue of its
/// own on each connection, so that no reply waits on a queue the broker still places on a node
/// that is gone (RabbitMQ may take long to forget a dead node's queues, and meanwhile the same
/// name can be neither consumed nor declared again elsewhere).
#[derive(Clone)]
pub(crate) struct Renew(pub(crate) Arc<dyn Fn(u64) -> ReceiverSpec + Send + Sync>);

impl std::fmt::Debug for Renew {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Renew")
    }
}

/// A subscription's consumer: the receiving end of its link task.
#[derive(Debug)]
pub(crate) struct AmqpConsumer {
    rx: mpsc::UnboundedReceiver<Delivery>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl AmqpConsumer {
    /// Declares, attaches, and returns once the first attach succeeded (so messages published
    /// after `subscribe` returns reach it), or with the first error.
    pub(crate) async fn start(
        shared: Arc<Shared>,
        pool: Arc<SenderPool>,
        spec: ReceiverSpec,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready, attached) = oneshot::channel();
        let stop = shared.shutdown.child_token();
        let task = tokio::spawn(run(shared, pool, Arc::new(spec), tx, stop.clone(), ready));
        match attached.await {
            Ok(Ok(())) => Ok(Self {
                rx,
                stop,
                task: Some(task),
            }),
            Ok(Err(e)) => {
                stop.cancel();
                Err(e)
            }
            Err(_) => Err(Error::new(
                ErrorKind::Closed,
                "the AMQP 1.0 connection closed while subscribing",
            )),
        }
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    fn next(&mut self) -> Completion<'_, Option<Delivery>> {
        // A delivery already waiting is handed out without boxing a future.
        match self.rx.try_recv() {
            Ok(delivery) => Completion::ready(Some(delivery)),
            Err(mpsc::error::TryRecvError::Disconnected) => Completion::ready(None),
            Err(mpsc::error::TryRecvError::Empty) => {
                Completion::later(async move { self.rx.recv().await })
            }
        }
    }

    async fn cancel(mut self: Box<Self>) -> Result<()> {
        self.stop.cancel();
        // Deliveries received but never handed out go straight back, unchanged.
        self.rx.close();
        while let Some(delivery) = self.rx.recv().await {
            let _ = delivery.settle(Outcome::Requeue).await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        Ok(())
    }
}

impl Drop for AmqpConsumer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn run(
    shared: Arc<Shared>,
    pool: Arc<SenderPool>,
    mut spec: Arc<ReceiverSpec>,
    tx: mpsc::UnboundedSender<Delivery>,
    stop: CancellationToken,
    ready: oneshot::Sender<Result<()>>,
) {
    let mut ready = Some(ready);
    let mut after = 0u64;
    let mut backoff = Backoff::new();
    let link_name = format!("tidings-recv-{}", tidings_core::envelope::new_id());
    let renew = spec.renew.clone();
    // The connection the spec was made or attached for.
    let mut spec_for: Option<u64> = None;
    loop {
        let live = tokio::select! {
            _ = stop.cancelled() => return,
            live = shared.live_after(after) => match live { Some(l) => l, None => return },
        };
        if let (Some(renew), Some(made_for)) = (&renew, spec_for) {
            if made_for != live.generation {
                spec = Arc::new((renew.0)(live.generation));
            }
        }
        spec_for = Some(live.generation);
        let declared = declare_all(&shared, &spec).await;
        let attached = match declared {
            Ok(()) => match live.begin_session().await {
                Ok(mut session) => Receiver::builder()
                    .name(link_name.clone())
                    .source(spec.address.clone())
                    .credit_mode(CreditMode::Manual)
                    .auto_accept(false)
                    .attach(&mut session)
                    .await
                    .map(|receiver| (receiver, session))
                    .map_err(|e| (session_level(&e), e.to_string())),
                Err(e) => Err((true, e.to_string())),
            },
            Err(e) => Err((false, e.to_string())),
        };
        let (mut receiver, mut session) = match attached {
            Ok(r) => r,
            Err((session_lost, why)) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(Error::new(
                        ErrorKind::Subscribe,
                        format!(
                            "cannot consume {} on {}: {why}",
                            spec.address, shared.config.redacted
                        ),
                    )));
                    return;
                }
                tracing::warn!(address = %spec.address, %why, "re-attaching a receiver failed; retrying");
                if session_lost {
                    shared.report_broken(live.generation);
                    after = live.generation;
                } else {
                    // Same session, try again after a pause.
                    after = live.generation - 1;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
                continue;
            }
        };
        backoff = Backoff::new();
        after = live.generation;
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        }
        let link = Arc::new(LinkSettle {
            disposer: receiver.disposer(),
            spec: spec.clone(),
            pool: pool.clone(),
            credit: Credit::default(),
            acks: Mutex::new(Vec::new()),
            releases: Mutex::new(Vec::new()),
        });
        let mut batch = Vec::new();
        // Registered once per link, not once per message.
        let lost = live.lost().cancelled();
        let stopped = stop.cancelled();
        let gone = tx.closed();
        tokio::pin!(lost, stopped, gone);
        let mut close = false;
        loop {
            if receiver.credit() == 0 {
                // Pending accepts count as unsettled until sent.
                if !link.flush_acks(&receiver, &mut batch).await {
                    shared.report_broken(live.generation);
                    break;
                }
                let free = spec
                    .credit
                    .max(1)
                    .saturating_sub(link.credit.unsettled.load(Ordering::Acquire));
                if free == 0 {
                    // Every prefetched delivery is still unsettled: wait for one to settle.
                    let settled = link.credit.settled.notified();
                    tokio::select! {
                        _ = settled => continue,
                        _ = &mut lost => break,
                        _ = &mut stopped => { close = true; break }
                        _ = &mut gone => { close = true; break }
                    }
                }
                if receiver.set_credit(free).await.is_err() {
                    shared.report_broken(live.generation);
                    break;
                }
            }
            // Plain loads per message; the three futures are polled only while the link has
            // nothing to hand out (biased: a ready delivery never polls them).
            if live.lost().is_cancelled() {
                break;
            }
            if stop.is_cancelled() || tx.is_closed() {
                close = true;
                break;
            }
            let received = tokio::select! {
                biased;
                r = receiver.recv::<Body<Value>>() => r,
                // Nothing to receive right now: send the accepts gathered meanwhile.
                _ = link.credit.settled.notified() => {
                    if link.flush_acks(&receiver, &mut batch).await {
                        continue;
                    }
                    shared.report_broken(live.generation);
                    break;
                }
                _ = &mut lost => break,
                _ = &mut stopped => { close = true; break }
                _ = &mut gone => { close = true; break }
            };
            match received {
                Ok(delivery) => {
                    if let Err(returned) = tx.send(link.take(&shared, delivery)) {
                        // The consumer went away meanwhile: this one goes back with the rest.
                        let _ = returned.0.settle(Outcome::Requeue).await;
                        close = true;
                        break;
                    }
                }
                Err(RecvError::MessageDecode(e)) => {
                    tracing::warn!(address = %spec.address, error = %e, "a message could not be decoded as AMQP 1.0; skipped");
                }
                Err(e) => {
                    tracing::debug!(address = %spec.address, error = %e, "receiver link failed");
                    shared.report_broken(live.generation);
                    break;
                }
            }
        }
        if close {
            close_link(receiver, &link, &shared, &mut batch, live.lost()).await;
            // Whatever the broker sent that the link never saw goes back with the session.
            let _ = tokio::time::timeout(Duration::from_secs(2), session.end()).await;
            return;
        }
    }
}

/// How long a closing link waits for the deliveries it handed out to be settled.
const SETTLE_GRACE: Duration = Duration::from_secs(5);

/// Closes a link after giving back, unchanged, every delivery it holds: the ones handed out
/// and returned by [`Consumer::cancel`] (or dropped), and the ones already received but not
/// handed out. What is still on the wire goes back when the link's session ends.
async fn close_link(
    mut receiver: Receiver,
    link: &Arc<LinkSettle>,
    shared: &Shared,
    batch: &mut Vec<DeliveryInfo>,
    lost: &CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + SETTLE_GRACE;
    // Received, not yet handed out (fe2o3 buffers transfers): back into the queue.
    while let Some(Ok(delivery)) = receiver.recv::<Body<Value>>().now_or_never() {
        let _ = link.take(shared, delivery).settle(Outcome::Requeue).await;
    }
    loop {
        if !link.flush_acks(&receiver, batch).await || !link.flush_releases(&receiver).await {
            break;
        }
        let unsettled = link.credit.unsettled.load(Ordering::Acquire);
        if unsettled == 0 {
            break;
        }
        tokio::select! {
            _ = link.credit.settled.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(
                    address = %link.spec.address,
                    unsettled,
                    "closing a receiver link with deliveries its handlers have not settled"
                );
                break;
            }
            // The connection went: the broker gives everything back itself.
            _ = lost.cancelled() => return,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), receiver.close()).await;
}

async fn declare_all(shared: &Shared, spec: &ReceiverSpec) -> Result<()> {
    for queue in &spec.declare {
        shared.dialect.declare_queue(queue).await?;
    }
    Ok(())
}

fn session_level(e: &ReceiverAttachError) -> bool {
    matches!(
        e,
        ReceiverAttachError::SessionStopped(_)
            | ReceiverAttachError::SessionNotMapped
            | ReceiverAttachError::IllegalState
    )
}

/// Link credit bookkeeping of one attached link.
///
/// Credit is granted only once the previous grant is used up, as `prefetch - unsettled`.
/// Topping credit up while transfers are still in flight is correct AMQP 1.0, but RabbitMQ 3.x
/// applies a flow's link-credit as an absolute value without subtracting what it already sent,
/// so it would send more than the receiver allowed (fe2o3 then fails the link with
/// transfer-limit-exceeded). Granting only on exhausted credit is right for every broker.
#[derive(Debug, Default)]
struct Credit {
    unsettled: AtomicU32,
    settled: Notify,
}

/// What every delivery of one attached link needs to settle: shared, so a delivery carries
/// one reference instead of a copy of each.
struct LinkSettle {
    disposer: ReceiverDisposer,
    spec: Arc<ReceiverSpec>,
    pool: Arc<SenderPool>,
    credit: Credit,
    /// Plain accepts not sent yet: the link task sends them as range dispositions (one
    /// frame per run of consecutive delivery ids) whenever it has nothing to receive, before
    /// granting credit, and before closing the link.
    acks: Mutex<Vec<DeliveryInfo>>,
    /// Deliveries dropped without being settled, to release before the link closes.
    releases: Mutex<Vec<DeliveryInfo>>,
}

impl LinkSettle {
    /// Turns a received transfer into a delivery of this link (counted unsettled until it is).
    fn take(
        self: &Arc<Self>,
        shared: &Shared,
        delivery: fe2o3_amqp::link::delivery::Delivery<Body<Value>>,
    ) -> Delivery {
        self.credit.unsettled.fetch_add(1, Ordering::AcqRel);
        let (info, message) = delivery.into_parts();
        let redelivered =
            self.spec.count_redelivery && shared.dialect.was_redelivered(message.header.as_ref());
        // One envelope, shared by the handler and the settlement (which needs it only to send
        // a retry or dead-letter copy): no copy per message.
        let envelope = Arc::new(wire::decode(message, redelivered));
        let settle = AmqpSettle {
            link: self.clone(),
            info: Some(info),
            envelope: envelope.clone(),
        };
        Delivery::new(envelope, Box::new(settle))
    }

    /// One delivery is settled (or given up): its credit may be granted again.
    fn release_credit(&self) {
        self.credit.unsettled.fetch_sub(1, Ordering::AcqRel);
        self.credit.settled.notify_one();
    }

    /// A plain accept, queued for the link task (which counts it settled once sent).
    fn queue_accept(&self, info: DeliveryInfo) {
        self.acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(info);
        self.credit.settled.notify_one();
    }

    /// A delivery dropped unsettled, queued for the link task to release.
    fn queue_release(&self, info: DeliveryInfo) {
        self.releases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(info);
        self.credit.settled.notify_one();
    }

    /// Releases the deliveries dropped unsettled; `false` if the link failed.
    async fn flush_releases(&self, receiver: &Receiver) -> bool {
        let dropped = std::mem::take(&mut *self.releases.lock().unwrap_or_else(|e| e.into_inner()));
        if dropped.is_empty() {
            return true;
        }
        let count = dropped.len() as u32;
        let result = receiver.release_all(dropped).await;
        self.credit.unsettled.fetch_sub(count, Ordering::AcqRel);
        result.is_ok()
    }

    /// Sends the queued accepts; `false` if the link failed (the broker then redelivers).
    async fn flush_acks(&self, receiver: &Receiver, batch: &mut Vec<DeliveryInfo>) -> bool {
        std::mem::swap(
            &mut *self.acks.lock().unwrap_or_else(|e| e.into_inner()),
            batch,
        );
        if batch.is_empty() {
            return true;
        }
        let sent = batch.len() as u32;
        let result = receiver.accept_all(batch.drain(..)).await;
        self.credit.unsettled.fetch_sub(sent, Ordering::AcqRel);
        result.is_ok()
    }
}

/// Settles one delivery: accept, or send a copy back (requeue, retry, dead letter) and
/// accept. Dropped unsettled, it is released.
struct AmqpSettle {
    link: Arc<LinkSettle>,
    /// `None` once settled.
    info: Option<DeliveryInfo>,
    envelope: Arc<Envelope>,
}

impl Drop for AmqpSettle {
    fn drop(&mut self) {
        if let Some(info) = self.info.take() {
            self.link.queue_release(info);
        }
    }
}

impl AmqpSettle {
    fn info(&mut self) -> DeliveryInfo {
        self.info.take().expect("a delivery is settled once")
    }

    async fn accept(mut self) -> Result<()> {
        let info = self.info();
        let result = self.link.disposer.accept(info).await;
        self.link.release_credit();
        result.map_err(|e| {
            Error::new(
                ErrorKind::Connection,
                format!(
                    "could not settle a delivery from {} (the broker will redeliver it): {e}",
                    self.link.spec.address
                ),
            )
            .with_source(e)
        })
    }
}

impl Settle for AmqpSettle {
    fn settle(mut self: Box<Self>, outcome: Outcome) -> Completion<'static, Result<()>> {
        if outcome == Outcome::Ack {
            // The common case: queued for the link task, which sends it promptly, with the
            // other accepts settled meanwhile, in one disposition per range of delivery ids.
            let info = self.info();
            self.link.queue_accept(info);
            return Completion::ready(Ok(()));
        }
        Completion::later(async move {
            let spec = &self.link.spec;
            let (address, copy, durable) = match outcome {
                Outcome::Ack => return self.accept().await,
                Outcome::Requeue => (
                    &spec.queue_address,
                    Envelope::clone(&self.envelope),
                    spec.durable,
                ),
                Outcome::Retry => {
                    let mut copy = Envelope::clone(&self.envelope);
                    copy.attempt = copy.attempt.saturating_add(1);
                    (&spec.queue_address, copy, spec.durable)
                }
                Outcome::Decline { headers } => {
                    let mut copy = Envelope::clone(&self.envelope);
                    copy.headers.extend(headers);
                    (&spec.queue_address, copy, spec.durable)
                }
                Outcome::DeadLetter { reason } => (
                    &spec.dead_letter_address,
                    Envelope::clone(&self.envelope).into_dead_letter(&reason, &spec.from),
                    true,
                ),
                other => return Err(other.unsupported()),
            };
            // The copy first, confirmed; only then the original goes. A crash in between
            // duplicates the message, never loses it.
            if let Err(e) = self
                .link
                .pool
                .send(address, wire::encode(copy, durable))
                .await
            {
                let info = self.info();
                let _ = self.link.disposer.release(info).await;
                self.link.release_credit();
                return Err(e);
            }
            self.accept().await
        })
    }
}
