//! The [`Bus`]: what applications hold.

use std::fmt;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::Codec;
use crate::driver::{Capabilities, Completion, Provider, PublishOptions, Status};
use crate::envelope::{headers, Envelope};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::interceptor::Interceptor;
use crate::layer::{Intercepting, Kind, Layer};
use crate::routing::RoutingKey;

/// A connection to the event bus. Cheap to clone; clones share the connection.
///
/// A bus publishes ([`emit`](Self::emit), [`cast`](Self::cast), [`call`](Self::call)),
/// subscribes ([`subscribe`](Self::subscribe), [`serve`](Self::serve)) and shuts down gracefully
/// ([`shutdown`](Self::shutdown), [`run_until_signal`](Self::run_until_signal)). Settings such as
/// identity, codec and layers are per handle: `as_participant`, `with_codec`, `with_layer` and
/// `with_interceptor` return a new handle on the same connection.
#[derive(Clone)]
pub struct Bus {
    pub(crate) shared: Arc<Shared>,
    pub(crate) identity: Arc<str>,
    pub(crate) codec: Codec,
    /// Middleware around everything this handle sends and handles; the first is outermost.
    pub(crate) layers: Arc<[Arc<dyn Layer>]>,
}

pub(crate) struct Shared {
    pub(crate) provider: Arc<dyn Provider>,
    /// Cancelled when shutdown begins: subscriptions stop taking messages.
    pub(crate) stopping: CancellationToken,
    /// Every subscription loop, so shutdown can wait for in-flight handlers.
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown_timeout: std::sync::Mutex<Duration>,
}

impl Bus {
    /// A bus over `provider`. Applications normally call `tidings::connect(url)` instead.
    pub fn new(provider: Arc<dyn Provider>) -> Self {
        Self {
            shared: Arc::new(Shared {
                provider,
                stopping: CancellationToken::new(),
                tasks: TaskTracker::new(),
                shutdown_timeout: std::sync::Mutex::new(Duration::from_secs(30)),
            }),
            identity: default_identity().into(),
            codec: Codec::default(),
            layers: Arc::from(Vec::new()),
        }
    }

    /// This handle, emitting as participant `<this host>.<kind>.<id>` — for example a
    /// `worker_daemon` number `1`. Receivers see the identity and can filter on it.
    ///
    /// Panics if `kind` or `id` is not a single routing-key word; use
    /// [`with_identity`](Self::with_identity) to handle that as an error.
    #[must_use]
    #[track_caller]
    pub fn as_participant(&self, kind: &str, id: &str) -> Self {
        let identity = format!("{}.{kind}.{id}", host_word());
        match self.with_identity(&identity) {
            Ok(bus) => bus,
            Err(e) => panic!("as_participant({kind:?}, {id:?}): {e}"),
        }
    }

    /// This handle, emitting as `identity`, which must be three words: `host.kind.id`.
    pub fn with_identity(&self, identity: &str) -> Result<Self> {
        let key = RoutingKey::new(identity).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("identity: {}", e.message()),
            )
        })?;
        if key.words().count() != 3 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("identity {identity:?} must have three words: host.kind.id"),
            ));
        }
        Ok(Self {
            identity: identity.into(),
            ..self.clone()
        })
    }

    /// This handle's identity, `host.kind.id`.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// This handle, encoding what it sends with `codec`. Receivers decode by the content type
    /// each message carries, whatever their own codec.
    #[must_use]
    pub fn with_codec(&self, codec: Codec) -> Self {
        Self {
            codec,
            ..self.clone()
        }
    }

    /// This handle, with the middleware `layer` added inside the existing ones (the first
    /// layer added is the outermost). Messages sent through the returned handle pass through
    /// it on their way out; subscriptions and servers made from it, and replies to its calls,
    /// pass through it on their way in. See [`layer`](crate::layer).
    ///
    /// # Examples
    /// ```
    /// use tidings_core::layer::{self, BoxFuture, Layer, Next, Outgoing};
    ///
    /// /// Refuses to send anything without a tenant header.
    /// struct RequireTenant;
    ///
    /// impl Layer for RequireTenant {
    ///     fn send<'a>(&'a self, m: Outgoing, next: Next<'a, Outgoing>) -> BoxFuture<'a, tidings_core::Result<()>> {
    ///         if m.envelope.headers.contains_key("tenant") {
    ///             next.run(m)
    ///         } else {
    ///             Box::pin(async { Err(layer::stop("no tenant header")) })
    ///         }
    ///     }
    /// }
    /// # async fn demo(bus: tidings_core::Bus) {
    /// let strict = bus.with_layer(RequireTenant);
    /// # let _ = strict; }
    /// ```
    #[must_use]
    pub fn with_layer(&self, layer: impl Layer) -> Self {
        let mut all: Vec<_> = self.layers.iter().cloned().collect();
        all.push(Arc::new(layer));
        Self {
            layers: all.into(),
            ..self.clone()
        }
    }

    /// This handle, with `interceptor` added as a layer inside the existing ones: it reads and
    /// sets headers of what the returned handle sends, and of what its subscriptions, servers
    /// and calls receive.
    #[must_use]
    pub fn with_interceptor(&self, interceptor: impl Interceptor) -> Self {
        self.with_layer(Intercepting(interceptor))
    }

    /// How long [`shutdown`](Self::shutdown) waits for in-flight handlers (default 30 s).
    pub fn set_shutdown_timeout(&self, timeout: Duration) {
        *self.shared.shutdown_timeout.lock().expect("poisoned") = timeout;
    }

    /// What the connected driver and broker support.
    pub fn capabilities(&self) -> Capabilities {
        self.shared.provider.capabilities()
    }

    /// Connection status; changes as the driver loses and regains its broker.
    pub fn status(&self) -> tokio::sync::watch::Receiver<Status> {
        self.shared.provider.status()
    }

    /// The driver under this bus, for tools that work at the transport level.
    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.shared.provider
    }

    /// Publishes `event` under `key` to every matching subscription. Await the returned
    /// builder; it resolves once the broker has accepted the message.
    ///
    /// # Examples
    /// ```
    /// # async fn demo(bus: tidings_core::Bus) -> tidings_core::Result<()> {
    /// bus.emit("orders.created", &"order 42".to_string())
    ///     .header("tenant", "acme")
    ///     .ttl(std::time::Duration::from_secs(60))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn emit<'a, E: Event>(&'a self, key: &'a str, event: &'a E) -> Emit<'a, E> {
        Emit {
            bus: self,
            key,
            event,
            headers: Vec::new(),
            ttl: None,
            mandatory: false,
        }
    }

    /// Sends `event` to the service `key` fire-and-forget: one server of the group
    /// [`serve`](Self::serve) makes (or one worker of each group subscribed to `key`) handles
    /// it, and — as with every publish — each broadcast subscription whose pattern matches
    /// gets its own copy. Fails with [`ErrorKind::NoResponders`] when the broker can tell
    /// nobody takes it.
    pub async fn cast<E: Event>(&self, key: &str, event: &E) -> Result<()> {
        let envelope = self.envelope(key, event)?;
        self.send(envelope, Kind::Cast, &PublishOptions::MANDATORY, None)
            .await
    }

    /// Builds an envelope for `event` under `key`, as this handle would send it, interceptors
    /// not yet applied.
    pub(crate) fn envelope<E: Event>(&self, key: &str, event: &E) -> Result<Envelope> {
        RoutingKey::validate(key)?;
        let body = self.codec.encode(event)?;
        let mut envelope = Envelope::new(key, self.codec.content_type(), body);
        envelope.event = E::NAME.into();
        envelope.emitter = String::from(&*self.identity);
        Ok(envelope)
    }

    /// Publishes a ready-made envelope (for tools that relay or replay messages) as an event.
    /// The routing key is validated and the layers run.
    pub async fn publish_envelope(
        &self,
        envelope: Envelope,
        options: &PublishOptions,
    ) -> Result<()> {
        RoutingKey::validate(&envelope.routing_key)?;
        self.send(envelope, Kind::Event, options, None).await
    }

    /// Stops taking new messages, waits for in-flight handlers (they settle their messages) up
    /// to the shutdown timeout, then closes the connection. Messages prefetched but not started
    /// go back to the broker for other workers. Safe to call more than once.
    pub async fn shutdown(&self) -> Result<()> {
        self.shared.stopping.cancel();
        self.shared.tasks.close();
        let timeout = *self.shared.shutdown_timeout.lock().expect("poisoned");
        if tokio::time::timeout(timeout, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?timeout,
                running = self.shared.tasks.len(),
                "shutdown: handlers still running after the timeout; closing anyway, \
                 their messages will be redelivered"
            );
        }
        self.shared.provider.close().await
    }

    /// Runs until SIGTERM or Ctrl-C (or until another task calls [`shutdown`](Self::shutdown)),
    /// then shuts down gracefully.
    pub async fn run_until_signal(&self) -> Result<()> {
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("signal received, shutting down"),
            _ = self.shared.stopping.cancelled() => {}
        }
        self.shutdown().await
    }

    /// Drops the connection at once, as a crashed process would: running handlers are
    /// abandoned and every unsettled message is redelivered to other consumers.
    pub async fn abort(&self) {
        self.shared.stopping.cancel();
        self.shared.provider.abort().await;
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.is_cancelled()
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("provider", &self.shared.provider)
            .field("identity", &self.identity)
            .field("codec", &self.codec)
            .field("layers", &self.layers.len())
            .finish()
    }
}

/// A publish being prepared; await it to send. Made by [`Bus::emit`].
#[must_use = "an emit does nothing until awaited"]
pub struct Emit<'a, E> {
    bus: &'a Bus,
    key: &'a str,
    event: &'a E,
    headers: Vec<(String, String)>,
    ttl: Option<Duration>,
    mandatory: bool,
}

impl<E> fmt::Debug for Emit<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emit")
            .field("key", &self.key)
            .field("headers", &self.headers)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<'a, E: Event> Emit<'a, E> {
    /// Adds an application header. Names starting with `tidings-` are reserved and rejected.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Expires the message if no consumer took it within `ttl`.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Fails with [`ErrorKind::NoResponders`] if no subscription takes the message.
    pub fn mandatory(mut self) -> Self {
        self.mandatory = true;
        self
    }

    /// Builds the envelope now; what remains to await is the send path alone (without layers,
    /// the driver's publish: one future, no extra allocation per emit).
    fn prepare(self) -> Result<(Envelope, &'static PublishOptions)> {
        let mut envelope = self.bus.envelope(self.key, self.event)?;
        for (name, value) in self.headers {
            headers::check_user_name(&name)?;
            envelope.headers.insert(name, value);
        }
        envelope.ttl = self.ttl;
        let options = if self.mandatory {
            &PublishOptions::MANDATORY
        } else {
            &PublishOptions::DEFAULT
        };
        Ok((envelope, options))
    }
}

impl<'a, E: Event> IntoFuture for Emit<'a, E> {
    type Output = Result<()>;
    type IntoFuture = Completion<'a, Result<()>>;

    fn into_future(self) -> Self::IntoFuture {
        let bus = self.bus;
        match self.prepare() {
            Ok((envelope, options)) => bus.send(envelope, Kind::Event, options, None),
            Err(e) => Completion::ready(Err(e)),
        }
    }
}

/// This host's name as one routing-key word.
fn host_word() -> String {
    let raw = gethostname::gethostname().to_string_lossy().into_owned();
    let word: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if word.is_empty() {
        "localhost".into()
    } else {
        word
    }
}

fn default_identity() -> String {
    format!("{}.process.{}", host_word(), std::process::id())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
