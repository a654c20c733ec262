//! Middleware layers: code that runs around every message a bus sends and every delivery it
//! handles, in the manner of tower's layers.
//!
//! A layer sees the message, may change its envelope (headers, say), may stop it, and calls
//! `next` to pass it on; what `next` returns is what became of it. On the way out that is the
//! publish's result; on the way in it is a [`Handled`]: how the delivery is settled (ack,
//! retry, dead letter), the handler's error and run time, and whether an RPC reply was sent.
//!
//! # Order
//! The first layer added to a bus ([`Bus::with_layer`](crate::Bus::with_layer)) is the
//! outermost, in both directions: it sees an outgoing message first and its publish result
//! last, and it sees an incoming delivery first and its outcome last.
//!
//! # What passes through
//! - Out ([`Layer::send`]): emits, casts, RPC requests, RPC replies, replayed dead letters.
//! - In ([`Layer::receive`]): deliveries to subscriptions, requests reaching an RPC server,
//!   and replies reaching a caller — each with the layers of the handle that subscribed,
//!   served or called.
//!
//! Core policy runs inside the innermost layer, as plainly named steps: the emitter filter,
//! decoding, the handler, then the retry / dead-letter decision. The `active_when` guard runs
//! before a delivery is taken at all (a paused subscription hands its deliveries back).
//!
//! # Examples
//! ```
//! use std::time::Instant;
//! use tidings_core::layer::{BoxFuture, Handled, Incoming, Layer, Next};
//!
//! /// Logs how long each delivery took, and what became of it.
//! struct Timing;
//!
//! impl Layer for Timing {
//!     fn receive<'a>(&'a self, message: Incoming, next: Next<'a, Incoming>) -> BoxFuture<'a, Handled> {
//!         Box::pin(async move {
//!             let started = Instant::now();
//!             let key = message.envelope.routing_key.clone();
//!             let handled = next.run(message).await;
//!             println!("{key}: {:?} in {:?}", handled.outcome, started.elapsed());
//!             handled
//!         })
//!     }
//! }
//! # let _ = Timing;
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use futures::future::BoxFuture;

use crate::driver::Outcome;
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::interceptor::Interceptor;

/// What kind of message a layer sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// An event: emitted (out) or delivered to a subscription (in).
    Event,
    /// A cast: sent to one worker of a service (out) — received as a [`Request`](Self::Request)
    /// without a reply address.
    Cast,
    /// An RPC request: a call (out), or a request reaching a server (in).
    Request,
    /// An RPC reply: a server's answer (out), or the answer reaching its caller (in).
    Reply,
    /// A dead letter published again by [`DeadLetter::replay`](crate::DeadLetter::replay).
    Replay,
}

/// A message on its way out.
#[derive(Debug)]
#[non_exhaustive]
pub struct Outgoing {
    /// The message. Changes made here are what the driver publishes.
    pub envelope: Envelope,
    /// What it is.
    pub kind: Kind,
    /// The messaging system it goes through (OpenTelemetry's `messaging.system`).
    pub system: &'static str,
    /// A reply's destination, or the inbox address a request will carry.
    address: Option<String>,
}

impl Outgoing {
    pub(crate) fn new(
        envelope: Envelope,
        kind: Kind,
        system: &'static str,
        address: Option<String>,
    ) -> Self {
        Self {
            envelope,
            kind,
            system,
            address,
        }
    }

    /// Where it goes: the routing key, or for an RPC reply the caller's inbox address.
    pub fn destination(&self) -> &str {
        match (self.kind, &self.address) {
            (Kind::Reply, Some(address)) => address,
            _ => &self.envelope.routing_key,
        }
    }

    /// For an RPC request, the address of the connection's reply inbox, which the request will
    /// carry as `reply_to`: the driver sets it when it sends the request
    /// ([`Provider::request`](crate::driver::Provider::request)), so `envelope.reply_to` is
    /// empty here and changing it has no effect. The address is the one the driver gave when it
    /// opened the inbox; a broker may rewrite it on the way (RabbitMQ's direct reply-to does).
    /// `None` for anything else.
    pub fn reply_to(&self) -> Option<&str> {
        match self.kind {
            Kind::Request => self.address.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn into_parts(self) -> (Envelope, Option<String>) {
        (self.envelope, self.address)
    }
}

/// A delivery on its way in.
#[derive(Debug)]
#[non_exhaustive]
pub struct Incoming {
    /// The message (shared with the driver, which may keep it to settle the delivery; use
    /// [`envelope_mut`](Self::envelope_mut) to change it).
    pub envelope: Arc<Envelope>,
    /// What it is.
    pub kind: Kind,
    /// The messaging system it came through (OpenTelemetry's `messaging.system`).
    pub system: &'static str,
    /// The subscription's pattern, the service's name, or for a reply the called service.
    pub subscription: Arc<str>,
    /// The group, for group subscriptions and RPC servers.
    pub group: Option<Arc<str>>,
}

impl Incoming {
    pub(crate) fn new(
        envelope: Arc<Envelope>,
        kind: Kind,
        system: &'static str,
        subscription: Arc<str>,
        group: Option<Arc<str>>,
    ) -> Self {
        Self {
            envelope,
            kind,
            system,
            subscription,
            group,
        }
    }

    /// The envelope, to change (copied first if the driver still shares it).
    pub fn envelope_mut(&mut self) -> &mut Envelope {
        Arc::make_mut(&mut self.envelope)
    }
}

/// What became of a delivery: what the receive path reports back through the layers.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Handled {
    /// How the delivery is settled with the broker.
    pub outcome: Outcome,
    /// How long the handler ran; `None` when it did not run (a layer stopped the delivery,
    /// the emitter filter skipped it, or it could not be decoded), or when no layer asked.
    pub handler_time: Option<Duration>,
    /// The handler's error (or why the delivery could not be handled), when it failed.
    pub error: Option<String>,
    /// Whether an RPC reply was sent.
    pub replied: bool,
}

impl Handled {
    /// A delivery a layer stops without handling it: a subscription or server dead-letters it
    /// with `reason`; a caller fails its call with `reason`.
    pub fn stopped(reason: impl Into<String>) -> Self {
        let reason = format!("stopped by a layer: {}", reason.into());
        Self {
            outcome: Outcome::DeadLetter {
                reason: reason.clone(),
            },
            handler_time: None,
            error: Some(reason),
            replied: false,
        }
    }

    /// Settled with `outcome`, nothing else to say.
    pub(crate) fn settled(outcome: Outcome) -> Self {
        Self {
            outcome,
            handler_time: None,
            error: None,
            replied: false,
        }
    }
}

/// The error a layer returns to stop an outgoing message: the send fails with it.
///
/// # Examples
/// ```
/// let e = tidings_core::layer::stop("tenant header missing");
/// assert_eq!(e.kind(), tidings_core::ErrorKind::Stopped);
/// ```
pub fn stop(reason: impl fmt::Display) -> Error {
    Error::new(ErrorKind::Stopped, format!("a layer refused it: {reason}"))
}

/// Code that runs around every message a bus sends and every delivery it handles. Both
/// methods pass the message on unchanged by default; see the [module docs](self).
pub trait Layer: Send + Sync + 'static {
    /// Runs around a message on its way out. Return an error (see [`stop`]) without calling
    /// `next` to stop it.
    fn send<'a>(
        &'a self,
        message: Outgoing,
        next: Next<'a, Outgoing>,
    ) -> BoxFuture<'a, Result<()>> {
        next.run(message)
    }

    /// Runs around a delivery on its way in. Return [`Handled::stopped`] without calling
    /// `next` to stop it.
    fn receive<'a>(
        &'a self,
        message: Incoming,
        next: Next<'a, Incoming>,
    ) -> BoxFuture<'a, Handled> {
        next.run(message)
    }
}

/// A direction a message travels in: out ([`Outgoing`]) or in ([`Incoming`]).
pub trait Passage: Send + Sized + 'static {
    /// What passing on gives back.
    type Output: Send;

    #[doc(hidden)]
    fn enter<'a>(
        layer: &'a dyn Layer,
        message: Self,
        next: Next<'a, Self>,
    ) -> BoxFuture<'a, Self::Output>;
}

impl Passage for Outgoing {
    type Output = Result<()>;

    fn enter<'a>(
        layer: &'a dyn Layer,
        message: Self,
        next: Next<'a, Self>,
    ) -> BoxFuture<'a, Result<()>> {
        layer.send(message, next)
    }
}

impl Passage for Incoming {
    type Output = Handled;

    fn enter<'a>(
        layer: &'a dyn Layer,
        message: Self,
        next: Next<'a, Self>,
    ) -> BoxFuture<'a, Handled> {
        layer.receive(message, next)
    }
}

/// What the path does once every layer has passed the message on.
pub(crate) type Inner<'a, M> =
    dyn Fn(M) -> BoxFuture<'a, <M as Passage>::Output> + Send + Sync + 'a;

/// The rest of the chain after a layer: the inner layers, then the path itself.
pub struct Next<'a, M: Passage> {
    rest: &'a [Arc<dyn Layer>],
    inner: &'a Inner<'a, M>,
}

impl<'a, M: Passage> Next<'a, M> {
    /// The whole chain `layers`, ending in `inner`.
    pub(crate) fn chain(layers: &'a [Arc<dyn Layer>], inner: &'a Inner<'a, M>) -> Self {
        Self {
            rest: layers,
            inner,
        }
    }

    /// Passes `message` on to the next layer, or to the path once no layer is left.
    pub fn run(self, message: M) -> BoxFuture<'a, M::Output> {
        match self.rest.split_first() {
            Some((layer, rest)) => M::enter(
                &**layer,
                message,
                Next {
                    rest,
                    inner: self.inner,
                },
            ),
            None => (self.inner)(message),
        }
    }
}

impl<M: Passage> fmt::Debug for Next<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("layers_left", &self.rest.len())
            .finish_non_exhaustive()
    }
}

/// An [`Interceptor`] as a layer: it reads and sets headers, in both directions.
pub(crate) struct Intercepting<I>(pub(crate) I);

impl<I: Interceptor> Layer for Intercepting<I> {
    fn send<'a>(
        &'a self,
        mut message: Outgoing,
        next: Next<'a, Outgoing>,
    ) -> BoxFuture<'a, Result<()>> {
        self.0.on_send(&mut message.envelope);
        next.run(message)
    }

    fn receive<'a>(
        &'a self,
        mut message: Incoming,
        next: Next<'a, Incoming>,
    ) -> BoxFuture<'a, Handled> {
        self.0.on_receive(message.envelope_mut());
        next.run(message)
    }
}
