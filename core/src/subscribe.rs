//! Subscriptions: the handler loop and its policy — decoding, retries, dead letters, the
//! active-when guard, emitter filters and graceful stop.
//!
//! # When a message is settled
//! - The handler returns `Ok` → acked.
//! - The handler returns `Err` or panics → retried (redelivered with `attempt + 1`) until
//!   `max_attempts` is reached, then dead-lettered with the error text as reason.
//! - The payload cannot be decoded, or carries another event type → dead-lettered at once,
//!   never retried (it would fail the same way forever).
//! - The emitter does not match the `from` filter → acked without calling the handler.
//! - The active-when guard is false → given back to the broker (requeued, same attempt) and the
//!   subscription pauses until the guard is true again.
//! - The process dies before settling → the broker redelivers it to another consumer.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::codec::Codec;
use crate::driver::{Consumer, Delivery, Mode, Outcome, SubscribeSpec};
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::routing::{Pattern, RoutingKey};

/// The error a handler returns. Anything convertible with `?` or `.into()` works: I/O errors,
/// `String`, `&str`, `anyhow::Error`.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

/// A payload a subscription can hand to its handler: any [`Event`], decoded by the content type,
/// or the raw [`Envelope`] for tools that relay messages they have no type for.
pub trait Payload: Sized + Send + 'static {
    /// The event name expected in envelopes, or `""` to accept any.
    fn expected_event() -> &'static str;
    /// Decodes the payload of `envelope`.
    fn from_envelope(envelope: &Envelope) -> Result<Self>;
}

impl<E: Event> Payload for E {
    fn expected_event() -> &'static str {
        E::NAME
    }

    fn from_envelope(envelope: &Envelope) -> Result<Self> {
        Codec::decode(&envelope.content_type, &envelope.body)
    }
}

impl Payload for Envelope {
    fn expected_event() -> &'static str {
        ""
    }

    fn from_envelope(envelope: &Envelope) -> Result<Self> {
        Ok(envelope.clone())
    }
}

/// A received event with its metadata. Derefs to the event.
#[derive(Debug)]
pub struct Message<E> {
    event: E,
    envelope: Arc<Envelope>,
}

impl<E> Message<E> {
    /// The event.
    pub fn event(&self) -> &E {
        &self.event
    }

    /// The event, by value.
    pub fn into_event(self) -> E {
        self.event
    }

    /// The routing key it was published under.
    pub fn routing_key(&self) -> &str {
        &self.envelope.routing_key
    }

    /// Who published it: `host.kind.id`.
    pub fn emitter(&self) -> &str {
        &self.envelope.emitter
    }

    /// An application header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.envelope.headers.get(name).map(String::as_str)
    }

    /// Which delivery attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.envelope.attempt
    }

    /// The whole envelope (body included).
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }
}

impl<E> Deref for Message<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.event
    }
}

/// Why handling failed, which decides retry or immediate dead letter.
pub(crate) enum Failure {
    /// Retrying cannot help.
    Poison(String),
    /// The handler failed; retry while attempts remain.
    Handler(String),
}

/// A type-erased handler, for the RPC server whose handler is built at run time.
pub(crate) type RawHandler =
    Arc<dyn Fn(Arc<Envelope>) -> BoxFuture<'static, Result<(), Failure>> + Send + Sync>;

/// What a subscription runs per message. Generic rather than boxed, so a typed handler costs no
/// allocation per message.
pub(crate) trait Handler: Send + Sync + 'static {
    fn call(&self, envelope: Arc<Envelope>) -> impl Future<Output = Result<(), Failure>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Arc<Envelope>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send,
{
    fn call(&self, envelope: Arc<Envelope>) -> impl Future<Output = Result<(), Failure>> + Send {
        self(envelope)
    }
}

/// Settings shared by subscriptions and RPC servers.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) pattern: String,
    pub(crate) group: Option<String>,
    pub(crate) durable: bool,
    pub(crate) prefetch: Option<u16>,
    pub(crate) concurrency: usize,
    pub(crate) max_attempts: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) from: Option<String>,
    pub(crate) dead_letter_queue: Option<String>,
    pub(crate) active_when: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl Settings {
    pub(crate) fn new(pattern: &str) -> Self {
        Self {
            pattern: pattern.to_owned(),
            group: None,
            durable: true,
            prefetch: None,
            concurrency: 1,
            max_attempts: 3,
            retry_delay: Duration::ZERO,
            from: None,
            dead_letter_queue: None,
            active_when: None,
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("pattern", &self.pattern)
            .field("group", &self.group)
            .field("durable", &self.durable)
            .field("prefetch", &self.prefetch)
            .field("concurrency", &self.concurrency)
            .field("max_attempts", &self.max_attempts)
            .field("retry_delay", &self.retry_delay)
            .field("from", &self.from)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("active_when", &self.active_when.is_some())
            .finish()
    }
}

/// A subscription being configured; finish it with [`handle`](Self::handle) or
/// [`handle_message`](Self::handle_message). Made by [`Bus::subscribe`].
#[must_use = "a subscription does nothing until a handler is attached"]
pub struct SubscribeBuilder<E> {
    bus: Bus,
    settings: Settings,
    _event: PhantomData<fn() -> E>,
}

impl<E> fmt::Debug for SubscribeBuilder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscribeBuilder")
            .field("settings", &self.settings)
            .finish()
    }
}

/// Builder methods shared by [`SubscribeBuilder`] and [`Serve`](crate::rpc::Serve).
macro_rules! settings_methods {
    () => {
        /// Joins the competing-consumer group `name`: each message goes to one member.
        pub fn group(mut self, name: &str) -> Self {
            self.settings.group = Some(name.to_owned());
            self
        }

        /// Whether the group's queue keeps messages while no member runs (default `true`).
        pub fn durable(mut self, durable: bool) -> Self {
            self.settings.durable = durable;
            self
        }

        /// How many messages the broker may hand this subscription before it settles any
        /// (default: 32, at least the concurrency).
        pub fn prefetch(mut self, prefetch: u16) -> Self {
            self.settings.prefetch = Some(prefetch.max(1));
            self
        }

        /// How many messages are handled at once (default 1, which keeps publish order).
        pub fn concurrency(mut self, concurrency: usize) -> Self {
            self.settings.concurrency = concurrency.max(1);
            self
        }

        /// How many times a message is tried before it is dead-lettered (default 3).
        pub fn max_attempts(mut self, attempts: u32) -> Self {
            self.settings.max_attempts = attempts.max(1);
            self
        }

        /// How long to wait before a failed message is retried (default none).
        pub fn retry_delay(mut self, delay: std::time::Duration) -> Self {
            self.settings.retry_delay = delay;
            self
        }

        /// Only handle messages whose emitter (`host.kind.id`) matches `pattern`; others are
        /// acked unseen.
        pub fn from(mut self, pattern: &str) -> Self {
            self.settings.from = Some(pattern.to_owned());
            self
        }

        /// Where messages that fail for good go (default: the group name, or `broadcast`).
        pub fn dead_letter_queue(mut self, name: &str) -> Self {
            self.settings.dead_letter_queue = Some(name.to_owned());
            self
        }

        /// Takes messages only while `guard` returns true — for example "accept uploads only
        /// while the disk is not full". While false, this worker takes nothing and the messages
        /// go to other members of the group. The guard is checked before every message and,
        /// while paused, every 50 ms.
        pub fn active_when<G: Fn() -> bool + Send + Sync + 'static>(mut self, guard: G) -> Self {
            self.settings.active_when = Some(std::sync::Arc::new(guard));
            self
        }
    };
}
pub(crate) use settings_methods;

impl<E: Payload> SubscribeBuilder<E> {
    pub(crate) fn new(bus: &Bus, pattern: &str) -> Self {
        Self {
            bus: bus.clone(),
            settings: Settings::new(pattern),
            _event: PhantomData,
        }
    }

    settings_methods!();

    /// Starts handling events with `handler`. Returns once the broker has set up the
    /// subscription: messages published after that reach it.
    ///
    /// # Examples
    /// ```
    /// # async fn demo(bus: tidings_core::Bus) -> tidings_core::Result<()> {
    /// bus.subscribe::<String>("log.#")
    ///     .handle(|line| async move {
    ///         println!("{line}");
    ///         Ok(())
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn handle<F, Fut>(self, handler: F) -> Result<Subscription>
    where
        F: Fn(E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.handle_message(move |message: Message<E>| handler(message.event))
            .await
    }

    /// Like [`handle`](Self::handle), with the routing key, emitter, headers and attempt.
    pub async fn handle_message<F, Fut>(self, handler: F) -> Result<Subscription>
    where
        F: Fn(Message<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let typed = move |envelope: Arc<Envelope>| {
            let started = decode::<E>(&envelope).map(|event| handler(Message { event, envelope }));
            async move {
                match started {
                    Err(reason) => Err(Failure::Poison(reason)),
                    Ok(running) => running.await.map_err(|e| Failure::Handler(e.to_string())),
                }
            }
        };
        start(&self.bus, self.settings, typed).await
    }
}

/// Decodes a payload, or says why it cannot be.
pub(crate) fn decode<E: Payload>(envelope: &Envelope) -> std::result::Result<E, String> {
    let expected = E::expected_event();
    if !expected.is_empty() && !envelope.event.is_empty() && envelope.event != expected {
        return Err(format!(
            "expected event {expected:?} but the message carries {:?}",
            envelope.event
        ));
    }
    E::from_envelope(envelope).map_err(|e| e.to_string())
}

/// A running subscription. Dropping it leaves it running until the bus shuts down; call
/// [`unsubscribe`](Self::unsubscribe) to stop it earlier.
#[derive(Debug)]
pub struct Subscription {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    /// Stops taking messages, waits for in-flight handlers, and closes the subscription.
    /// Prefetched messages not yet started go back to the broker.
    pub async fn unsubscribe(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Validates settings, opens the subscription with the driver and spawns its loop.
pub(crate) async fn start<H: Handler>(
    bus: &Bus,
    settings: Settings,
    handler: H,
) -> Result<Subscription> {
    if bus.is_stopping() {
        return Err(Error::new(
            ErrorKind::Closed,
            "the bus is shutting down; cannot subscribe",
        ));
    }
    let pattern = Pattern::new(&settings.pattern)?;
    let from = settings.from.as_deref().map(Pattern::new).transpose()?;
    let mode = match &settings.group {
        Some(name) => {
            check_name("group", name)?;
            Mode::Group {
                name: name.clone(),
                durable: settings.durable,
            }
        }
        None => Mode::Broadcast,
    };
    let dead_letter_queue = settings
        .dead_letter_queue
        .clone()
        .or_else(|| settings.group.clone())
        .unwrap_or_else(|| "broadcast".to_owned());
    check_name("dead-letter queue", &dead_letter_queue)?;
    let prefetch = settings
        .prefetch
        .unwrap_or(32)
        .max(settings.concurrency.min(u16::MAX as usize) as u16);
    let spec = SubscribeSpec::new(pattern, mode, prefetch, dead_letter_queue);
    let active = settings.active_when.clone();
    let first = if active.as_ref().is_none_or(|guard| guard()) {
        Some(bus.shared.provider.subscribe(spec.clone()).await?)
    } else {
        None
    };
    let stop = bus.shared.stopping.child_token();
    let worker = Worker {
        bus: bus.clone(),
        spec,
        handler,
        from,
        settings,
        stop: stop.clone(),
    };
    // Tracked, so shutdown waits for the loop and its in-flight handlers.
    let task = bus.shared.tasks.spawn(worker.run(first));
    Ok(Subscription { stop, task })
}

pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    RoutingKey::validate(name).map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("{what} name: {}", e.message()),
        )
    })
}

struct Worker<H> {
    bus: Bus,
    spec: SubscribeSpec,
    handler: H,
    from: Option<Pattern>,
    settings: Settings,
    stop: CancellationToken,
}

impl<H: Handler> Worker<H> {
    fn is_active(&self) -> bool {
        self.settings
            .active_when
            .as_ref()
            .is_none_or(|guard| guard())
    }

    async fn run(self, mut consumer: Option<Box<dyn Consumer>>) {
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

    async fn process(&self, delivery: Delivery) {
        let (mut envelope, settle) = delivery.into_parts();
        for interceptor in self.bus.interceptors.iter() {
            interceptor.on_receive(Arc::make_mut(&mut envelope));
        }
        if let Some(from) = &self.from {
            if !from.matches(&envelope.emitter) {
                let _ = settle.settle(Outcome::Ack).await;
                return;
            }
        }
        let attempt = envelope.attempt;
        let result = AssertUnwindSafe(self.handler.call(envelope))
            .catch_unwind()
            .await;
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(failure)) => Some(failure),
            Err(panic) => Some(Failure::Handler(format!(
                "handler panicked: {}",
                panic_text(&panic)
            ))),
        };
        let outcome = match failure {
            None => Outcome::Ack,
            Some(Failure::Poison(reason)) => Outcome::DeadLetter { reason },
            Some(Failure::Handler(error)) if attempt < self.settings.max_attempts => {
                tracing::debug!(attempt, %error, "handler failed; retrying");
                if !self.settings.retry_delay.is_zero() {
                    tokio::time::sleep(self.settings.retry_delay).await;
                }
                Outcome::Retry
            }
            Some(Failure::Handler(error)) => {
                let reason = format!(
                    "handler failed on attempt {attempt} of {}: {error}",
                    self.settings.max_attempts
                );
                tracing::warn!(pattern = %self.spec.pattern, %reason, "dead-lettering");
                Outcome::DeadLetter { reason }
            }
        };
        if let Err(e) = settle.settle(outcome).await {
            tracing::warn!(error = %e, "could not settle a delivery; the broker will redeliver it");
        }
    }
}

pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

impl Bus {
    /// Subscribes to events whose routing key matches `pattern` (`*` one word, `#` zero or
    /// more). By default every subscription gets every matching event (broadcast); call
    /// [`group`](SubscribeBuilder::group) to share the work between competing consumers.
    pub fn subscribe<E: Payload>(&self, pattern: &str) -> SubscribeBuilder<E> {
        SubscribeBuilder::new(self, pattern)
    }
}
