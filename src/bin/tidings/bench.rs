//! `bench`: throughput (publish and end-to-end through a group) and sequential RPC latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::future::IntoFuture;

use indicatif::{ProgressBar, ProgressStyle};
use tidings::envelope::new_id;

use crate::args::BenchArgs;
use crate::failure::Failure;

/// Publishes in flight at once: enough to hide broker round trips.
const WINDOW: usize = 256;

pub(crate) async fn run(url: &str, args: BenchArgs) -> Result<(), Failure> {
    let run_id = new_id().replace('-', "");
    let isolated = tidings::isolated_url(url, &format!("bench{}", &run_id[..12]))?;
    let consumer = tidings::connect(&isolated).await?;
    let publisher = tidings::connect(&isolated).await?;
    let key = "bench.payload";

    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    consumer
        .subscribe::<Vec<u8>>(key)
        .group("bench.group")
        .durable(false)
        .prefetch(256)
        .handle(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        })
        .await?;

    let bar = progress(args.messages);
    let payload = vec![0x5a_u8; args.size];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.messages {
        let batch = (args.messages - sent).min(WINDOW as u64);
        let sends = (0..batch).map(|_| publisher.emit(key, &payload).into_future());
        for result in futures::future::join_all(sends).await {
            result?;
        }
        sent += batch;
        bar.set_position(received.load(Ordering::Relaxed));
    }
    let published_in = started.elapsed();
    while received.load(Ordering::Relaxed) < args.messages {
        if started.elapsed() > Duration::from_secs(600) {
            return Err(Failure::runtime(format!(
                "only {} of {} messages arrived within 10 minutes",
                received.load(Ordering::Relaxed),
                args.messages
            )));
        }
        bar.set_position(received.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_in = started.elapsed();
    bar.finish_and_clear();

    consumer
        .serve("bench.echo", |n: u64| async move { Ok(n) })
        .await?;
    let mut latencies = Vec::with_capacity(args.rpc as usize);
    let bar = progress(args.rpc);
    for n in 0..args.rpc {
        let call_started = Instant::now();
        let _: u64 = publisher
            .call("bench.echo", &n)
            .timeout(Duration::from_secs(10))
            .await?;
        latencies.push(call_started.elapsed());
        bar.inc(1);
    }
    bar.finish_and_clear();
    latencies.sort();

    println!("broker      {}", tidings::redact(url));
    println!("{:<28} {:>14}", "metric", "value");
    println!(
        "{:<28} {:>14.0}",
        format!("publish msgs/s ({} B)", args.size),
        args.messages as f64 / published_in.as_secs_f64()
    );
    println!(
        "{:<28} {:>14.0}",
        "end-to-end msgs/s",
        args.messages as f64 / delivered_in.as_secs_f64()
    );
    if !latencies.is_empty() {
        println!(
            "{:<28} {:>14?}",
            format!("rpc p50 ({} calls)", args.rpc),
            percentile(&latencies, 50)
        );
        println!("{:<28} {:>14?}", "rpc p99", percentile(&latencies, 99));
    }
    let _ = publisher.shutdown().await;
    let _ = consumer.shutdown().await;
    Ok(())
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// A progress bar on long runs when stderr is a terminal; hidden otherwise.
fn progress(total: u64) -> ProgressBar {
    if total < 10_000 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
