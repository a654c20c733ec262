//! Metrics (feature `metrics`): what a bus publishes and handles, counted and timed through the
//! [`metrics`](https://docs.rs/metrics) facade.
//!
//! `metrics` is a facade, as `log` and `tracing` are: the library only calls its macros, and
//! the application installs the recorder it wants — `metrics-exporter-prometheus` for a
//! `/metrics` endpoint, an OTLP or StatsD exporter, or `metrics-util`'s debugging recorder in
//! tests. Without a recorder each metric is a no-op. See `examples/metrics_prometheus.rs`.
//!
//! # Metrics
//! Names are Prometheus-style, as [`names`] lists them; every metric has the label `system`
//! (`rabbitmq`, `activemq`, `tidings-memory`, …).
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `tidings_messages_published_total` | counter | `kind`, `destination`, `outcome` | messages sent: `outcome` is `ok`, `error` or `unconfirmed` (the send was dropped before the broker confirmed it — for a call, because its reply came first) |
//! | `tidings_messages_handled_total` | counter | `kind`, `subscription`, `group`, `outcome` | deliveries handled, by how they were settled: `ack`, `retry`, `requeue`, `dead_letter` |
//! | `tidings_messages_retried_total` | counter | `kind`, `subscription`, `group` | deliveries given back for another attempt |
//! | `tidings_messages_dead_lettered_total` | counter | `kind`, `subscription`, `group` | deliveries moved to the dead-letter queue |
//! | `tidings_handler_duration_seconds` | histogram | `kind`, `subscription`, `outcome` | how long handlers ran |
//! | `tidings_deliveries_in_flight` | gauge | `subscription` | deliveries being handled now |
//! | `tidings_calls_total` | counter | `service`, `outcome` | RPC calls made: `ok`, `error` (a remote error, an undecodable reply, or a request that could not be sent) or `timeout` |
//! | `tidings_call_duration_seconds` | histogram | `service`, `outcome` | from sending a request to taking in its reply (calls that got one, or whose request failed) |
//! | `tidings_connection_status_changes_total` | counter | `status` | connection status changes, once [`watch_status`] runs |
//! | `tidings_connection_up` | gauge | | 1 while connected, once [`watch_status`] runs |
//!
//! `kind` is `event`, `cast`, `request`, `reply` or `replay`; `destination` is the routing key
//! (for a reply, the called service), cut to its first words with
//! [`MetricsLayer::destination_words`] when keys carry ids; `subscription` is the pattern or
//! the service name, and `group` the group (empty for broadcast subscriptions).
//!
//! A call that times out is counted as `timeout` soon after its timeout, by a later call (a
//! layer sees no event at a timeout).

use std::fmt;
use std::sync::Arc;

use ::metrics::{counter, gauge, histogram, Gauge};

use super::pending::{Entry, Pending};
use super::{kind_name, outcome_name};
use crate::bus::Bus;
use crate::driver::{Outcome, Status};
use crate::error::Result;
use crate::layer::{BoxFuture, Handled, Incoming, Kind, Layer, Next, Outgoing};

/// The names of the metrics [`MetricsLayer`] records.
pub mod names {
    /// Counter: messages sent.
    pub const PUBLISHED: &str = "tidings_messages_published_total";
    /// Counter: deliveries handled, by outcome.
    pub const HANDLED: &str = "tidings_messages_handled_total";
    /// Counter: deliveries given back for another attempt.
    pub const RETRIED: &str = "tidings_messages_retried_total";
    /// Counter: deliveries dead-lettered.
    pub const DEAD_LETTERED: &str = "tidings_messages_dead_lettered_total";
    /// Histogram, seconds: how long handlers ran.
    pub const HANDLER_DURATION: &str = "tidings_handler_duration_seconds";
    /// Gauge: deliveries being handled now.
    pub const IN_FLIGHT: &str = "tidings_deliveries_in_flight";
    /// Counter: RPC calls, by outcome.
    pub const CALLS: &str = "tidings_calls_total";
    /// Histogram, seconds: RPC call latency.
    pub const CALL_DURATION: &str = "tidings_call_duration_seconds";
    /// Counter: connection status changes.
    pub const STATUS_CHANGES: &str = "tidings_connection_status_changes_total";
    /// Gauge: 1 while connected.
    pub const CONNECTION_UP: &str = "tidings_connection_up";
}

/// A layer that records metrics for every message it sees; see the [module docs](self).
///
/// Clones share the calls in flight, so one layer may be added to several handles.
///
/// # Examples
/// ```
/// # async fn demo(bus: tidings_core::Bus) -> tidings_core::Result<()> {
/// use tidings_core::observe::MetricsLayer;
///
/// let bus = bus.with_layer(MetricsLayer::new());
/// bus.emit("orders.created", &42u32).await?; // tidings_messages_published_total + 1
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MetricsLayer {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Calls waiting for their replies: the `system` and `service` labels.
    calls: Pending<(&'static str, String)>,
    /// How many words of a routing key the `destination` label keeps.
    destination_words: Option<usize>,
}

impl MetricsLayer {
    /// A metrics layer.
    ///
    /// # Examples
    /// ```
    /// # fn demo(bus: tidings_core::Bus) {
    /// let bus = bus.with_layer(tidings_core::observe::MetricsLayer::new());
    /// # let _ = bus; }
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// This layer, keeping only the first `words` words of a routing key in the `destination`
    /// label (the rest becomes `#`), for keys that carry ids: one time series per kind of
    /// message rather than per message.
    ///
    /// # Examples
    /// ```
    /// use tidings_core::observe::MetricsLayer;
    /// // log.host1.worker_daemon.1.error is counted as log.host1.#
    /// let layer = MetricsLayer::new().destination_words(2);
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn destination_words(self, words: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                calls: Pending::default(),
                destination_words: Some(words),
            }),
        }
    }

    /// The `destination` label of `key`.
    fn destination(&self, key: &str) -> String {
        match self.inner.destination_words {
            Some(words) if key.split('.').count() > words => {
                let kept: Vec<&str> = key.split('.').take(words).collect();
                if kept.is_empty() {
                    "#".into()
                } else {
                    format!("{}.#", kept.join("."))
                }
            }
            _ => key.to_owned(),
        }
    }
}

impl fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("destination_words", &self.inner.destination_words)
            .finish_non_exhaustive()
    }
}

/// Counts a send when it is done, or dropped before that.
struct Published {
    system: &'static str,
    kind: &'static str,
    destination: String,
    outcome: &'static str,
}

impl Drop for Published {
    fn drop(&mut self) {
        counter!(
            names::PUBLISHED,
            "system" => self.system,
            "kind" => self.kind,
            "destination" => std::mem::take(&mut self.destination),
            "outcome" => self.outcome,
        )
        .increment(1);
    }
}

/// Holds one place in the in-flight gauge.
struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Records a finished call.
fn call_done(
    system: &'static str,
    service: String,
    outcome: &'static str,
    entry_started: Option<std::time::Instant>,
) {
    if let Some(started) = entry_started {
        histogram!(
            names::CALL_DURATION,
            "system" => system,
            "service" => service.clone(),
            "outcome" => outcome,
        )
        .record(started.elapsed().as_secs_f64());
    }
    counter!(
        names::CALLS,
        "system" => system,
        "service" => service,
        "outcome" => outcome,
    )
    .increment(1);
}

/// Records a call whose reply never came.
fn timed_out(entry: Entry<(&'static str, String)>) {
    let (system, service) = entry.value;
    call_done(system, service, "timeout", None);
}

impl Layer for MetricsLayer {
    fn send<'a>(
        &'a self,
        message: Outgoing,
        next: Next<'a, Outgoing>,
    ) -> BoxFuture<'a, Result<()>> {
        let envelope = &message.envelope;
        let published = Published {
            system: message.system,
            kind: kind_name(message.kind),
            destination: self.destination(&envelope.routing_key),
            outcome: "unconfirmed",
        };
        let call = match (message.kind, &envelope.correlation_id) {
            (Kind::Request, Some(id)) => {
                let service = envelope.routing_key.clone();
                let expired =
                    self.inner
                        .calls
                        .insert(id.clone(), envelope.ttl, (message.system, service));
                expired.into_iter().for_each(timed_out);
                Some(id.clone())
            }
            _ => None,
        };
        Box::pin(async move {
            let mut published = published;
            let result = next.run(message).await;
            published.outcome = if result.is_ok() { "ok" } else { "error" };
            if result.is_err() {
                if let Some(entry) = call.and_then(|id| self.inner.calls.take(&id)) {
                    let (system, service) = entry.value;
                    call_done(system, service, "error", Some(entry.started));
                }
            }
            result
        })
    }

    fn receive<'a>(
        &'a self,
        message: Incoming,
        next: Next<'a, Incoming>,
    ) -> BoxFuture<'a, Handled> {
        if message.kind == Kind::Reply {
            let call = message
                .envelope
                .correlation_id
                .as_deref()
                .and_then(|id| self.inner.calls.take(id));
            let Some(call) = call else {
                return next.run(message);
            };
            return Box::pin(async move {
                let handled = next.run(message).await;
                let failed = handled.error.is_some()
                    || matches!(handled.outcome, Outcome::DeadLetter { .. });
                let (system, service) = call.value;
                let outcome = if failed { "error" } else { "ok" };
                call_done(system, service, outcome, Some(call.started));
                handled
            });
        }
        let system = message.system;
        let kind = kind_name(message.kind);
        let subscription = message.subscription.clone();
        let group = message.group.clone();
        let gauge = gauge!(
            names::IN_FLIGHT,
            "system" => system,
            "subscription" => subscription.to_string(),
        );
        gauge.increment(1.0);
        let in_flight = InFlight(gauge);
        Box::pin(async move {
            let handled = next.run(message).await;
            drop(in_flight);
            let outcome = outcome_name(&handled.outcome);
            let group = group.as_deref().unwrap_or("").to_owned();
            let subscription = subscription.to_string();
            counter!(
                names::HANDLED,
                "system" => system,
                "kind" => kind,
                "subscription" => subscription.clone(),
                "group" => group.clone(),
                "outcome" => outcome,
            )
            .increment(1);
            let settled = match handled.outcome {
                Outcome::Retry => Some(names::RETRIED),
                Outcome::DeadLetter { .. } => Some(names::DEAD_LETTERED),
                _ => None,
            };
            if let Some(name) = settled {
                counter!(
                    name,
                    "system" => system,
                    "kind" => kind,
                    "subscription" => subscription.clone(),
                    "group" => group,
                )
                .increment(1);
            }
            if let Some(time) = handled.handler_time {
                histogram!(
                    names::HANDLER_DURATION,
                    "system" => system,
                    "kind" => kind,
                    "subscription" => subscription,
                    "outcome" => outcome,
                )
                .record(time.as_secs_f64());
            }
            handled
        })
    }
}

/// The `status` label of a connection status.
fn status_name(status: &Status) -> &'static str {
    match status {
        Status::Connected { .. } => "connected",
        Status::Reconnecting => "reconnecting",
        Status::Closed => "closed",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// Records `bus`'s connection status (`tidings_connection_up`) and counts its changes
/// (`tidings_connection_status_changes_total`), from a task that ends when the connection
/// closes for good. Call it from within a tokio runtime.
///
/// # Examples
/// ```
/// # async fn demo(bus: tidings_core::Bus) {
/// tidings_core::observe::metrics::watch_status(&bus);
/// # }
/// ```
pub fn watch_status(bus: &Bus) -> tokio::task::JoinHandle<()> {
    let mut status = bus.status();
    let system = bus.provider().system();
    tokio::spawn(async move {
        let up = gauge!(names::CONNECTION_UP, "system" => system);
        let mut current = status.borrow_and_update().clone();
        up.set(if current.is_connected() { 1.0 } else { 0.0 });
        while current != Status::Closed && status.changed().await.is_ok() {
            let now = status.borrow_and_update().clone();
            if now == current {
                continue;
            }
            current = now;
            up.set(if current.is_connected() { 1.0 } else { 0.0 });
            counter!(
                names::STATUS_CHANGES,
                "system" => system,
                "status" => status_name(&current),
            )
            .increment(1);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_label_keeps_the_first_words() {
        let layer = MetricsLayer::new().destination_words(2);
        assert_eq!(
            layer.destination("log.host1.worker_daemon.1.error"),
            "log.host1.#"
        );
        assert_eq!(layer.destination("log.host1"), "log.host1");
        assert_eq!(MetricsLayer::new().destination("a.b.c"), "a.b.c");
        assert_eq!(
            MetricsLayer::new().destination_words(0).destination("a"),
            "#"
        );
    }
}
