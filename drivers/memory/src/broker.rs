//! The broker (bindings and queues, shared by every connection of one name) and the
//! [`MemoryProvider`] connection that implements the tidings `Provider` trait.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use arc_swap::ArcSwap;
use tidings_core::driver::Status;
use tidings_core::driver::{
    Completion, Consumer, Delivery, Inbox, InboxAddress, Provider, PublishOptions, ReplySlot,
    SubscribeSpec,
};
use tidings_core::{async_trait, Capabilities, Envelope, Error, ErrorKind, Pattern, Result};
use tokio::sync::{mpsc, watch};

use crate::queue::{DeadLetterTarget, Handed, MemorySettle, Queue, Queues};

static IDS: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    IDS.fetch_add(1, Ordering::Relaxed)
}

/// A queue and every pattern it is bound with, so a message reaches each queue at most once.
#[derive(Clone)]
struct Binding {
    patterns: Vec<Pattern>,
    queue: Arc<Queue>,
}

/// One named in-process broker.
pub(crate) struct Broker {
    /// Immutable snapshot, swapped whole when bindings change: publishers never lock.
    bindings: ArcSwap<Vec<Binding>>,
    queues: Arc<Queues>,
}

impl Broker {
    fn named(name: &str) -> Arc<Broker> {
        static BROKERS: OnceLock<Mutex<HashMap<String, Arc<Broker>>>> = OnceLock::new();
        let mut brokers = BROKERS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        brokers
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Broker {
                    bindings: ArcSwap::from_pointee(Vec::new()),
                    queues: Queues::new(),
                })
            })
            .clone()
    }

    fn bind(&self, pattern: &Pattern, queue: &Arc<Queue>) {
        self.bindings.rcu(|old| {
            let mut new: Vec<Binding> = old.to_vec();
            match new.iter_mut().find(|b| Arc::ptr_eq(&b.queue, queue)) {
                Some(b) if b.patterns.contains(pattern) => {}
                Some(b) => b.patterns.push(pattern.clone()),
                None => new.push(Binding {
                    patterns: vec![pattern.clone()],
                    queue: queue.clone(),
                }),
            }
            new
        });
    }

    /// Removes a queue and its bindings.
    fn delete(&self, queue: &Arc<Queue>) {
        self.queues.remove(queue);
        self.bindings.rcu(|old| {
            old.iter()
                .filter(|b| !Arc::ptr_eq(&b.queue, queue))
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    /// Routes to every bound queue whose pattern matches, once per queue. Returns whether any
    /// queue took it.
    fn route(&self, envelope: Arc<Envelope>) -> bool {
        let bindings = self.bindings.load();
        let mut routed = false;
        for binding in bindings.iter() {
            if binding
                .patterns
                .iter()
                .any(|p| p.matches(&envelope.routing_key))
            {
                binding.queue.push(envelope.clone());
                routed = true;
            }
        }
        routed
    }
}

/// One connection to an in-process broker.
pub struct MemoryProvider {
    broker: Arc<Broker>,
    id: u64,
    closed: AtomicBool,
    /// Consumers opened by this connection, detached when it closes or aborts.
    consumers: Mutex<Vec<(Weak<Queue>, u64)>>,
    status: watch::Sender<Status>,
    /// The name of this connection's inbox queue, once open: what its requests carry as
    /// `reply_to`.
    inbox: InboxAddress,
    /// Where the bus keeps the inbox.
    replies: ReplySlot,
}

impl fmt::Debug for MemoryProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryProvider")
            .field("connection", &self.id)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl MemoryProvider {
    /// A new connection to the broker `name`, created on first use.
    pub fn named(name: &str) -> Self {
        Self {
            broker: Broker::named(name),
            id: next_id(),
            closed: AtomicBool::new(false),
            consumers: Mutex::new(Vec::new()),
            status: watch::Sender::new(Status::Connected {
                node: format!("memory://{name}"),
            }),
            inbox: InboxAddress::default(),
            replies: ReplySlot::default(),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::Closed,
                "this memory:// connection is closed",
            ));
        }
        Ok(())
    }

    fn consume(
        &self,
        queue: Arc<Queue>,
        prefetch: usize,
        dead_letters: DeadLetterTarget,
    ) -> Box<dyn Consumer> {
        let id = next_id();
        let rx = queue.attach(id, prefetch);
        self.consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((Arc::downgrade(&queue), id));
        Box::new(MemoryConsumer {
            rx,
            queue,
            dead_letters: Arc::new(dead_letters),
            id,
            broker: self.broker.clone(),
            detached: false,
        })
    }

    /// Publishes synchronously: the in-process broker never waits.
    fn route(&self, envelope: Envelope, options: &PublishOptions) -> Result<()> {
        self.check_open()?;
        let key = options.mandatory.then(|| envelope.routing_key.clone());
        if !self.broker.route(Arc::new(envelope)) {
            if let Some(key) = key {
                return Err(Error::new(
                    ErrorKind::NoResponders,
                    format!("no subscription is bound to routing key {key:?}"),
                ));
            }
        }
        Ok(())
    }

    fn detach_all(&self, crashed: bool) {
        self.closed.store(true, Ordering::Release);
        let consumers =
            std::mem::take(&mut *self.consumers.lock().unwrap_or_else(|p| p.into_inner()));
        for (queue, id) in consumers {
            if let Some(queue) = queue.upgrade() {
                if queue.detach(id, crashed) {
                    self.broker.delete(&queue);
                }
            }
        }
        self.status.send_replace(Status::Closed);
    }
}

#[async_trait]
impl Provider for MemoryProvider {
    fn system(&self) -> &'static str {
        "tidings-memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn publish<'a>(
        &'a self,
        envelope: Envelope,
        options: &'a PublishOptions,
    ) -> Completion<'a, Result<()>> {
        Completion::ready(self.route(envelope, options))
    }

    async fn subscribe(&self, spec: SubscribeSpec) -> Result<Box<dyn Consumer>> {
        self.check_open()?;
        let queue = match spec.mode.group() {
            None => self
                .broker
                .queues
                .declare(&format!("broadcast.{}.{}", self.id, next_id()), false),
            Some((name, durable)) => self
                .broker
                .queues
                .declare(&format!("group.{name}"), durable),
        };
        let from = spec.mode.subscription_name().to_owned();
        self.broker.bind(&spec.pattern, &queue);
        Ok(self.consume(
            queue,
            spec.prefetch as usize,
            DeadLetterTarget {
                queue: spec.dead_letter_queue,
                from,
            },
        ))
    }

    fn request<'a>(
        &'a self,
        mut envelope: Envelope,
        options: &'a PublishOptions,
    ) -> Completion<'a, Result<()>> {
        if let Err(e) = self.inbox.stamp(&mut envelope, "memory") {
            return Completion::ready(Err(e));
        }
        Completion::ready(self.route(envelope, options))
    }

    async fn open_inbox(&self) -> Result<Inbox> {
        self.check_open()?;
        let address = format!("inbox.{}.{}", self.id, next_id());
        let queue = self.broker.queues.declare(&address, false);
        if let Err(e) = self.inbox.set(address.clone(), "memory") {
            self.broker.delete(&queue);
            return Err(e);
        }
        let consumer = self.consume(
            queue,
            usize::MAX,
            DeadLetterTarget {
                queue: "inbox".into(),
                from: address.clone(),
            },
        );
        Ok(Inbox::new(address, consumer))
    }

    fn reply_slot(&self) -> &ReplySlot {
        &self.replies
    }

    async fn reply(&self, address: &str, envelope: Envelope) -> Result<()> {
        self.check_open()?;
        let queue = self.broker.queues.get(address);
        match queue {
            Some(queue) => queue.push(Arc::new(envelope)),
            None => tracing::debug!(address, "reply to a gone inbox dropped"),
        }
        Ok(())
    }

    async fn dead_letters(&self, name: &str) -> Result<Box<dyn Consumer>> {
        self.check_open()?;
        let queue = self.broker.queues.dead_letters(name);
        Ok(self.consume(
            queue,
            64,
            DeadLetterTarget {
                queue: name.to_owned(),
                from: name.to_owned(),
            },
        ))
    }

    fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    async fn close(&self) -> Result<()> {
        self.detach_all(false);
        Ok(())
    }

    async fn abort(&self) {
        self.detach_all(true);
    }
}

struct MemoryConsumer {
    rx: mpsc::UnboundedReceiver<Handed>,
    queue: Arc<Queue>,
    dead_letters: Arc<DeadLetterTarget>,
    id: u64,
    broker: Arc<Broker>,
    detached: bool,
}

impl MemoryConsumer {
    fn delivery(&self, (tag, envelope): Handed) -> Delivery {
        let settle = MemorySettle {
            queue: self.queue.clone(),
            tag,
            dead_letters: self.dead_letters.clone(),
        };
        Delivery::new(envelope, Box::new(settle))
    }

    fn detach(&mut self) {
        if !self.detached {
            self.detached = true;
            if self.queue.detach(self.id, false) {
                self.broker.delete(&self.queue);
            }
        }
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    fn next(&mut self) -> Completion<'_, Option<Delivery>> {
        // Under load the next message is already queued: hand it out without a future.
        match self.rx.try_recv() {
            Ok(handed) => Completion::ready(Some(self.delivery(handed))),
            Err(mpsc::error::TryRecvError::Disconnected) => Completion::ready(None),
            Err(mpsc::error::TryRecvError::Empty) => Completion::later(async move {
                let handed = self.rx.recv().await?;
                Some(self.delivery(handed))
            }),
        }
    }

    async fn cancel(mut self: Box<Self>) -> Result<()> {
        self.detach();
        Ok(())
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.detach();
    }
}
