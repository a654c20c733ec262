//! Test support for the tracing tests: an in-memory span exporter behind the `tracing`
//! subscriber, finished spans as JSON lines, and the parent chain a call → server → event
//! trace must have.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;

/// The service a call goes to, the event its server emits, and the group that handles it.
pub const SERVICE: &str = "trace.work";
pub const EVENT: &str = "trace.done";
pub const GROUP: &str = "audit";

/// The request, the reply and the event.
#[derive(Debug, Serialize, Deserialize)]
pub struct Work {
    pub n: u64,
}
impl tidings::Event for Work {
    const NAME: &'static str = "trace_work";
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Worked {
    pub n: u64,
}
impl tidings::Event for Worked {
    const NAME: &'static str = "trace_worked";
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Done {
    pub n: u64,
}
impl tidings::Event for Done {
    const NAME: &'static str = "trace_done";
}

/// This process's tracer provider and the exporter its spans end in.
pub struct Traces {
    pub exporter: InMemorySpanExporter,
    pub provider: SdkTracerProvider,
}

/// Installs the global `tracing` subscriber: OpenTelemetry spans into an in-memory exporter.
pub fn install(service: &'static str) -> Traces {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = provider.tracer(service);
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber per process");
    Traces { exporter, provider }
}

/// A finished span, as a child process prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpanLine {
    pub process: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub kind: String,
    pub attributes: BTreeMap<String, String>,
}

impl SpanLine {
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map(String::as_str).unwrap_or("")
    }
}

/// The spans this process finished, labelled with `process`.
pub fn finished(traces: &Traces, process: &str) -> Vec<SpanLine> {
    let _ = traces.provider.force_flush();
    traces
        .exporter
        .get_finished_spans()
        .expect("spans")
        .into_iter()
        .map(|s| SpanLine {
            process: process.to_owned(),
            trace_id: s.span_context.trace_id().to_string(),
            span_id: s.span_context.span_id().to_string(),
            parent_span_id: s.parent_span_id.to_string(),
            name: s.name.to_string(),
            kind: format!("{:?}", s.span_kind),
            attributes: s
                .attributes
                .iter()
                .map(|kv| (kv.key.to_string(), kv.value.as_str().into_owned()))
                .collect(),
        })
        .collect()
}

/// The one span named `name`.
fn one<'a>(spans: &'a [SpanLine], name: &str) -> &'a SpanLine {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name:?} span expected in {spans:#?}");
    found[0]
}

/// Asserts that `spans` hold one trace: call → server's process (→ its reply) → publish of
/// the event → the group's process, with the messaging attributes of `system`. Returns the
/// spans of the chain: call, server, reply, publish, handled.
pub fn assert_chain<'a>(spans: &'a [SpanLine], system: &str) -> [&'a SpanLine; 5] {
    let call = one(spans, &format!("call {SERVICE}"));
    let server = one(spans, &format!("process {SERVICE}"));
    let reply = one(spans, &format!("reply {SERVICE}"));
    let publish = one(spans, &format!("publish {EVENT}"));
    let handled = one(spans, &format!("process {EVENT}"));
    let chain = [call, server, reply, publish, handled];
    for span in chain {
        assert_eq!(span.trace_id, call.trace_id, "one trace: {spans:#?}");
        assert_eq!(span.attr("messaging.system"), system, "{span:#?}");
    }
    assert_eq!(
        server.parent_span_id, call.span_id,
        "call → server: {spans:#?}"
    );
    assert_eq!(
        reply.parent_span_id, server.span_id,
        "server → reply: {spans:#?}"
    );
    assert_eq!(
        publish.parent_span_id, server.span_id,
        "server → publish: {spans:#?}"
    );
    assert_eq!(
        handled.parent_span_id, publish.span_id,
        "publish → handled: {spans:#?}"
    );

    assert_eq!(call.kind, "Client");
    assert_eq!(server.kind, "Server");
    assert_eq!(reply.kind, "Producer");
    assert_eq!(publish.kind, "Producer");
    assert_eq!(handled.kind, "Consumer");
    assert_eq!(call.attr("messaging.operation.type"), "send");
    assert_eq!(publish.attr("messaging.operation.type"), "send");
    assert_eq!(server.attr("messaging.operation.type"), "process");
    assert_eq!(handled.attr("messaging.operation.type"), "process");
    assert_eq!(call.attr("messaging.destination.name"), SERVICE);
    assert_eq!(server.attr("messaging.destination.name"), SERVICE);
    assert_eq!(publish.attr("messaging.destination.name"), EVENT);
    assert_eq!(handled.attr("messaging.destination.name"), EVENT);
    assert_eq!(handled.attr("messaging.consumer.group.name"), GROUP);
    assert_eq!(handled.attr("messaging.tidings.attempt"), "1");
    assert_eq!(handled.attr("messaging.tidings.outcome"), "ack");
    assert_eq!(server.attr("messaging.tidings.replied"), "true");
    assert_eq!(reply.attr("messaging.destination.temporary"), "true");
    assert_eq!(
        publish.attr("messaging.message.id"),
        handled.attr("messaging.message.id"),
        "the same message"
    );
    assert!(!call.attr("messaging.message.conversation_id").is_empty());
    assert_eq!(
        call.attr("messaging.message.conversation_id"),
        server.attr("messaging.message.conversation_id")
    );
    if system == "rabbitmq" {
        assert_eq!(
            publish.attr("messaging.rabbitmq.destination.routing_key"),
            EVENT
        );
    }
    chain
}
