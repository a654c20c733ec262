//! Tracing (feature `otel`): a `tracing` span per publish, per handled delivery and per call,
//! following the OpenTelemetry messaging semantic conventions, with the trace context carried in
//! every message as W3C `traceparent` / `tracestate` headers.
//!
//! # Spans
//! | what | span name (`otel.name`) | `otel.kind` | `messaging.operation.type` |
//! |---|---|---|---|
//! | [`emit`](crate::Bus::emit), [`publish_envelope`](crate::Bus::publish_envelope) | `publish <routing key>` | producer | `send` |
//! | [`cast`](crate::Bus::cast) | `send <routing key>` | producer | `send` |
//! | [`call`](crate::Bus::call), from the request until its reply is taken in | `call <service>` | client | `send` |
//! | an RPC server's reply | `reply <service>` | producer | `send` |
//! | [`DeadLetter::replay`](crate::DeadLetter::replay) | `replay <routing key>` | producer | `send` |
//! | a delivery handled by a subscription | `process <pattern>` | consumer | `process` |
//! | a request handled by an RPC server | `process <service>` | server (consumer for a cast) | `process` |
//!
//! Each span carries `messaging.system`, `messaging.operation.name`,
//! `messaging.destination.name` (the routing key; for a reply, the caller's inbox, with
//! `messaging.destination.temporary`), `messaging.message.id`,
//! `messaging.message.conversation_id` (the correlation id of requests and replies),
//! `messaging.message.body.size`, `messaging.rabbitmq.destination.routing_key` on RabbitMQ, and
//! `messaging.tidings.kind` / `messaging.tidings.emitter`. A process span adds
//! `messaging.destination.subscription.name` (the pattern or service),
//! `messaging.consumer.group.name`, `messaging.tidings.attempt` (1 on first delivery),
//! `messaging.tidings.outcome` (`ack`, `retry`, `requeue`, `dead_letter`) and
//! `messaging.tidings.replied`. A failure sets `error.type` and the span's status to error with
//! the error text.
//!
//! # Parents
//! - A send span's parent is the current span: a publish made inside a handler is a child of
//!   that handler's process span, and a call made inside an application's span is its child.
//! - The send span's context goes into the message as `traceparent` (and `tracestate` when not
//!   empty), replacing any the message had; see `docs/wire-format.md`.
//! - A process span's parent is the context in the message's `traceparent`, when it has a valid
//!   one (otherwise the current span, usually none: a new trace). The handler runs inside the
//!   process span, so its own spans and logs are children of it. Each attempt of a retried
//!   delivery is its own process span with the same parent.
//! - A call's span stays open until its reply comes back through the layer (the reply's
//!   handling runs inside it); one whose reply never comes is closed as timed out, soon after
//!   its timeout, by a later call.
//!
//! Spans are made at `INFO` level with the target `tidings`; where no subscriber wants them,
//! the layer costs a boxed future per message and no header is written. The trace context is
//! read from the span through `tracing-opentelemetry`, so the subscriber needs its
//! `OpenTelemetryLayer` for headers to be written and parents to be set.
//!
//! # Examples
//! ```
//! use opentelemetry::trace::TracerProvider as _;
//! use tracing_subscriber::layer::SubscriberExt;
//! use tidings_core::observe::TracingLayer;
//!
//! # fn demo(bus: tidings_core::Bus, provider: opentelemetry::trace::noop::NoopTracerProvider) {
//! // `provider`: any OpenTelemetry tracer provider, e.g. opentelemetry_sdk's with an OTLP exporter.
//! let subscriber = tracing_subscriber::registry()
//!     .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("my-daemon")));
//! tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
//! let bus = bus.with_layer(TracingLayer::new());
//! # let _ = bus; }
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use ::tracing::field::Empty;
use ::tracing::{Instrument, Span};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::pending::{Entry, Pending};
use super::{kind_name, outcome_name};
use crate::driver::Outcome;
use crate::envelope::{headers, Envelope};
use crate::error::Result;
use crate::layer::{BoxFuture, Handled, Incoming, Kind, Layer, Next, Outgoing};

/// The header that carries the W3C trace context (`00-<trace id>-<span id>-<flags>`).
pub const TRACEPARENT: &str = "traceparent";
/// The header that carries the W3C vendor trace state, when there is one.
pub const TRACESTATE: &str = "tracestate";

/// The target of the spans this layer makes, for filters (`RUST_LOG=tidings=info`).
pub const TARGET: &str = "tidings";

/// A layer that traces every message it sees; see the [module docs](self).
///
/// Clones share the calls in flight, so one layer may be added to several handles.
///
/// # Examples
/// ```
/// # async fn demo(bus: tidings_core::Bus) -> tidings_core::Result<()> {
/// use tidings_core::observe::TracingLayer;
///
/// let traced = bus.with_layer(TracingLayer::new());
/// traced.emit("orders.created", &42u32).await?; // a `publish orders.created` span
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct TracingLayer {
    /// The spans of calls waiting for their replies, by correlation id.
    calls: Arc<Pending<Span>>,
}

impl TracingLayer {
    /// A tracing layer.
    ///
    /// # Examples
    /// ```
    /// # fn demo(bus: tidings_core::Bus) {
    /// let bus = bus.with_layer(tidings_core::observe::TracingLayer::new());
    /// # let _ = bus; }
    /// ```
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Debug for TracingLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracingLayer").finish_non_exhaustive()
    }
}

impl Layer for TracingLayer {
    fn send<'a>(
        &'a self,
        mut message: Outgoing,
        next: Next<'a, Outgoing>,
    ) -> BoxFuture<'a, Result<()>> {
        let span = send_span(&message);
        if span.is_disabled() {
            return next.run(message);
        }
        inject_span(&span, &mut message.envelope);
        let call = match (message.kind, &message.envelope.correlation_id) {
            (Kind::Request, Some(id)) => {
                let expired = self
                    .calls
                    .insert(id.clone(), message.envelope.ttl, span.clone());
                expired.into_iter().for_each(timed_out);
                Some(id.clone())
            }
            _ => None,
        };
        Box::pin(async move {
            let result = next.run(message).instrument(span.clone()).await;
            if let Err(e) = &result {
                fail(&span, &format!("{:?}", e.kind()), &e.to_string());
                if let Some(id) = call {
                    self.calls.take(&id);
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
                .and_then(|id| self.calls.take(id));
            let Some(call) = call else {
                return next.run(message);
            };
            let remote = message
                .envelope
                .headers
                .get(headers::REPLY_STATUS)
                .map(String::as_str)
                == Some("error");
            return Box::pin(async move {
                let span = call.value;
                let handled = next.run(message).instrument(span.clone()).await;
                match (&handled.outcome, &handled.error) {
                    (Outcome::DeadLetter { reason }, _) => fail(&span, "Stopped", reason),
                    (_, Some(error)) if remote => fail(&span, "Remote", error),
                    (_, Some(error)) => fail(&span, "Decode", error),
                    (_, None) => {}
                }
                handled
            });
        }
        let span = process_span(&message);
        if span.is_disabled() {
            return next.run(message);
        }
        if let Some(parent) = extract(&message.envelope) {
            // Fails only when the subscriber has no OpenTelemetry layer: then there is no
            // trace to join.
            let _ = span.set_parent(parent);
        }
        Box::pin(async move {
            let handled = next.run(message).instrument(span.clone()).await;
            span.record("messaging.tidings.outcome", outcome_name(&handled.outcome));
            span.record("messaging.tidings.replied", handled.replied);
            if let Some(error) = &handled.error {
                let kind = if error.starts_with("stopped by a layer") {
                    "Stopped"
                } else {
                    "Handler"
                };
                fail(&span, kind, error);
            }
            handled
        })
    }
}

/// `<operation> <destination>`, written only when a subscriber records it.
struct SpanName<'a>(&'static str, &'a str);

impl fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// The span of a message on its way out.
fn send_span(message: &Outgoing) -> Span {
    let envelope = &message.envelope;
    let (operation, otel_kind) = match message.kind {
        Kind::Event => ("publish", "producer"),
        Kind::Cast => ("send", "producer"),
        Kind::Request => ("call", "client"),
        Kind::Reply => ("reply", "producer"),
        Kind::Replay => ("replay", "producer"),
    };
    let span = ::tracing::info_span!(
        target: TARGET,
        "send",
        otel.name = %SpanName(operation, &envelope.routing_key),
        otel.kind = otel_kind,
        messaging.system = message.system,
        messaging.operation.type = "send",
        messaging.operation.name = operation,
        messaging.destination.name = message.destination(),
        messaging.destination.temporary = Empty,
        messaging.message.id = envelope.id.as_str(),
        messaging.message.conversation_id = Empty,
        messaging.message.body.size = envelope.body.len() as i64,
        messaging.rabbitmq.destination.routing_key = Empty,
        messaging.tidings.kind = kind_name(message.kind),
        messaging.tidings.emitter = envelope.emitter.as_str(),
        error.type = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    if !span.is_disabled() {
        if let Some(id) = &envelope.correlation_id {
            span.record("messaging.message.conversation_id", id.as_str());
        }
        if message.kind == Kind::Reply {
            span.record("messaging.destination.temporary", true);
        }
        if message.system == "rabbitmq" {
            span.record(
                "messaging.rabbitmq.destination.routing_key",
                envelope.routing_key.as_str(),
            );
        }
    }
    span
}

/// The span of a delivery being handled.
fn process_span(message: &Incoming) -> Span {
    let envelope = &message.envelope;
    let otel_kind = match message.kind {
        Kind::Request if envelope.reply_to.is_some() => "server",
        _ => "consumer",
    };
    let span = ::tracing::info_span!(
        target: TARGET,
        "process",
        otel.name = %SpanName("process", &message.subscription),
        otel.kind = otel_kind,
        messaging.system = message.system,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = envelope.routing_key.as_str(),
        messaging.destination.subscription.name = &*message.subscription,
        messaging.consumer.group.name = Empty,
        messaging.message.id = envelope.id.as_str(),
        messaging.message.conversation_id = Empty,
        messaging.message.body.size = envelope.body.len() as i64,
        messaging.rabbitmq.destination.routing_key = Empty,
        messaging.tidings.kind = kind_name(message.kind),
        messaging.tidings.emitter = envelope.emitter.as_str(),
        messaging.tidings.attempt = i64::from(envelope.attempt),
        messaging.tidings.outcome = Empty,
        messaging.tidings.replied = Empty,
        error.type = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    if !span.is_disabled() {
        if let Some(group) = &message.group {
            span.record("messaging.consumer.group.name", &**group);
        }
        if let Some(id) = &envelope.correlation_id {
            span.record("messaging.message.conversation_id", id.as_str());
        }
        if message.system == "rabbitmq" {
            span.record(
                "messaging.rabbitmq.destination.routing_key",
                envelope.routing_key.as_str(),
            );
        }
    }
    span
}

/// Marks `span` as failed.
fn fail(span: &Span, kind: &str, error: &str) {
    span.record("error.type", kind);
    span.record("otel.status_code", "error");
    span.record("otel.status_description", error);
}

/// Closes the span of a call whose reply never came.
fn timed_out(entry: Entry<Span>) {
    fail(
        &entry.value,
        "Timeout",
        &format!("no reply within {:?}", entry.timeout),
    );
}

/// Writes `span`'s trace context into `envelope`.
fn inject_span(span: &Span, envelope: &mut Envelope) {
    inject(&span.context(), envelope);
}

/// Writes the trace context of `cx`'s span into `envelope`'s headers, as `traceparent` and
/// (when not empty) `tracestate`, replacing any it had. Returns false, changing nothing, when
/// `cx` has no valid span context. [`TracingLayer`] does this for every message it sends; this
/// is for tools that build envelopes themselves.
///
/// # Examples
/// ```
/// use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
/// use tidings_core::observe::tracing::{inject, TRACEPARENT};
///
/// let span = SpanContext::new(
///     TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
///     SpanId::from_hex("00f067aa0ba902b7").unwrap(),
///     TraceFlags::SAMPLED,
///     false,
///     TraceState::default(),
/// );
/// let cx = opentelemetry::Context::new().with_remote_span_context(span);
/// let mut envelope = tidings_core::Envelope::new("orders.created", "application/json", "{}".into());
/// assert!(inject(&cx, &mut envelope));
/// assert_eq!(
///     envelope.headers[TRACEPARENT],
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
/// );
/// ```
pub fn inject(cx: &Context, envelope: &mut Envelope) -> bool {
    let span = cx.span();
    let context = span.span_context();
    if !context.is_valid() {
        return false;
    }
    envelope.headers.insert(
        TRACEPARENT.into(),
        format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        ),
    );
    let state = context.trace_state().header();
    if state.is_empty() {
        envelope.headers.remove(TRACESTATE);
    } else {
        envelope.headers.insert(TRACESTATE.into(), state);
    }
    true
}

/// The remote trace context `envelope` carries in its `traceparent` (and `tracestate`)
/// headers, as a parent for a span; `None` when it has none or it is not valid W3C trace
/// context. [`TracingLayer`] does this for every delivery it handles.
///
/// # Examples
/// ```
/// use opentelemetry::trace::TraceContextExt;
/// use tidings_core::observe::tracing::extract;
///
/// let mut envelope = tidings_core::Envelope::new("orders.created", "application/json", "{}".into());
/// envelope.headers.insert(
///     "traceparent".into(),
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
/// );
/// let cx = extract(&envelope).expect("valid");
/// assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert!(cx.span().span_context().is_remote());
/// ```
pub fn extract(envelope: &Envelope) -> Option<Context> {
    let parent = envelope.headers.get(TRACEPARENT)?;
    let state = envelope.headers.get(TRACESTATE).map(String::as_str);
    let context = parse_traceparent(parent, state)?;
    Some(Context::new().with_remote_span_context(context))
}

/// Parses a W3C `traceparent` (version 00, or a later version read as 00 requires), with the
/// `tracestate` beside it (dropped when malformed, as the W3C spec asks).
fn parse_traceparent(value: &str, state: Option<&str>) -> Option<SpanContext> {
    let value = value.trim();
    let mut parts = value.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2) || version == "ff" {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if !lower_hex(trace_id, 32) || !lower_hex(span_id, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = state
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_w3c_traceparent() {
        let c = parse_traceparent(PARENT, Some("vendor=abc")).expect("valid");
        assert_eq!(c.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id().to_string(), "00f067aa0ba902b7");
        assert!(c.is_sampled());
        assert!(c.is_remote());
        assert_eq!(c.trace_state().get("vendor"), Some("abc"));
        let unsampled = parse_traceparent(&PARENT.replace("-01", "-00"), None).unwrap();
        assert!(!unsampled.is_sampled());
        // A later version may add fields.
        assert!(
            parse_traceparent(&format!("{}-more", PARENT.replacen("00", "01", 1)), None).is_some()
        );
    }

    #[test]
    fn rejects_bad_traceparents() {
        for bad in [
            "",
            "00",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn injects_what_extract_reads_back() {
        let mut envelope = Envelope::new("a.b", "application/json", "{}".into());
        envelope.headers.insert(TRACEPARENT.into(), PARENT.into());
        envelope
            .headers
            .insert(TRACESTATE.into(), "vendor=abc,other=1".into());
        let cx = extract(&envelope).expect("valid");
        let mut copy = Envelope::new("a.b", "application/json", "{}".into());
        assert!(inject(&cx, &mut copy));
        assert_eq!(copy.headers, envelope.headers);
        assert!(!inject(&Context::new(), &mut copy));
    }
}
