//! The contract between the bus and a transport driver: what a driver implements
//! ([`Provider`], [`Consumer`], [`Settle`]) and the types they exchange. Applications never
//! need this module; they hold a [`Bus`](crate::Bus).
//!
//! A driver supplies transport primitives only: publish, subscribe, settle a delivery
//! (ack, requeue, retry, dead-letter), send an RPC request and a reply, the connection's reply
//! inbox, and close. All policy — how many attempts, what goes to the dead letters and why, RPC
//! correlation and timeouts, layers, shutdown — lives in the [`Bus`](crate::Bus), once, for
//! every driver.
//!
//! # Contract
//! - Every method may be called concurrently from many tasks.
//! - `publish` returns once the broker has accepted the message, where the transport can say so.
//! - A [`Consumer`] keeps yielding deliveries across reconnects; it ends (`None`) only when
//!   cancelled or when the provider is closed.
//! - A delivery never settled when its consumer or connection goes away is redelivered to
//!   another consumer of the same queue (at-least-once).
//! - The per-message operations (`publish`, `request`, [`Consumer::next`],
//!   [`Settle::settle`]) return a [`Completion`]: `ready` when the work is already done (no
//!   allocation), `later` otherwise.
//!
//! # RPC
//! Request and reply are operations of their own; a driver never looks at an envelope's
//! `reply_to` to decide what a message is or where it goes.
//! - **One inbox per connection.** A provider is one connection, and a connection has one
//!   reply inbox, where the replies to all its requests arrive. The bus opens it with
//!   [`Provider::open_inbox`] before the connection's first request and keeps it in the
//!   provider's [`ReplySlot`] ([`Provider::reply_slot`]), so every [`Bus`](crate::Bus) over one
//!   provider — clones, other handles, and separate `Bus::new`s alike — shares it. The bus calls
//!   `open_inbox` once per connection, and again only after it failed. The inbox's consumer is
//!   read by the bus alone; its deliveries need no settling.
//! - **`request` sends a request.** [`Provider::request`] publishes like
//!   [`publish`](Provider::publish) (same topic space, same options) and sets `reply_to` to
//!   this connection's inbox address, whatever the envelope had there: the bus does not set it.
//!   It fails if the inbox is not open. `publish` sends what it is given, `reply_to` included,
//!   as an ordinary message (a relayed or replayed request, say).
//! - **`reply` sends a reply** to the address a request carried in `reply_to`, which may be
//!   the inbox of any connection or process, or a foreign client's address. A reply to an
//!   inbox that is gone (its caller left) is dropped without an error where the transport can
//!   tell; an address the broker refuses is an error.
//! - Correlation ids, timeouts and handing each waiting call its reply are the bus's.
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::routing::Pattern;

/// How a subscription shares messages with other subscriptions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// Every broadcast subscription receives its own copy; messages published while it does not
    /// exist are not kept for it.
    Broadcast,
    /// Competing consumers: each message goes to exactly one member of the group `name`.
    Group {
        /// The group (queue) name, a valid routing-key-like word list.
        name: String,
        /// Whether the group's queue keeps messages while no member runs (and, where the broker
        /// can, across broker restarts).
        durable: bool,
    },
}

impl Mode {
    /// The group's name and durability; `None` for a broadcast subscription. Drivers read the
    /// mode through this rather than matching it, so a mode added later (with a capability
    /// flag of its own, so that drivers without it are never asked) breaks no driver.
    pub fn group(&self) -> Option<(&str, bool)> {
        match self {
            Self::Group { name, durable } => Some((name, *durable)),
            Self::Broadcast => None,
        }
    }

    /// The name a dead letter records as the subscription it came from: the group's name, or
    /// `broadcast`.
    pub fn subscription_name(&self) -> &str {
        self.group().map_or("broadcast", |(name, _)| name)
    }
}

/// What a driver needs to open a subscription.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscribeSpec {
    /// Which routing keys to receive.
    pub pattern: Pattern,
    /// Broadcast or group.
    pub mode: Mode,
    /// How many unsettled deliveries the broker may hand this consumer at once (at least 1).
    pub prefetch: u16,
    /// The name of the dead-letter queue that [`Outcome::DeadLetter`] moves messages into.
    pub dead_letter_queue: String,
}

impl SubscribeSpec {
    /// A subscription to `pattern` in `mode`, with `prefetch` (at least 1) and the dead-letter
    /// queue `dead_letter_queue`.
    pub fn new(
        pattern: Pattern,
        mode: Mode,
        prefetch: u16,
        dead_letter_queue: impl Into<String>,
    ) -> Self {
        Self {
            pattern,
            mode,
            prefetch: prefetch.max(1),
            dead_letter_queue: dead_letter_queue.into(),
        }
    }
}

/// Per-publish options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Fail with [`ErrorKind::NoResponders`] when no queue takes the message, where the
    /// transport can tell.
    pub mandatory: bool,
}

impl PublishOptions {
    /// The options of a plain publish.
    pub const DEFAULT: Self = Self { mandatory: false };
    /// The options of a publish that must reach a queue (casts and RPC requests).
    pub const MANDATORY: Self = Self { mandatory: true };
}

/// How a delivery is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Done: remove it.
    Ack,
    /// Give it back unchanged (same attempt), preferably to another consumer.
    Requeue,
    /// Deliver it again, to this or another consumer, with `attempt + 1`.
    Retry,
    /// Move it to the subscription's dead-letter queue, as made by
    /// [`Envelope::into_dead_letter`] with this reason.
    DeadLetter {
        /// Why it could not be handled.
        reason: String,
    },
}

impl Outcome {
    /// The error a driver gives for an outcome it does not know (outcomes may be added).
    pub fn unsupported(&self) -> Error {
        Error::new(
            ErrorKind::Unsupported,
            format!("this driver cannot settle a delivery with {self:?}"),
        )
    }
}

/// What the per-message operations of a driver (publish, next, settle) return: either a
/// result that is already there or a future.
///
/// The in-process driver finishes these operations synchronously, millions of times a second;
/// `ready` spares it the allocation an `async fn` in a trait object costs. A ready completion
/// still counts against tokio's cooperative budget, as tokio's own channels do, so a task
/// publishing in a tight loop yields now and then and lets the consumers it woke run.
/// Network drivers return `later(async move { ... })`.
#[must_use = "a completion does nothing until awaited"]
pub struct Completion<'a, T>(Step<'a, T>);

enum Step<'a, T> {
    /// Done; counts against the cooperative budget when `cooperative`.
    Ready {
        value: Option<T>,
        cooperative: bool,
    },
    Later(BoxFuture<'a, T>),
}

impl<'a, T> Completion<'a, T> {
    /// A completion that is done: `value` is its output. For operations that could have had to
    /// wait (a publish, the next delivery): awaiting it uses one unit of tokio's budget.
    pub fn ready(value: T) -> Self {
        Self(Step::Ready {
            value: Some(value),
            cooperative: true,
        })
    }

    /// A completion that is done and never had anything to wait for (an in-memory ack):
    /// awaiting it costs nothing.
    pub fn done(value: T) -> Self {
        Self(Step::Ready {
            value: Some(value),
            cooperative: false,
        })
    }

    /// A completion that `future` finishes.
    pub fn later(future: impl Future<Output = T> + Send + 'a) -> Self {
        Self(Step::Later(Box::pin(future)))
    }
}

// Never pinned structurally: the ready value is moved out, the future is boxed.
impl<T> Unpin for Completion<'_, T> {}

impl<T> Future for Completion<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.get_mut().0 {
            Step::Ready { value, cooperative } => {
                if *cooperative {
                    std::task::ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
                }
                Poll::Ready(value.take().expect("Completion polled after it finished"))
            }
            Step::Later(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for Completion<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Step::Ready { .. } => "Completion::Ready",
            Step::Later(_) => "Completion::Later",
        })
    }
}

/// Settles one delivery with the broker. Implemented by drivers.
pub trait Settle: Send + Sync + 'static {
    /// Applies `outcome`. Called at most once per delivery.
    fn settle(self: Box<Self>, outcome: Outcome) -> Completion<'static, Result<()>>;
}

/// A received message and the means to settle it.
///
/// The envelope is shared (`Arc`), so a driver that must keep a copy until the delivery is
/// settled — to redeliver it if the consumer dies — or that fans one message out to many
/// queues keeps a reference instead of cloning the message.
pub struct Delivery {
    envelope: Arc<Envelope>,
    settle: Box<dyn Settle>,
}

impl Delivery {
    /// A delivery that `settle` will settle.
    pub fn new(envelope: impl Into<Arc<Envelope>>, settle: Box<dyn Settle>) -> Self {
        Self {
            envelope: envelope.into(),
            settle,
        }
    }

    /// The message.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Settles the delivery with `outcome`.
    pub fn settle(self, outcome: Outcome) -> Completion<'static, Result<()>> {
        self.settle.settle(outcome)
    }

    /// Splits the delivery into its message and its settlement handle.
    pub fn into_parts(self) -> (Arc<Envelope>, Box<dyn Settle>) {
        (self.envelope, self.settle)
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("envelope", &self.envelope)
            .finish_non_exhaustive()
    }
}

/// A stream of deliveries from one subscription.
#[async_trait]
pub trait Consumer: Send + 'static {
    /// The next delivery; `None` once cancelled or closed. Must be cancel-safe: dropping the
    /// future loses no delivery.
    fn next(&mut self) -> Completion<'_, Option<Delivery>>;
    /// Stops receiving. Deliveries not yet settled go back to the queue.
    async fn cancel(self: Box<Self>) -> Result<()>;
}

/// A connection's reply inbox, as [`Provider::open_inbox`] opens it: the private address where
/// the replies to the connection's requests arrive.
pub struct Inbox {
    /// The address [`Provider::request`] puts in `reply_to`, as far as the connection knows it
    /// (a broker may rewrite it on the way). The bus shows it to layers; it never sends to it.
    pub address: String,
    /// The replies. They need no settling.
    pub consumer: Box<dyn Consumer>,
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Where the bus keeps a connection's reply inbox and the calls waiting on it.
///
/// A driver holds one per connection, made with `ReplySlot::default()`, returns it from
/// [`Provider::reply_slot`] and never looks inside. The slot is the provider's rather than a
/// bus's because the inbox belongs to the connection: every bus over one provider finds the
/// same inbox there, and it goes away with the connection. (A registry in the bus keyed by
/// provider would need a process-wide map, keys that outlive their providers, and would split
/// the inbox of a provider wrapped by another one that delegates to it; a slot the provider
/// holds has none of that.)
#[derive(Default)]
pub struct ReplySlot(pub(crate) tokio::sync::OnceCell<crate::reply_inbox::ReplyInbox>);

impl fmt::Debug for ReplySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ReplySlot").field(&self.0.get()).finish()
    }
}

/// The address of a connection's reply inbox, once [`Provider::open_inbox`] opened it: what
/// [`Provider::request`] stamps on every request as `reply_to`. Drivers that name the inbox
/// themselves keep one of these instead of writing the bookkeeping again.
///
/// # Examples
/// ```
/// use tidings_core::driver::InboxAddress;
/// use tidings_core::Envelope;
///
/// let inbox = InboxAddress::default();
/// let mut request = Envelope::new("math.add", "application/json", Default::default());
/// assert!(inbox.stamp(&mut request, "memory").is_err()); // not open yet
/// inbox.set("inbox.1".into(), "memory").unwrap();
/// inbox.stamp(&mut request, "memory").unwrap();
/// assert_eq!(request.reply_to.as_deref(), Some("inbox.1"));
/// assert!(inbox.set("inbox.2".into(), "memory").is_err()); // one per connection
/// ```
#[derive(Debug, Default)]
pub struct InboxAddress(std::sync::OnceLock<String>);

impl InboxAddress {
    /// Records the inbox's address; fails if this connection's inbox is already open (the
    /// bus opens it once per connection). `scheme` names the driver in the error.
    pub fn set(&self, address: String, scheme: &str) -> Result<()> {
        self.0.set(address).map_err(|_| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "this {scheme}:// connection's reply inbox is already open; the bus opens it \
                     once per connection"
                ),
            )
        })
    }

    /// Sets `envelope.reply_to` to the inbox's address; fails if the inbox is not open yet.
    pub fn stamp(&self, envelope: &mut Envelope, scheme: &str) -> Result<()> {
        let address = self.0.get().ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "a request needs this {scheme}:// connection's reply inbox, which is not \
                     open; Bus::call opens it"
                ),
            )
        })?;
        envelope.reply_to = Some(address.clone());
        Ok(())
    }
}

/// What a driver and its broker can do. The conformance suite reports a case whose capability
/// is missing as unsupported, with the reason, instead of passing it.
///
/// # Examples
/// ```
/// use tidings_core::driver::{Capabilities, Capability};
/// let c = Capabilities::default()
///     .without(Capability::Mandatory, "the broker accepts messages nobody takes");
/// assert!(!c.mandatory && c.ttl);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Messages expire after their TTL.
    pub ttl: bool,
    /// Group queues keep messages while no member runs.
    pub durable_groups: bool,
    /// Unsettled deliveries of a dead connection are redelivered.
    pub redelivery: bool,
    /// `PublishOptions::mandatory` is honoured.
    pub mandatory: bool,
    /// The largest body the driver promises to carry.
    pub max_body: usize,
    /// Reasons for anything above being `false`, shown in conformance output.
    pub notes: Vec<(&'static str, &'static str)>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            ttl: true,
            durable_groups: true,
            redelivery: true,
            mandatory: true,
            max_body: 16 * 1024 * 1024,
            notes: Vec::new(),
        }
    }
}

impl Capabilities {
    /// These capabilities without `capability`, and `why` it is missing (shown by the
    /// conformance suite).
    #[must_use]
    pub fn without(mut self, capability: Capability, why: &'static str) -> Self {
        match capability {
            Capability::Ttl => self.ttl = false,
            Capability::DurableGroups => self.durable_groups = false,
            Capability::Redelivery => self.redelivery = false,
            Capability::Mandatory => self.mandatory = false,
        }
        self.notes.push((capability.name(), why));
        self
    }

    /// These capabilities with `max_body` as the largest body carried.
    #[must_use]
    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }
}

/// One capability a driver may lack; see [`Capabilities`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// [`Capabilities::ttl`].
    Ttl,
    /// [`Capabilities::durable_groups`].
    DurableGroups,
    /// [`Capabilities::redelivery`].
    Redelivery,
    /// [`Capabilities::mandatory`].
    Mandatory,
}

impl Capability {
    /// The field's name, as the conformance suite shows it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ttl => "ttl",
            Self::DurableGroups => "durable_groups",
            Self::Redelivery => "redelivery",
            Self::Mandatory => "mandatory",
        }
    }
}

/// Connection health, as a driver reports it through [`Provider::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Connected and working.
    Connected,
    /// Lost the connection; trying again.
    Reconnecting,
    /// Closed for good.
    Closed,
}

/// A transport driver. See the module docs for the contract.
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug + 'static {
    /// What this driver and broker support.
    fn capabilities(&self) -> Capabilities;

    /// The messaging system, as OpenTelemetry's `messaging.system` names it (`rabbitmq`,
    /// `activemq`, …), for layers that report where messages go.
    fn system(&self) -> &'static str;

    /// Publishes to the bus's topic space under `envelope.routing_key`.
    fn publish<'a>(
        &'a self,
        envelope: Envelope,
        options: &'a PublishOptions,
    ) -> Completion<'a, Result<()>>;

    /// Opens a subscription.
    async fn subscribe(&self, spec: SubscribeSpec) -> Result<Box<dyn Consumer>>;

    /// Publishes an RPC request as [`publish`](Self::publish) does, with `reply_to` set to this
    /// connection's inbox address (see [RPC](self#rpc)). Fails when the inbox is not open.
    fn request<'a>(
        &'a self,
        envelope: Envelope,
        options: &'a PublishOptions,
    ) -> Completion<'a, Result<()>>;

    /// Opens this connection's reply inbox, where the replies to its requests arrive. The bus
    /// calls it once per connection, before the first request, and again only if it failed
    /// (see [RPC](self#rpc)).
    async fn open_inbox(&self) -> Result<Inbox>;

    /// Where the bus keeps this connection's reply inbox: a [`ReplySlot`] the connection holds.
    fn reply_slot(&self) -> &ReplySlot;

    /// Sends an RPC reply to `address`, the `reply_to` a request carried.
    async fn reply(&self, address: &str, envelope: Envelope) -> Result<()>;

    /// Consumes the dead-letter queue `name` (as a group: each dead letter goes to one reader).
    async fn dead_letters(&self, name: &str) -> Result<Box<dyn Consumer>>;

    /// A watchable connection status.
    fn status(&self) -> tokio::sync::watch::Receiver<Status>;

    /// Closes the connection after pending publishes are flushed. Unsettled deliveries go back
    /// to their queues.
    async fn close(&self) -> Result<()>;

    /// Drops the connection at once, as a crashed process would: nothing is flushed or settled.
    async fn abort(&self);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn completions_give_their_value() {
        assert_eq!(Completion::ready(1).await, 1);
        assert_eq!(Completion::done(2).await, 2);
        assert_eq!(Completion::later(async { 3 }).await, 3);
    }

    /// A loop of ready completions (a task publishing to the in-process broker) yields now and
    /// then, so the task it feeds gets to run on a single-threaded runtime before it ends.
    #[tokio::test(flavor = "current_thread")]
    async fn a_loop_of_ready_completions_lets_other_tasks_run() {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
        let mut seen_before_the_end = false;
        for _ in 0..1_000 {
            Completion::ready(()).await;
            seen_before_the_end |= ran.load(Ordering::SeqCst);
        }
        assert!(seen_before_the_end, "the loop never yielded");
    }
}
