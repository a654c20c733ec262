//! Metrics: a Prometheus endpoint for what a bus publishes and handles.
//!
//!     cargo run --example metrics_prometheus --features metrics
//!     cargo run --example metrics_prometheus --features metrics -- --serve   # keep serving
//!
//! The metrics layer records through the `metrics` facade; `metrics-exporter-prometheus`
//! serves them at `http://127.0.0.1:9464/metrics` (`METRICS_ADDR` to change). The example
//! emits events (one of them failing until dead-lettered) and makes calls, then prints what a
//! Prometheus scrape would read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use tidings::observe::{metrics::watch_status, MetricsLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::var("METRICS_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:9464".into())
        .parse()?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()?;

    let bus = tidings::connect_from_env("memory://metrics-example")
        .await?
        // Routing keys here carry a host and an id: keep the first two words as the label.
        .with_layer(MetricsLayer::new().destination_words(2));
    watch_status(&bus);

    bus.subscribe::<String>("log.#")
        .handle(|_| async { Ok(()) })
        .await?;
    bus.subscribe::<String>("jobs.resize")
        .group("resizer")
        .max_attempts(3)
        .handle(|file| async move {
            if file.ends_with(".bmp") {
                Err(format!("cannot resize {file}").into())
            } else {
                Ok(())
            }
        })
        .await?;
    bus.serve("math.double", |n: u64| async move { Ok(n * 2) })
        .await?;

    for n in 0..10 {
        bus.emit(
            &format!("log.host{}.worker.{n}.info", n % 2),
            &"ok".to_string(),
        )
        .await?;
    }
    for file in ["a.png", "b.png", "c.bmp"] {
        bus.emit("jobs.resize", &file.to_string()).await?;
    }
    for n in 0..20u64 {
        let _: u64 = bus.call("math.double", &n).await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // What Prometheus would scrape.
    let mut scrape = TcpStream::connect(addr)?;
    write!(
        scrape,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    scrape.read_to_string(&mut response)?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    for line in body.lines().filter(|l| l.starts_with("tidings_")) {
        println!("{line}");
    }

    if std::env::args().any(|a| a == "--serve") {
        println!("serving http://{addr}/metrics; Ctrl-C to stop");
        bus.run_until_signal().await?;
    } else {
        bus.shutdown().await?;
    }
    Ok(())
}
