//! Subscriptions: the builder, the running [`Subscription`], and the bus method that makes
//! them. The per-delivery work is the `worker`'s; the settings are shared with RPC servers.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::driver::{Mode, SubscribeSpec};
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::layer::Kind;
use crate::message::{decode, HandlerResult, Message, Payload};
use crate::routing::{Pattern, RoutingKey};

mod declare;
pub(crate) mod handler;
pub(crate) mod settings;
mod worker;

use handler::{Done, Failure, Handler};
pub(crate) use settings::{settings_methods, Settings};
use worker::Worker;

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
        self.handle_message(move |message: Message<E>| handler(message.into_event()))
            .await
    }

    /// Like [`handle`](Self::handle), with the routing key, emitter, headers and attempt.
    pub async fn handle_message<F, Fut>(self, handler: F) -> Result<Subscription>
    where
        F: Fn(Message<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let typed = move |envelope: Arc<Envelope>| {
            let started =
                decode::<E>(&envelope).map(|event| handler(Message::new(event, envelope)));
            async move {
                match started {
                    Err(reason) => Err(Failure::Poison(reason)),
                    Ok(running) => running
                        .await
                        .map(|()| Done::default())
                        .map_err(|e| Failure::Handler(e.to_string())),
                }
            }
        };
        start(&self.bus, self.settings, Kind::Event, typed).await
    }
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
    kind: Kind,
    handler: H,
) -> Result<Subscription> {
    if bus.is_stopping() {
        return Err(Error::new(
            ErrorKind::Closed,
            "the bus is shutting down; cannot subscribe",
        ));
    }
    let (spec, from) = spec_of(&settings)?;
    let active = settings.active_when.clone();
    let first = if active.as_ref().is_none_or(|guard| guard()) {
        Some(bus.shared.provider.subscribe(spec.clone()).await?)
    } else {
        None
    };
    let stop = bus.shared.stopping.child_token();
    let worker = Worker {
        bus: bus.clone(),
        kind,
        subscription: Arc::from(settings.pattern.as_str()),
        group: settings.group.as_deref().map(Arc::from),
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

/// What the driver is asked for by `settings`, and the emitter filter; validates both.
pub(crate) fn spec_of(settings: &Settings) -> Result<(SubscribeSpec, Option<Pattern>)> {
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
    Ok((
        SubscribeSpec::new(pattern, mode, prefetch, dead_letter_queue),
        from,
    ))
}

pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    RoutingKey::validate(name).map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("{what} name: {}", e.message()),
        )
    })
}

impl Bus {
    /// Subscribes to events whose routing key matches `pattern` (`*` one word, `#` zero or
    /// more). By default every subscription gets every matching event (broadcast); call
    /// [`group`](SubscribeBuilder::group) to share the work between competing consumers.
    pub fn subscribe<E: Payload>(&self, pattern: &str) -> SubscribeBuilder<E> {
        SubscribeBuilder::new(self, pattern)
    }
}
