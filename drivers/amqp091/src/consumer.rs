//! Subscriptions: a channel per subscription with `basic.qos` prefetch and manual acks, and a
//! task that follows the connection across reconnects. How each delivery is settled: `settle`.
//!
//! Deliveries buffered but never handed out when the connection dies are dropped from the
//! buffer, since the broker redelivers them anyway.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::Channel;
use tidings_core::driver::{Completion, Consumer, Delivery, Outcome};
use tidings_core::{async_trait, ErrorKind, Result};
use tidings_plumbing::{Backoff, QueueType};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connection::{Live, Shared};
use crate::errors::transport;
use crate::session::Session;
use crate::settle::{AmqpSettle, DeadTarget};
use crate::topology::{bind, declare_queue, short, QueueKind};
use crate::wire;

/// How long a subscription to a quorum queue waits between declaring and consuming.
const QUORUM_SETTLE: Duration = Duration::from_millis(250);

/// How long `cancel` waits for the broker before it gives up politely.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// What to consume and how.
#[derive(Debug)]
pub(crate) struct SubSpec {
    pub(crate) kind: QueueKind,
    /// The queue name, or empty for a server-named broadcast queue.
    pub(crate) queue: String,
    /// The binding pattern, if the queue is bound to the exchange.
    pub(crate) pattern: Option<String>,
    pub(crate) prefetch: u16,
    pub(crate) dead: Option<Arc<DeadTarget>>,
}

/// A consuming channel on one session.
struct Started {
    /// Tells this consumer from the ones before and after it.
    id: u64,
    /// Shared with every delivery's settle handle, which acks through it.
    channel: Arc<Channel>,
    queue: Arc<str>,
    consumer: lapin::Consumer,
}

/// What `cancel` and the follower share.
struct State {
    spec: SubSpec,
    cancelled: CancellationToken,
    /// The channel and tag of the consumer in use, for `basic.cancel`.
    current: Mutex<Option<(Channel, ShortString)>>,
    /// The id of the last consumer `next()` saw end; wakes the follower.
    ended: watch::Sender<u64>,
}

impl State {
    /// Stops following reconnects and hands back the consumer in use, if any, to cancel or
    /// close.
    fn stop(&self) -> Option<(Channel, ShortString)> {
        self.cancelled.cancel();
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Opens a subscription: declares, binds and consumes on the current connection (reporting a
/// refused declaration to the caller), then follows the connection across reconnects.
pub(crate) async fn open(shared: &Arc<Shared>, spec: SubSpec) -> Result<Box<dyn Consumer>> {
    let deadline = Instant::now() + shared.config.publish_timeout;
    let mut after = 0;
    let mut backoff = Backoff::new();
    let (session, (channel, tag, started)) = loop {
        let session = shared.session_after(after, deadline).await?;
        match start(shared, &session, &spec, 1).await {
            Ok(started) => break (session, started),
            // The connection died under the subscription: its node was lost, or the broker
            // failed the consume with a connection error (RabbitMQ 3.x does so for a quorum
            // queue whose replica on this node is not running yet, just after it was made).
            // Subscribe again on the next connection, until the deadline.
            Err(e) if !session.is_connected() && Instant::now() < deadline => {
                tracing::debug!(error = %e, "the connection was lost while subscribing; again on the next one");
                shared.report_lost();
                after = session.generation;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Arc::new(State {
        spec,
        cancelled: CancellationToken::new(),
        current: Mutex::new(Some((channel, tag))),
        ended: watch::Sender::new(0),
    });
    let task = tokio::spawn(follow(shared.clone(), state.clone(), tx, session));
    Ok(Box::new(AmqpConsumer {
        starts: rx,
        current: Some(started),
        state,
        shared: shared.clone(),
        task: Some(task),
    }))
}

/// Declares the queue, binds it and starts consuming on a fresh channel of `session`.
async fn start(
    shared: &Arc<Shared>,
    session: &Session,
    spec: &SubSpec,
    id: u64,
) -> Result<(Channel, ShortString, Started)> {
    let channel = session.connection.create_channel().await.map_err(|e| {
        transport(
            ErrorKind::Subscribe,
            format!("cannot open a channel to subscribe: {e}"),
            e,
        )
    })?;
    let result = async {
        channel
            .basic_qos(spec.prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(|e| {
                transport(
                    ErrorKind::Subscribe,
                    format!("cannot set the prefetch: {e}"),
                    e,
                )
            })?;
        let queue =
            declare_queue(&channel, &spec.queue, &spec.kind, shared.config.queue_type).await?;
        if let Some(pattern) = &spec.pattern {
            bind(&channel, &queue, &shared.config.exchange, pattern).await?;
        }
        if spec.kind.lasting() && shared.config.queue_type == QueueType::Quorum {
            // RabbitMQ 3.x fails a consume on a quorum queue whose replicas are still starting
            // (just made, here or by another connection) with a connection error; give them a
            // moment. Should it still happen, `open` and `follow` subscribe again.
            tokio::time::sleep(QUORUM_SETTLE).await;
        }
        let tag = short(
            "consumer tag",
            &format!("tidings-{}", tidings_core::envelope::new_id()),
        )?;
        let consumer = channel
            .basic_consume(
                short("queue name", &queue)?,
                tag.clone(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                transport(
                    ErrorKind::Subscribe,
                    format!("cannot consume from queue {queue}: {e}"),
                    e,
                )
            })?;
        Ok((queue, tag, consumer))
    }
    .await;
    match result {
        Ok((queue, tag, consumer)) => Ok((
            channel.clone(),
            tag,
            Started {
                id,
                channel: Arc::new(channel),
                queue: queue.into(),
                consumer,
            },
        )),
        Err(e) => {
            close_channel(&channel, "subscribe failed").await;
            Err(e)
        }
    }
}

async fn close_channel(channel: &Channel, why: &str) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(STOP_WAIT, channel.close(200, why.into())).await;
    }
}

/// Keeps a subscription consuming: waits until its consumer ends (seen by `next()`) or its
/// connection is replaced, then declares, binds and consumes again and hands the new consumer
/// to `next()`. Ends (which ends `next()`) when cancelled or when the provider closes.
async fn follow(
    shared: Arc<Shared>,
    state: Arc<State>,
    tx: mpsc::UnboundedSender<Started>,
    first: Arc<Live>,
) {
    let mut session = first;
    let mut id = 1;
    let mut ended = state.ended.subscribe();
    let mut backoff = Backoff::new();
    let forever = Instant::now() + Duration::from_secs(86_400 * 365);
    loop {
        // Wait for the running consumer (number `id` on `session`) to end.
        let generation = session.generation;
        tokio::select! {
            _ = state.cancelled.cancelled() => break,
            _ = shared.closing.cancelled() => break,
            _ = ended.wait_for(|e| *e >= id) => {}
            newer = shared.session_after(generation, forever) => if newer.is_err() { break },
        }
        if state.cancelled.is_cancelled() || shared.closing.is_cancelled() {
            break;
        }
        let old = state
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut after = if session.is_connected() {
            // The broker ended the consumer (its queue was deleted, its channel closed).
            tracing::warn!("the broker ended a subscription; subscribing again");
            if let Some((channel, _)) = &old {
                close_channel(channel, "resubscribing").await;
            }
            generation - 1
        } else {
            shared.report_lost();
            generation
        };
        // Start again, on the next live connection.
        loop {
            let next = tokio::select! {
                _ = state.cancelled.cancelled() => return,
                s = shared.session_after(after, forever) => match s {
                    Ok(s) => s,
                    Err(_) => return,
                },
            };
            id += 1;
            match start(&shared, &next, &state.spec, id).await {
                Ok((channel, tag, started)) => {
                    tracing::info!(queue = %started.queue, "subscription resumed");
                    *state.current.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((channel.clone(), tag));
                    if state.cancelled.is_cancelled() || tx.send(started).is_err() {
                        // Cancelled or dropped meanwhile: the consumer just made must go too.
                        close_channel(&channel, "cancelled").await;
                        return;
                    }
                    session = next;
                    backoff = Backoff::new();
                    break;
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot resume a subscription");
                    after = if next.is_connected() {
                        next.generation - 1
                    } else {
                        next.generation
                    };
                    tokio::select! {
                        _ = state.cancelled.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

/// What woke `next()`. Lives on the stack for one step: boxing the delivery would allocate
/// on the hot path for nothing.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// The follower made a new consumer (or ended: `None`).
    Fresh(Option<Started>),
    /// The current consumer yielded (or ended: `None`).
    Item(Option<lapin::Result<lapin::message::Delivery>>),
}

/// The `Consumer` handed to the bus. It reads the lapin consumer itself (no task in between,
/// which keeps RPC latency low); the follower task only replaces that consumer after a
/// reconnect.
struct AmqpConsumer {
    starts: mpsc::UnboundedReceiver<Started>,
    current: Option<Started>,
    state: Arc<State>,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl AmqpConsumer {
    /// Wraps a lapin delivery for the bus.
    fn delivery(&self, from: &Started, delivery: lapin::message::Delivery) -> Delivery {
        let lapin::message::Delivery {
            delivery_tag,
            routing_key,
            redelivered,
            properties,
            data,
            acker,
            ..
        } = delivery;
        let body = Bytes::from(data);
        let envelope = wire::decode(&properties, routing_key.as_str(), redelivered, body.clone());
        let settle = AmqpSettle {
            shared: self.shared.clone(),
            channel: from.channel.clone(),
            delivery_tag,
            acker,
            queue: from.queue.clone(),
            dead: self.state.spec.dead.clone(),
            properties,
            routing_key,
            redelivered,
            body,
        };
        Delivery::new(envelope, Box::new(settle))
    }

    /// What an item of the current consumer means: a delivery to hand out, or `None` when it
    /// is to be skipped or the consumer ended (then `current` is cleared).
    fn take(&mut self, item: Option<lapin::Result<lapin::message::Delivery>>) -> Option<Delivery> {
        let current = self.current.as_ref()?;
        match item {
            Some(Ok(delivery)) => {
                // From a channel that already died: the broker redelivers it; handling it
                // now would only make a duplicate whose settlement fails.
                if delivery.acker.poisoned() {
                    return None;
                }
                return Some(self.delivery(current, delivery));
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, queue = %current.queue, "consumer ended");
            }
            None => {}
        }
        let id = current.id;
        self.current = None;
        self.state.ended.send_replace(id);
        None
    }

    /// A delivery the current consumer already holds, taken without waiting (and without
    /// the boxed future of `next`): none when a fresh consumer is waiting, which `next` takes
    /// first.
    fn buffered(&mut self) -> Option<Delivery> {
        if !self.starts.is_empty() {
            return None;
        }
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        loop {
            let current = self.current.as_mut()?;
            let item = match current.consumer.poll_next_unpin(&mut cx) {
                Poll::Ready(item) => item,
                Poll::Pending => return None,
            };
            if let Some(delivery) = self.take(item) {
                return Some(delivery);
            }
        }
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    fn next(&mut self) -> Completion<'_, Option<Delivery>> {
        if let Some(delivery) = self.buffered() {
            // `done`, not `ready`: a ready completion can be pending on tokio's budget, and
            // the worker's select could then drop it, and the delivery in it, when it stops
            // (the broker would redeliver it as a new attempt instead of its being given
            // back). The later path below never holds a delivery while pending either; the
            // handler's settle yields anyway.
            return Completion::done(Some(delivery));
        }
        Completion::later(async move {
            loop {
                let Some(current) = self.current.as_mut() else {
                    // Between connections: wait for the follower's next consumer (None: closed).
                    self.current = Some(self.starts.recv().await?);
                    continue;
                };
                let step = tokio::select! {
                    biased;
                    fresh = self.starts.recv() => Step::Fresh(fresh),
                    item = current.consumer.next() => Step::Item(item),
                };
                match step {
                    Step::Fresh(fresh) => self.current = Some(fresh?),
                    Step::Item(item) => {
                        if let Some(delivery) = self.take(item) {
                            return Some(delivery);
                        }
                    }
                }
            }
        })
    }

    async fn cancel(mut self: Box<Self>) -> Result<()> {
        let active = self.state.stop();
        if let Some((channel, tag)) = &active {
            if channel.status().connected() {
                // After cancel-ok the lapin consumer ends once its buffered deliveries are read.
                let cancel = channel.basic_cancel(tag.clone(), BasicCancelOptions::default());
                let _ = tokio::time::timeout(STOP_WAIT, cancel).await;
            }
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
                task.abort();
            }
        }
        // A consumer started while we were cancelling is not wanted either.
        let mut latest = self.current.take();
        while let Ok(fresh) = self.starts.try_recv() {
            if let Some(old) = latest.replace(fresh) {
                close_channel(&old.channel, "unsubscribed").await;
            }
        }
        // Prefetched deliveries nobody took go back unchanged (same attempt). A broadcast
        // queue is deleted with its consumer, so there is nothing to give back to.
        let give_back = matches!(
            self.state.spec.kind,
            QueueKind::Group { .. } | QueueKind::DeadLetters
        ) && !self
            .shared
            .aborted
            .load(std::sync::atomic::Ordering::Acquire);
        if let Some(mut started) = latest {
            while give_back_one(&self, &mut started, give_back).await {}
            close_channel(&started.channel, "unsubscribed").await;
        }
        if let Some((channel, _)) = active {
            close_channel(&channel, "unsubscribed").await;
        }
        Ok(())
    }
}

/// Gives back the next buffered delivery of a cancelled consumer; false when there is none
/// (or nothing should be given back).
async fn give_back_one(consumer: &AmqpConsumer, started: &mut Started, give_back: bool) -> bool {
    if !give_back {
        return false;
    }
    let Ok(Some(Ok(delivery))) = tokio::time::timeout(STOP_WAIT, started.consumer.next()).await
    else {
        return false;
    };
    if delivery.acker.poisoned() {
        return false;
    }
    if let Err(e) = consumer
        .delivery(started, delivery)
        .settle(Outcome::Requeue)
        .await
    {
        tracing::debug!(error = %e, "could not give back a prefetched delivery; the broker redelivers it");
    }
    true
}

impl Drop for AmqpConsumer {
    fn drop(&mut self) {
        if self.state.cancelled.is_cancelled() {
            return;
        }
        // Dropped without cancel: stop following and close the channel so the broker requeues
        // what this consumer held.
        let active = self.state.stop();
        if let (Some((channel, _)), Ok(handle)) = (active, tokio::runtime::Handle::try_current()) {
            handle.spawn(async move { close_channel(&channel, "consumer dropped").await });
        }
    }
}
