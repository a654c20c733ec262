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

use async_trait::async_trait;

use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::routing::Pattern;

pub(crate) mod delivery;

pub use crate::reply_inbox::ReplySlot;
pub use delivery::{Completion, Consumer, Delivery, Inbox, Outcome, Settle};

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
/// inbox.renew("inbox.1-2".into()); // made anew on the next connection
/// inbox.stamp(&mut request, "memory").unwrap();
/// assert_eq!(request.reply_to.as_deref(), Some("inbox.1-2"));
/// ```
#[derive(Debug, Default)]
pub struct InboxAddress {
    address: std::sync::RwLock<Option<String>>,
    /// Counts [`renew`](Self::renew)s, for [`Inbox::renewed_by`].
    renewals: tokio::sync::watch::Sender<u64>,
}

impl InboxAddress {
    /// Records the inbox's address; fails if this connection's inbox is already open (the
    /// bus opens it once per connection). `scheme` names the driver in the error.
    pub fn set(&self, address: String, scheme: &str) -> Result<()> {
        let mut current = self.address.write().unwrap_or_else(|p| p.into_inner());
        if current.is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "this {scheme}:// connection's reply inbox is already open; the bus opens it \
                     once per connection"
                ),
            ));
        }
        *current = Some(address);
        Ok(())
    }

    /// The open inbox now takes replies at `address`: for a driver that makes its inbox anew,
    /// under a new name, on each new connection (the old one's queue may have lived on a node
    /// that is gone, and the broker may take long to forget it). Requests stamped from now on
    /// carry the new address; replies to the old one are lost, and the calls waiting for them
    /// fail at once (see [`renewals`](Self::renewals)).
    pub fn renew(&self, address: String) {
        *self.address.write().unwrap_or_else(|p| p.into_inner()) = Some(address);
        self.renewals.send_modify(|n| *n += 1);
    }

    /// Counts the [`renew`](Self::renew)s: what [`Inbox::renewed_by`] takes.
    pub fn renewals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.renewals.subscribe()
    }

    /// Sets `envelope.reply_to` to the inbox's address; fails if the inbox is not open yet.
    pub fn stamp(&self, envelope: &mut Envelope, scheme: &str) -> Result<()> {
        let current = self.address.read().unwrap_or_else(|p| p.into_inner());
        let address = current.as_ref().ok_or_else(|| {
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Connected and working, to `node` (`host:port` of the broker node; the broker's name
    /// for the embedded one). A move to another node of a cluster shows as `Reconnecting`
    /// followed by `Connected` with another node.
    Connected {
        /// The node connected to.
        node: String,
    },
    /// Lost the connection; trying again.
    Reconnecting,
    /// Closed for good.
    Closed,
}

impl Status {
    /// Whether this is [`Status::Connected`], whatever the node.
    ///
    /// # Examples
    /// ```
    /// use tidings_core::Status;
    /// assert!(Status::Connected { node: "rabbit1:5672".into() }.is_connected());
    /// assert!(!Status::Reconnecting.is_connected());
    /// ```
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected { .. })
    }
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
