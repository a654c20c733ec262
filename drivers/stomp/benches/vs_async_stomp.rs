//! tidings-stomp beside a plain async-stomp program doing the same work, on both brokers, in
//! the same run: publish throughput to a group (every SEND persistent and confirmed by a
//! receipt, every delivery acked, 100 publishes in flight) and RPC round-trip latency (p50,
//! p99; sequential calls, request persistent with a receipt and the call's deadline, reply with
//! a receipt and the correlation id; the two clients' calls interleaved). Each round runs both
//! parts on fresh connections; the medians over the rounds are reported.
//!
//! `cargo bench -p tidings-stomp --bench vs_async_stomp`; numbers go in
//! `docs/benchmarks-stomp.md`. Set `BENCH_MESSAGES` / `BENCH_CALLS` to change the sizes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_stomp::client::{Connector, Subscriber};
use async_stomp::{AckMode, FromServer, Message, ToServer};
use common::Broker;
use futures::{SinkExt, StreamExt};
use tidings_conformance::support::Note;
use tidings_core::envelope::now_ms;
use tidings_core::Bus;
use tokio::sync::{mpsc, Semaphore};

const WINDOW: usize = 100;

/// A call's deadline: tidings' default call timeout.
const DEADLINE: Duration = tidings_core::rpc::DEFAULT_CALL_TIMEOUT;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Destinations a plain program uses for the same topology the driver builds.
struct Plan {
    publish: String,
    group_sub: String,
    group_headers: Vec<(String, String)>,
    inbox_sub: String,
    inbox_send: String,
    inbox_headers: Vec<(String, String)>,
    prefetch: &'static str,
}

fn plan(broker: Broker, ns: &str, key: &str) -> Plan {
    match broker {
        Broker::RabbitMq => Plan {
            publish: format!("/topic/{ns}.{key}"),
            group_sub: format!("/topic/{ns}.{key}"),
            group_headers: vec![
                ("x-queue-name".into(), format!("{ns}.plain.{key}")),
                ("durable".into(), "true".into()),
                ("auto-delete".into(), "false".into()),
            ],
            inbox_sub: format!("/queue/{ns}.plaininbox"),
            inbox_send: format!("/amq/queue/{ns}.plaininbox"),
            inbox_headers: vec![
                ("durable".into(), "false".into()),
                ("auto-delete".into(), "true".into()),
            ],
            prefetch: "prefetch-count",
        },
        Broker::ActiveMq => Plan {
            publish: format!("/topic/VirtualTopic.{ns}.{key}"),
            group_sub: format!("/queue/Consumer.plain.VirtualTopic.{ns}.{key}"),
            group_headers: Vec::new(),
            inbox_sub: format!("/queue/tidings-private.{ns}.plaininbox"),
            inbox_send: format!("/queue/tidings-private.{ns}.plaininbox"),
            inbox_headers: Vec::new(),
            prefetch: "activemq.prefetchSize",
        },
    }
}

async fn plain_connect(broker: Broker) -> async_stomp::client::ClientTransport {
    let url = url::Url::parse(&broker.url()).unwrap();
    Connector::builder()
        .server(format!(
            "{}:{}",
            url.host_str().unwrap(),
            url.port().unwrap()
        ))
        .virtualhost("/")
        .login(url.username().to_owned())
        .passcode(url.password().unwrap_or("").to_owned())
        .connect()
        .await
        .expect("plain async-stomp connect")
}

/// `BENCH_PLAIN_METADATA=1`: the plain SENDs carry the headers a tidings envelope adds, so the
/// broker's share of the difference shows.
fn plain_metadata() -> bool {
    std::env::var_os("BENCH_PLAIN_METADATA").is_some()
}

fn send(destination: &str, body: Vec<u8>, persistent: bool, receipt: String) -> Message<ToServer> {
    let mut headers = vec![
        ("content-length".to_owned(), body.len().to_string()),
        ("receipt".to_owned(), receipt),
    ];
    if persistent {
        headers.push(("persistent".to_owned(), "true".to_owned()));
    }
    if plain_metadata() {
        // What a tidings envelope adds to a SEND to its key's topic (see
        // docs/wire-format-stomp.md): the key is in the destination, postcard is the default.
        headers.push((
            "tidings".to_owned(),
            "id=0123456789abcdef-1f2e;ts=1763880000000;event=bench;emitter=host.bench.1234"
                .to_owned(),
        ));
    }
    ToServer::Send {
        destination: destination.to_owned(),
        transaction: None,
        headers: Some(headers),
        body: Some(body),
    }
    .into()
}

fn ack(id: String) -> Message<ToServer> {
    ToServer::Ack {
        id,
        transaction: None,
    }
    .into()
}

fn push_header(message: &mut Message<ToServer>, name: &str, value: String) {
    if let ToServer::Send {
        headers: Some(headers),
        ..
    } = &mut message.content
    {
        headers.push((name.to_owned(), value));
    }
}

/// The value of the first header called `name`.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn subscribe(
    destination: &str,
    id: &str,
    headers: Vec<(String, String)>,
    ack: AckMode,
) -> Message<ToServer> {
    let mut msg = Subscriber::builder()
        .destination(destination)
        .id(id)
        .headers(headers)
        .ack(ack)
        .subscribe();
    msg.extra_headers
        .push((b"receipt".to_vec(), b"sub".to_vec()));
    msg
}

/// Reads until the RECEIPT `id`.
async fn await_receipt(t: &mut async_stomp::client::ClientTransport, id: &str) {
    while let Some(m) = t.next().await {
        if let FromServer::Receipt { receipt_id } = m.expect("frame").content {
            if receipt_id == id {
                return;
            }
        }
    }
    panic!("connection closed before receipt {id}");
}

/// A connection subscribed to the plan's group queue (`client-individual`, `prefetch`).
async fn group_consumer(
    broker: Broker,
    p: &Plan,
    prefetch: &str,
) -> async_stomp::client::ClientTransport {
    let mut consumer = plain_connect(broker).await;
    let mut headers = p.group_headers.clone();
    headers.push((p.prefetch.to_owned(), prefetch.to_owned()));
    consumer
        .send(subscribe(
            &p.group_sub,
            "c",
            headers,
            AckMode::ClientIndividual,
        ))
        .await
        .unwrap();
    await_receipt(&mut consumer, "sub").await;
    consumer
}

async fn plain_throughput(broker: Broker, ns: &str, n: usize) -> f64 {
    // Its own key: a queue bound to the key tidings publishes under would get every tidings
    // message too (twice the broker work for tidings, and 10,000 leftovers).
    let p = plan(broker, ns, "plain-tput");
    let mut consumer = group_consumer(broker, &p, "200").await;
    let (done_tx, mut done) = mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let mut seen = 0;
        while let Some(Ok(m)) = consumer.next().await {
            if let FromServer::Message { ack: Some(id), .. } = m.content {
                consumer.send(ack(id)).await.unwrap();
                seen += 1;
                if seen == n {
                    let _ = done_tx.send(()).await;
                    break;
                }
            }
        }
    });
    let publisher = plain_connect(broker).await;
    let (mut sink, mut stream) = publisher.split();
    let window = Arc::new(Semaphore::new(WINDOW));
    let receipts = {
        let window = window.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let FromServer::Receipt { .. } = m.content {
                    window.add_permits(1);
                }
            }
        })
    };
    let start = Instant::now();
    for i in 0..n {
        window.acquire().await.unwrap().forget();
        let body = format!("{{\"n\":{i},\"text\":\"note {i}\"}}").into_bytes();
        sink.send(send(&p.publish, body, true, i.to_string()))
            .await
            .unwrap();
    }
    done.recv().await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    receipts.abort();
    rate
}

async fn tidings_throughput(broker: Broker, ns: &str, n: usize) -> f64 {
    let url = broker.url_in(ns, "");
    let consumer = Bus::new(tidings_stomp::connect(&url).await.unwrap());
    let publisher = Bus::new(tidings_stomp::connect(&url).await.unwrap());
    let (done_tx, mut done) = mpsc::channel::<()>(1);
    let seen = Arc::new(AtomicU64::new(0));
    consumer
        .subscribe::<Note>("tput")
        .group(&format!("{ns}.tput"))
        .prefetch(200)
        .concurrency(1)
        .handle(move |_| {
            let seen = seen.clone();
            let done_tx = done_tx.clone();
            async move {
                if seen.fetch_add(1, Ordering::Relaxed) + 1 == n as u64 {
                    let _ = done_tx.send(()).await;
                }
                Ok(())
            }
        })
        .await
        .unwrap();
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let publisher = publisher.clone();
            async move { publisher.emit("tput", &Note::new(i as u32)).await.unwrap() }
        })
        .buffer_unordered(WINDOW)
        .collect::<Vec<_>>()
        .await;
    done.recv().await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = consumer.shutdown().await;
    let _ = publisher.shutdown().await;
    rate
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

/// A plain async-stomp caller and server: the server replies from its own connection.
struct PlainRpc {
    client: async_stomp::client::ClientTransport,
    serving: tokio::task::JoinHandle<()>,
    broker: Broker,
    publish: String,
    inbox: String,
    sent: usize,
}

impl PlainRpc {
    async fn start(broker: Broker, ns: &str) -> Self {
        let p = plan(broker, ns, "plain-rpc");
        let mut server = group_consumer(broker, &p, "10").await;
        let serving = tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(Ok(m)) = server.next().await {
                if let FromServer::Message {
                    ack: Some(id),
                    headers,
                    body,
                    ..
                } = m.content
                {
                    n += 1;
                    let (Some(reply_to), Some(correlation)) = (
                        header(&headers, "reply-to"),
                        header(&headers, "correlation-id"),
                    ) else {
                        panic!("request without reply-to / correlation-id");
                    };
                    let mut reply =
                        send(reply_to, body.unwrap_or_default(), false, format!("rep{n}"));
                    push_header(&mut reply, "correlation-id", correlation.to_owned());
                    server.send(reply).await.unwrap();
                    server.send(ack(id)).await.unwrap();
                }
            }
        });
        let mut client = plain_connect(broker).await;
        client
            .send(subscribe(
                &p.inbox_sub,
                "i",
                p.inbox_headers.clone(),
                AckMode::Auto,
            ))
            .await
            .unwrap();
        await_receipt(&mut client, "sub").await;
        Self {
            client,
            serving,
            broker,
            publish: p.publish,
            inbox: p.inbox_send,
            sent: 0,
        }
    }

    /// One call: the request's RECEIPT and the reply with the request's correlation id. Like
    /// tidings' call, the request names its reply destination and carries the call's deadline
    /// as a broker expiry, so a server never answers a caller that gave up, and the caller
    /// waits no longer than the deadline.
    async fn call(&mut self) -> Duration {
        self.sent += 1;
        let start = Instant::now();
        let correlation = self.sent.to_string();
        let mut request = send(&self.publish, vec![2, 40], true, format!("q{}", self.sent));
        push_header(&mut request, "reply-to", self.inbox.clone());
        push_header(&mut request, "correlation-id", correlation.clone());
        let (name, value) = match self.broker {
            Broker::RabbitMq => ("expiration", DEADLINE.as_millis()),
            Broker::ActiveMq => ("expires", u128::from(now_ms()) + DEADLINE.as_millis()),
        };
        push_header(&mut request, name, value.to_string());
        self.client.send(request).await.unwrap();
        let client = &mut self.client;
        let answered = async {
            let (mut receipt, mut reply) = (false, false);
            while !(receipt && reply) {
                match client.next().await.unwrap().unwrap().content {
                    FromServer::Receipt { .. } => receipt = true,
                    FromServer::Message { headers, .. } => {
                        reply |= header(&headers, "correlation-id") == Some(&correlation);
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(DEADLINE, answered)
            .await
            .expect("plain call timed out");
        start.elapsed()
    }

    fn stop(self) {
        // Closes the server's connection, so its queue can be deleted.
        self.serving.abort();
    }
}

/// A tidings caller and server, each on its own bus.
struct TidingsRpc {
    client: Bus,
    server: Bus,
    name: String,
}

impl TidingsRpc {
    async fn start(broker: Broker, ns: &str) -> Self {
        let url = broker.url_in(ns, "");
        let server = Bus::new(tidings_stomp::connect(&url).await.unwrap());
        let client = Bus::new(tidings_stomp::connect(&url).await.unwrap());
        let name = format!("{ns}.add");
        server
            .serve(&name, |pair: Vec<u8>| async move {
                Ok(pair.iter().map(|x| u64::from(*x)).sum::<u64>())
            })
            .await
            .unwrap();
        Self {
            client,
            server,
            name,
        }
    }

    async fn call(&self) -> Duration {
        let start = Instant::now();
        let sum: u64 = self.client.call(&self.name, &vec![2u8, 40]).await.unwrap();
        assert_eq!(sum, 42);
        start.elapsed()
    }

    async fn stop(self) {
        let _ = self.client.shutdown().await;
        let _ = self.server.shutdown().await;
    }
}

/// Sequential calls of both clients, interleaved one by one (who goes first alternates), so
/// that both see the same broker: its disk, its JIT and its garbage collector change over a
/// run, and a client measured after the other would get a different broker. The first 20
/// calls of each are warm-up. Returns (plain, tidings) samples; `None` for a client not run.
async fn rpc(
    broker: Broker,
    ns: &str,
    calls: usize,
    run_plain: bool,
    run_tidings: bool,
) -> (Option<Vec<Duration>>, Option<Vec<Duration>>) {
    let mut plain = if run_plain {
        Some(PlainRpc::start(broker, ns).await)
    } else {
        None
    };
    let tidings = if run_tidings {
        Some(TidingsRpc::start(broker, ns).await)
    } else {
        None
    };
    let mut plain_samples = Vec::with_capacity(calls);
    let mut tidings_samples = Vec::with_capacity(calls);
    for i in 0..calls + 20 {
        let mut took = (None, None);
        for turn in [i % 2, 1 - i % 2] {
            match (turn, &mut plain, &tidings) {
                (0, Some(p), _) => took.0 = Some(p.call().await),
                (1, _, Some(t)) => took.1 = Some(t.call().await),
                _ => {}
            }
        }
        if i >= 20 {
            plain_samples.extend(took.0);
            tidings_samples.extend(took.1);
        }
    }
    if let Some(p) = plain {
        p.stop();
    }
    if let Some(t) = tidings {
        t.stop().await;
    }
    (
        run_plain.then_some(plain_samples),
        run_tidings.then_some(tidings_samples),
    )
}

/// The medians of the runs' p50 and p99 (zero without runs).
fn median_percentiles(runs: &[(Duration, Duration)]) -> (Duration, Duration) {
    if runs.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    (
        median(runs.iter().map(|r| r.0).collect()),
        median(runs.iter().map(|r| r.1).collect()),
    )
}

/// The median of `runs`.
fn median<T: PartialOrd>(mut runs: Vec<T>) -> T {
    runs.sort_by(|a, b| a.partial_cmp(b).expect("no NaN among the runs"));
    runs.swap_remove(runs.len() / 2)
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` run passes nothing and
    // should stay quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = env_or("BENCH_MESSAGES", if quick { 200 } else { 10_000 });
    let calls = env_or("BENCH_CALLS", if quick { 20 } else { 1_000 });
    // Rounds of throughput (plain and tidings, who goes first alternating) and RPC; the medians
    // are reported.
    let rounds = env_or("BENCH_ROUNDS", if quick { 1 } else { 3 }).max(1);
    // `BENCH_ONLY=plain|tidings` runs one client (for `perf stat`), `BENCH_BROKERS=rabbitmq`
    // one broker.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let brokers = std::env::var("BENCH_BROKERS").unwrap_or_default();
    let run_plain = only != "tidings";
    let run_tidings = only != "plain";
    let rt = tokio::runtime::Builder::new_multi_thread()
        // `BENCH_WORKERS=1`: every task on one thread, to tell wake-ups across threads apart.
        .worker_threads(env_or("BENCH_WORKERS", 2))
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("| broker | client | throughput (msg/s) | RPC p50 | RPC p99 |");
        println!("|---|---|---:|---:|---:|");
        for broker in [Broker::RabbitMq, Broker::ActiveMq] {
            if !brokers.is_empty() && !brokers.contains(broker.label()) {
                continue;
            }
            let ns = format!("bench-{}", tidings_conformance::support::unique_tag());
            let (mut plain_rates, mut tidings_rates) = (Vec::new(), Vec::new());
            let (mut plain_rpc, mut tidings_rpc) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                let ns = format!("{ns}-{round}");
                // Who goes first alternates: a run leaves the broker busy for a while (acked
                // messages to clean up), which slows whoever runs next.
                for plain_turn in [round % 2 == 0, round % 2 == 1] {
                    if plain_turn && run_plain {
                        plain_rates.push(plain_throughput(broker, &ns, n).await);
                    }
                    if !plain_turn && run_tidings {
                        tidings_rates.push(tidings_throughput(broker, &ns, n).await);
                    }
                }
                if calls > 0 {
                    let (plain, tidings) = rpc(broker, &ns, calls, run_plain, run_tidings).await;
                    plain_rpc.extend(plain.map(percentiles));
                    tidings_rpc.extend(tidings.map(percentiles));
                }
            }
            let (pp50, pp99) = median_percentiles(&plain_rpc);
            let (tp50, tp99) = median_percentiles(&tidings_rpc);
            let plain_rate = if run_plain {
                median(plain_rates.clone())
            } else {
                0.0
            };
            let tidings_rate = if run_tidings {
                median(tidings_rates.clone())
            } else {
                0.0
            };
            println!(
                "| {} | async-stomp | {plain_rate:.0} | {pp50:.2?} | {pp99:.2?} |",
                broker.label()
            );
            println!(
                "| {} | tidings-stomp | {tidings_rate:.0} | {tp50:.2?} | {tp99:.2?} |",
                broker.label()
            );
            println!(
                "| {} | ratio | {:.2} | {:.2} | {:.2} |",
                broker.label(),
                tidings_rate / plain_rate,
                pp50.as_secs_f64() / tp50.as_secs_f64(),
                pp99.as_secs_f64() / tp99.as_secs_f64()
            );
            eprintln!(
                "{}: throughput runs (msg/s): plain {plain_rates:.0?}, tidings {tidings_rates:.0?}",
                broker.label()
            );
            let micros = |runs: &[(Duration, Duration)]| -> Vec<(u128, u128)> {
                runs.iter()
                    .map(|(p50, p99)| (p50.as_micros(), p99.as_micros()))
                    .collect()
            };
            eprintln!(
                "{}: RPC runs (p50, p99 in µs): plain {:?}, tidings {:?}",
                broker.label(),
                micros(&plain_rpc),
                micros(&tidings_rpc)
            );
            let namespaces: Vec<String> = (0..rounds).map(|r| format!("{ns}-{r}")).collect();
            tokio::task::spawn_blocking(move || common::admin::purge(broker, &namespaces))
                .await
                .unwrap();
        }
    });
}
