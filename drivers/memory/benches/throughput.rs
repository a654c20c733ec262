//! Memory-driver throughput beside a plain tokio mpsc baseline, in the same run.
//!
//! `cargo bench -p tidings-memory --bench throughput` prints events/s for one publisher to one
//! and to four subscribers, and RPC calls/s, each next to a hand-written tokio equivalent that
//! carries the same struct without routing, acks, codecs or envelopes.
//!
//! `BENCH_LAYERS` adds the observability layers to every bus, to measure what they cost:
//! - `otel`: the tracing layer, with `tracing-opentelemetry` and an OpenTelemetry SDK tracer
//!   (always sampled, batch span processor) whose exporter drops the spans: every message makes
//!   its span and carries `traceparent`;
//! - `otel-off`: the tracing layer with no subscriber (spans disabled: the layer's floor);
//! - `metrics`: the metrics layer, recording into a Prometheus recorder (no HTTP listener).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use serde::{Deserialize, Serialize};
use tidings_core::observe::{MetricsLayer, TracingLayer};
use tidings_core::{Bus, Event};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Serialize, Deserialize)]
struct Tick {
    n: u64,
    text: String,
}

impl Event for Tick {
    const NAME: &'static str = "tick";
}

fn tick(n: u64) -> Tick {
    Tick {
        n,
        text: "a small payload".into(),
    }
}

async fn bus(name: &str) -> Bus {
    let bus = Bus::new(
        tidings_memory::connect(&format!("memory://{name}"))
            .await
            .expect("memory"),
    );
    match std::env::var("BENCH_LAYERS").as_deref() {
        Ok("otel") | Ok("otel-off") => bus.with_layer(TracingLayer::new()),
        Ok("metrics") => bus.with_layer(MetricsLayer::new()),
        _ => bus,
    }
}

/// An exporter that drops what it is given: the spans' cost without a collector's.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(batch);
        Ok(())
    }
}

/// Installs what `BENCH_LAYERS` asks for around the layers; returns what to keep alive.
fn observe() -> Option<SdkTracerProvider> {
    match std::env::var("BENCH_LAYERS").as_deref() {
        Ok("otel") => {
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(Discard)
                .build();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("throughput")));
            tracing::subscriber::set_global_default(subscriber).expect("subscriber");
            Some(provider)
        }
        Ok("metrics") => {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("recorder");
            None
        }
        Ok("otel-off") | Err(_) => None,
        Ok(other) => panic!("BENCH_LAYERS={other:?}: expected otel, otel-off or metrics"),
    }
}

/// Events/s published by one task and fully delivered to `subscribers` broadcast subscribers.
async fn tidings_fanout(events: u64, subscribers: u64) -> f64 {
    let bus = bus(&format!("fanout{subscribers}")).await;
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let target = events * subscribers;
    for _ in 0..subscribers {
        let received = received.clone();
        let done = done.clone();
        bus.subscribe::<Tick>("bench.*")
            .prefetch(1024)
            .handle(move |_| {
                if received.fetch_add(1, Ordering::Relaxed) + 1 == target {
                    done.notify_one();
                }
                async { Ok(()) }
            })
            .await
            .expect("subscribe");
    }
    let started = Instant::now();
    let finished = done.notified();
    // Publish from a task, as applications do (not from the runtime's foreign main thread).
    let publisher = bus.clone();
    tokio::spawn(async move {
        for n in 0..events {
            publisher.emit("bench.tick", &tick(n)).await.expect("emit");
        }
    })
    .await
    .expect("publisher");
    finished.await;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    bus.shutdown().await.expect("shutdown");
    rate
}

/// The same with tokio mpsc channels: one unbounded channel per subscriber, the struct cloned.
async fn mpsc_fanout(events: u64, subscribers: u64) -> f64 {
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..subscribers {
        let (tx, mut rx) = mpsc::unbounded_channel::<Tick>();
        senders.push(tx);
        receivers.push(tokio::spawn(async move {
            let mut count = 0u64;
            while rx.recv().await.is_some() {
                count += 1;
                if count == events {
                    break;
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::spawn(async move {
        for n in 0..events {
            let t = tick(n);
            for tx in &senders {
                tx.send(t.clone()).expect("send");
            }
        }
    })
    .await
    .expect("publisher");
    for r in receivers {
        r.await.expect("receiver");
    }
    events as f64 / started.elapsed().as_secs_f64()
}

/// Sequential RPC calls/s through the bus.
async fn tidings_rpc(calls: u64) -> (f64, Duration) {
    let bus = bus("rpc").await;
    bus.serve("bench.double", |n: u64| async move { Ok(n * 2) })
        .await
        .expect("serve");
    let started = Instant::now();
    tokio::spawn(async move {
        for n in 0..calls {
            let r: u64 = bus.call("bench.double", &n).await.expect("call");
            assert_eq!(r, n * 2);
        }
        bus.shutdown().await.expect("shutdown");
    })
    .await
    .expect("caller");
    let elapsed = started.elapsed();
    (calls as f64 / elapsed.as_secs_f64(), elapsed / calls as u32)
}

/// The same with a request channel and a oneshot reply per call.
async fn mpsc_rpc(calls: u64) -> (f64, Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, oneshot::Sender<u64>)>();
    tokio::spawn(async move {
        while let Some((n, reply)) = rx.recv().await {
            let _ = reply.send(n * 2);
        }
    });
    let started = Instant::now();
    tokio::spawn(async move {
        for n in 0..calls {
            let (rtx, rrx) = oneshot::channel();
            tx.send((n, rtx)).expect("send");
            assert_eq!(rrx.await.expect("reply"), n * 2);
        }
    })
    .await
    .expect("caller");
    let elapsed = started.elapsed();
    (calls as f64 / elapsed.as_secs_f64(), elapsed / calls as u32)
}

fn row(name: &str, tidings: f64, baseline: f64, unit: &str) {
    println!(
        "{name:<34} {:>14} {:>14} {:>8.2}",
        format!("{:.0} {unit}", tidings),
        format!("{:.0} {unit}", baseline),
        tidings / baseline
    );
}

fn main() {
    let _provider = observe();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // BENCH_EVENTS / BENCH_CALLS scale the run; BENCH_ONLY=fanout1 runs one scenario, for
        // profiling.
        let env = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let events = env("BENCH_EVENTS", 1_000_000);
        let calls = env("BENCH_CALLS", 50_000);
        if std::env::var("BENCH_ONLY").as_deref() == Ok("fanout1") {
            println!(
                "tidings 1 -> 1: {:.0} ev/s",
                tidings_fanout(events, 1).await
            );
            return;
        }
        // Warm up allocators and the runtime.
        tidings_fanout(50_000, 1).await;
        println!(
            "memory driver, {events} events / {calls} calls, {} worker threads, layers: {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::env::var("BENCH_LAYERS").unwrap_or_else(|_| "none".into())
        );
        println!(
            "{:<34} {:>14} {:>14} {:>8}",
            "scenario", "tidings", "tokio mpsc", "ratio"
        );
        row(
            "events 1 -> 1 subscriber",
            tidings_fanout(events, 1).await,
            mpsc_fanout(events, 1).await,
            "ev/s",
        );
        row(
            "events 1 -> 4 subscribers",
            tidings_fanout(events, 4).await,
            mpsc_fanout(events, 4).await,
            "ev/s",
        );
        let (t_rate, t_lat) = tidings_rpc(calls).await;
        let (b_rate, b_lat) = mpsc_rpc(calls).await;
        row("rpc sequential calls", t_rate, b_rate, "calls/s");
        println!(
            "{:<34} {:>14?} {:>14?}",
            "rpc mean round trip", t_lat, b_lat
        );
    });
}
