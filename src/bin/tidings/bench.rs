//! `bench`: throughput (publish and end-to-end through a durable group) and sequential RPC
//! latency, measured the way the driver benches (`drivers/*/benches`) measure tidings, on an
//! exchange (namespace) of its own that is deleted afterwards.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tidings::envelope::new_id;

use crate::args::BenchArgs;
use crate::failure::Failure;

/// Publishes in flight at once (a sliding window): enough to hide broker round trips; the
/// driver benches keep as many.
const WINDOW: usize = 256;
/// Deliveries the subscriber may hold unacknowledged.
const PREFETCH: u16 = 256;
/// Calls made before the measured ones (connections, links and caches warm up).
const WARM_UP: u64 = 100;

pub(crate) async fn run(url: &str, args: BenchArgs) -> Result<(), Failure> {
    let run_id = new_id().replace('-', "");
    let namespace = format!("bench{}", &run_id[..12]);
    let isolated = tidings::isolated_url(url, &namespace)?;
    // Measured in a task of its own, on the runtime's workers, as an application's code runs:
    // not on the thread that blocks on the runtime (a wake-up there costs tens of µs).
    let task = {
        let isolated = isolated.clone();
        tokio::spawn(async move { measure(&isolated, &args).await })
    };
    let measured = task
        .await
        .map_err(|e| Failure::runtime(format!("the bench task failed: {e}")));
    let (system, report) = match measured {
        Ok(Ok(done)) => done,
        Ok(Err(e)) | Err(e) => {
            // What was declared goes, whatever happened.
            let _ = cleanup(None, &isolated).await;
            return Err(e);
        }
    };
    println!("broker      {} ({system})", tidings::redact(url));
    print!("{report}");
    match cleanup(Some(system), &isolated).await {
        Ok(said) => {
            println!("{said}");
            Ok(())
        }
        Err(e) => Err(Failure::runtime(e)),
    }
}

/// What `measure` found: the broker's system name and the report.
type Measured = (&'static str, String);

async fn measure(url: &str, args: &BenchArgs) -> Result<Measured, Failure> {
    let consumer = tidings::connect(url).await?;
    let publisher = tidings::connect(url).await?;
    let system = consumer.provider().system();
    let key = "bench.payload";

    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let sub = consumer
        .subscribe::<Vec<u8>>(key)
        .group("bench.group")
        .prefetch(PREFETCH)
        .concurrency(1)
        .handle(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        })
        .await?;

    let bar = progress(args.messages);
    let payload = vec![0x5a_u8; args.size];
    let started = Instant::now();
    let cpu = process_cpu();
    let mut sent = 0u64;
    let mut failure = None;
    {
        let mut results = futures::stream::iter(0..args.messages)
            .map(|_| publisher.emit(key, &payload).into_future())
            .buffer_unordered(WINDOW);
        while let Some(result) = results.next().await {
            if let Err(e) = result {
                failure = Some(e);
                break;
            }
            sent += 1;
            if sent % 1024 == 0 {
                bar.set_position(received.load(Ordering::Relaxed));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e.into());
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
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let delivered_in = started.elapsed();
    let cpu = cpu.zip(process_cpu()).map(|(a, b)| b.saturating_sub(a));
    bar.finish_and_clear();
    sub.unsubscribe().await;

    let serving = consumer
        .serve("bench.echo", |n: u64| async move { Ok(n) })
        .await?;
    let mut latencies = Vec::with_capacity(args.rpc as usize);
    let bar = progress(args.rpc);
    let calls = if args.rpc == 0 { 0 } else { WARM_UP + args.rpc };
    for n in 0..calls {
        let call_started = Instant::now();
        let _: u64 = publisher
            .call("bench.echo", &n)
            .timeout(Duration::from_secs(10))
            .await?;
        if n >= WARM_UP {
            latencies.push(call_started.elapsed());
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    latencies.sort();
    serving.unsubscribe().await;
    let _ = publisher.shutdown().await;
    let _ = consumer.shutdown().await;

    let mut out = String::new();
    let line = |out: &mut String, metric: String, value: String| {
        out.push_str(&format!("{metric:<34} {value:>14}\n"));
    };
    out.push_str(&format!(
        "throughput  {} messages of {} B (postcard) as Bus::emit sends them (on a broker: \
         persistent, publisher-confirmed), {WINDOW} in flight, into a durable group queue; one \
         subscriber, prefetch {PREFETCH}, one handler at a time, each message acked after it is \
         handled\n",
        args.messages, args.size
    ));
    let rate = |d: Duration| args.messages as f64 / d.as_secs_f64().max(1e-9);
    if args.messages > 0 {
        line(
            &mut out,
            "publish msg/s (all confirmed)".into(),
            format!("{:.0}", rate(published_in)),
        );
        line(
            &mut out,
            "end-to-end msg/s (all handled)".into(),
            format!("{:.0}", rate(delivered_in)),
        );
        if let Some(cpu) = cpu {
            line(
                &mut out,
                "client CPU per message".into(),
                format!("{:.1} µs", cpu.as_secs_f64() * 1e6 / args.messages as f64),
            );
        }
    }
    if !latencies.is_empty() {
        out.push_str(&format!(
            "rpc         {} sequential calls of a u64 echo service after {WARM_UP} warm-up calls, \
             from a spawned task; caller and server on separate connections, requests and \
             replies as Bus::call and Bus::serve send them\n",
            args.rpc
        ));
        line(
            &mut out,
            "rpc p50".into(),
            format!("{:?}", percentile(&latencies, 50)),
        );
        line(
            &mut out,
            "rpc p99".into(),
            format!("{:?}", percentile(&latencies, 99)),
        );
    }
    if cpu.is_some() {
        out.push_str(
            "(client CPU: user + system time of this process, all threads, from /proc/self/stat)\n",
        );
    }
    Ok((system, out))
}

/// Deletes what the bench declared on the broker (`system`, if known): on RabbitMQ the
/// namespace's exchange and every queue `<namespace>.*`, through the management API. Says
/// what it did, or fails naming what is left.
async fn cleanup(system: Option<&'static str>, isolated: &str) -> Result<String, String> {
    let scheme = isolated.split(':').next().unwrap_or_default();
    if scheme == "memory" {
        return Ok("cleanup     nothing to delete (memory://)".into());
    }
    if system == Some("activemq") {
        return Ok(format!(
            "cleanup     not done: ActiveMQ's STOMP cannot delete queues; the bench's queues are \
             named after {:?} (the inbox is garbage-collected)",
            namespace_of(isolated)
        ));
    }
    let url = isolated.to_owned();
    let deleted = tokio::task::spawn_blocking(move || {
        tidings_conformance::rabbitmq::Management::delete_namespace_of(&url)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let namespace = namespace_of(isolated);
    match deleted {
        Ok(()) => Ok(format!(
            "cleanup     deleted exchange {namespace:?} and its queues {namespace}.* (RabbitMQ \
             management API)"
        )),
        Err(e) => Err(format!(
            "the bench could not delete what it declared (exchange {namespace:?}, queues \
             {namespace}.*): {e}; delete them by hand, or set TIDINGS_RABBITMQ_MANAGEMENT (or \
             ?management= in the url) to the management API"
        )),
    }
}

fn namespace_of(isolated: &str) -> String {
    let query = isolated.split_once('?').map_or("", |(_, q)| q);
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "exchange")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// User + system CPU time of this process (all threads) from `/proc/self/stat`; `None` where
/// that file does not exist.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at state = field 3; utime and
    // stime are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
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
