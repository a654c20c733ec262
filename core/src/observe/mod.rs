//! Observability built on [layers](crate::layer): tracing spans with trace context carried in
//! the messages (feature `otel`), and metrics (feature `metrics`).
//!
//! Both are plain [`Layer`](crate::Layer)s; add them with [`Bus::with_layer`](crate::Bus::with_layer)
//! to each handle whose traffic should be observed:
//!
//! ```
//! # #[cfg(all(feature = "otel", feature = "metrics"))]
//! # fn demo(bus: tidings_core::Bus) {
//! use tidings_core::observe::{MetricsLayer, TracingLayer};
//! let bus = bus.with_layer(TracingLayer::new()).with_layer(MetricsLayer::new());
//! # let _ = bus; }
//! ```
//!
//! # Why here, and behind features
//! They live in the core, not in the `tidings` facade, because they need nothing but the layer
//! API and so any program or driver benchmark that holds a [`Bus`](crate::Bus) can use them
//! without the facade; the facade re-exports them as `tidings::observe` and forwards its own
//! `otel` and `metrics` features here. Without the features this module does not exist: no
//! dependency is compiled in and no message pays anything.
//!
//! - [`tracing`] (feature `otel`) makes `tracing` spans that follow the OpenTelemetry
//!   messaging semantic conventions, and carries W3C `traceparent` / `tracestate` in the
//!   message headers through `tracing-opentelemetry`, so a call, the server's handling of it,
//!   what that handler publishes and whoever handles that — in any process, in any language
//!   with an OpenTelemetry SDK — are one trace. The exporter (OTLP, stdout, …) is the
//!   application's choice, made where it sets up `tracing-subscriber`.
//! - [`metrics`] (feature `metrics`) counts and times through the `metrics` facade crate: a
//!   few macros and no exporter of its own, so the library costs little and the application
//!   plugs in Prometheus, OTLP, StatsD or anything else that implements a `metrics` recorder.

mod pending;

#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "otel")]
pub mod tracing;

#[cfg(feature = "metrics")]
pub use self::metrics::MetricsLayer;
#[cfg(feature = "otel")]
pub use self::tracing::TracingLayer;

use crate::driver::Outcome;
use crate::layer::Kind;

/// The name of a kind of message, as spans and metric labels give it.
pub(crate) fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Event => "event",
        Kind::Cast => "cast",
        Kind::Request => "request",
        Kind::Reply => "reply",
        Kind::Replay => "replay",
    }
}

/// The name of an outcome, as spans and metric labels give it.
pub(crate) fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ack => "ack",
        Outcome::Requeue => "requeue",
        Outcome::Retry => "retry",
        Outcome::Decline { .. } => "decline",
        Outcome::DeadLetter { .. } => "dead_letter",
    }
}
