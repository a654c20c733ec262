//! Tracing: one trace through a call, the server that handles it, the event that server emits
//! and the subscriber that handles that — printed by OpenTelemetry's stdout exporter, so no
//! collector is needed. Swap the exporter for OTLP (`opentelemetry-otlp`) to send the spans to
//! Jaeger, Tempo or any OpenTelemetry collector.
//!
//!     cargo run --example tracing --features otel
//!
//! Every span of the run has the same trace id; `parent_span_id` links process → call,
//! publish → process, and process → publish. Across processes (and languages) the trace
//! travels in the messages' `traceparent` header.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tidings::observe::TracingLayer;
use tidings::Event;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, Serialize, Deserialize)]
struct Resize {
    file: String,
}
impl Event for Resize {
    const NAME: &'static str = "resize";
}

#[derive(Debug, Serialize, Deserialize)]
struct Resized {
    file: String,
}
impl Event for Resized {
    const NAME: &'static str = "resized";
}

#[tokio::main]
async fn main() -> tidings::Result<()> {
    // OpenTelemetry: spans go to stdout when they end.
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .build();
    // tracing: log lines to stderr, and every span to OpenTelemetry.
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tracing-example")));
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber");

    // The layer on each handle whose traffic is traced (here three "daemons" in one process).
    let bus = tidings::connect_from_env("memory://tracing-example").await?;
    let caller = bus
        .as_participant("web", "1")
        .with_layer(TracingLayer::new());
    let resizer = bus
        .as_participant("resizer", "1")
        .with_layer(TracingLayer::new());
    let indexer = bus
        .as_participant("indexer", "1")
        .with_layer(TracingLayer::new());

    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    indexer
        .subscribe::<Resized>("images.resized")
        .group("indexer")
        .handle(move |r| {
            let done_tx = done_tx.clone();
            async move {
                // Inside the handler's span: this log line belongs to the trace.
                tracing::info!(file = %r.file, "indexed");
                done_tx.send(())?;
                Ok(())
            }
        })
        .await?;
    let emitter = resizer.clone();
    resizer
        .serve("images.resize", move |req: Resize| {
            let emitter = emitter.clone();
            async move {
                let file = req.file.replace(".png", ".small.png");
                // A child of the server's process span.
                emitter
                    .emit("images.resized", &Resized { file: file.clone() })
                    .await?;
                Ok(Resized { file })
            }
        })
        .await?;

    let reply: Resized = caller
        .call(
            "images.resize",
            &Resize {
                file: "cat.png".into(),
            },
        )
        .timeout(Duration::from_secs(5))
        .await?;
    tracing::info!(file = %reply.file, "resized");
    done.recv().await;
    bus.shutdown().await?;
    provider.shutdown().expect("flush spans");
    Ok(())
}
