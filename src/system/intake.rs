//! What a component takes from the bus — a worker queue, a fanout, an RPC service or a
//! broadcast subscription — with its settings, and how they are applied to the bus's
//! subscription and server builders.

use std::time::Duration;

use tidings_core::{Bus, Event, Payload, Serve, SubscribeBuilder};

/// The settings both builders share (they have the same methods, from one macro in core).
macro_rules! apply_settings {
    ($intake:expr, $builder:expr) => {{
        let intake = $intake;
        let mut b = $builder;
        if let Some(prefetch) = intake.prefetch {
            b = b.prefetch(prefetch);
        }
        if let Some(concurrency) = intake.concurrency {
            b = b.concurrency(concurrency);
        }
        if let Some(attempts) = intake.max_attempts {
            b = b.max_attempts(attempts);
        }
        if let Some(delay) = intake.retry_delay {
            b = b.retry_delay(delay);
        }
        if let Some(queue) = &intake.dead_letter_queue {
            b = b.dead_letter_queue(queue);
        }
        b
    }};
}

/// How an intake shares events between a component's replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum IntakeKind {
    /// `[[component.worker]]`: a durable group; each event goes to one replica.
    Worker,
    /// `[[component.fanout]]`: one durable group per replica (`<group>.<replica>`); every
    /// replica gets every event, including those sent while it was down.
    Fanout,
    /// `[[component.service]]`: an RPC service; the group and the pattern are its name.
    Service,
    /// `[[component.subscribe]]`: a broadcast subscription; every process gets every event
    /// sent while it runs, and nothing is kept for it.
    Subscribe,
}

impl IntakeKind {
    /// The table's name in the file: `worker`, `fanout`, `service`, `subscribe`.
    pub fn table(self) -> &'static str {
        match self {
            Self::Worker => "worker",
            Self::Fanout => "fanout",
            Self::Service => "service",
            Self::Subscribe => "subscribe",
        }
    }

    /// Whether the broker keeps its events while no consumer runs (worker, fanout, service):
    /// these are what `tidings topology apply` declares.
    pub fn is_durable(self) -> bool {
        !matches!(self, Self::Subscribe)
    }
}

/// One thing a component takes from the bus, and the settings of its subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Intake {
    /// Worker, fanout, service or broadcast subscription.
    pub kind: IntakeKind,
    /// The routing patterns it is bound with (a service: its name).
    pub patterns: Vec<String>,
    /// The group: a worker's (default: the component's name), a service's name, a fanout's
    /// base name (its replicas' groups are `<group>.<replica>`, see
    /// [`for_replica`](Self::for_replica)); `None` for a broadcast subscription.
    pub group: Option<String>,
    /// Where events that fail for good go (default: the group, or `broadcast`).
    pub dead_letter_queue: Option<String>,
    /// How many events the broker may hand a consumer before it settles any.
    pub prefetch: Option<u16>,
    /// How many events a consumer handles at once.
    pub concurrency: Option<usize>,
    /// How many times an event is tried before it is dead-lettered.
    pub max_attempts: Option<u32>,
    /// How long to wait before a failed event is retried.
    pub retry_delay: Option<Duration>,
    /// How long an event for it may wait: for senders, which set it as the event's TTL (see
    /// [`System::ttl_for`](super::System::ttl_for)). tidings' TTLs are per message; queues
    /// carry no TTL argument.
    pub ttl: Option<Duration>,
}

impl Intake {
    /// This intake as replica `replica` takes it: a fanout's group becomes
    /// `<group>.<replica>` (and so does its default dead-letter queue); others are unchanged.
    pub fn for_replica(&self, replica: u32) -> Intake {
        let mut intake = self.clone();
        if self.kind == IntakeKind::Fanout {
            intake.group = self.group.as_ref().map(|g| format!("{g}.{replica}"));
        }
        intake
    }

    /// The RPC name of a service; `None` for other kinds.
    pub fn service_name(&self) -> Option<&str> {
        match self.kind {
            IntakeKind::Service => self.group.as_deref(),
            _ => None,
        }
    }

    /// The dead-letter queue its subscriptions use: the configured one, else the group, else
    /// `broadcast` (the bus's own default).
    pub fn dead_letter_queue(&self) -> &str {
        self.dead_letter_queue
            .as_deref()
            .or(self.group.as_deref())
            .unwrap_or("broadcast")
    }

    /// `builder` with this intake's group and settings. Call it on a builder of one of
    /// [`patterns`](Self::patterns); [`subscribe`](Self::subscribe) makes them all.
    ///
    /// # Examples
    /// ```
    /// # async fn demo(bus: tidings::Bus, intake: tidings::system::Intake) -> tidings::Result<()> {
    /// let builder = bus.subscribe::<String>(&intake.patterns[0]);
    /// intake.configure(builder).handle(|job| async move { Ok(()) }).await?;
    /// # Ok(()) }
    /// ```
    pub fn configure<E: Payload>(&self, builder: SubscribeBuilder<E>) -> SubscribeBuilder<E> {
        let builder = match &self.group {
            Some(group) => builder.group(group),
            None => builder,
        };
        apply_settings!(self, builder)
    }

    /// `server` with this intake's settings (its group is already the service's name).
    ///
    /// # Examples
    /// ```
    /// # async fn demo(bus: tidings::Bus, stats: tidings::system::Intake) -> tidings::Result<()> {
    /// let name = stats.service_name().expect("a service");
    /// let server = bus.serve(name, |n: u64| async move { Ok(n * 2) });
    /// stats.configure_serve(server).await?;
    /// # Ok(()) }
    /// ```
    pub fn configure_serve<Req: Event, Resp: Event>(
        &self,
        server: Serve<Req, Resp>,
    ) -> Serve<Req, Resp> {
        apply_settings!(self, server)
    }

    /// One configured builder per pattern: attach a handler to each. For a service this is
    /// the group `name` on the pattern `name`, what [`Bus::serve`] subscribes to.
    ///
    /// # Examples
    /// ```
    /// # async fn demo(bus: tidings::Bus, fetch: tidings::system::Intake) -> tidings::Result<()> {
    /// for builder in fetch.subscribe::<String>(&bus) {
    ///     builder.handle(|url| async move { println!("fetch {url}"); Ok(()) }).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn subscribe<E: Payload>(&self, bus: &Bus) -> Vec<SubscribeBuilder<E>> {
        self.patterns
            .iter()
            .map(|pattern| self.configure(bus.subscribe::<E>(pattern)))
            .collect()
    }
}
