//! tidings-stomp beside the fastest plain async-stomp program that keeps the same promises, on
//! both brokers, in the same run:
//!
//! - throughput to a group: every SEND persistent and confirmed by a RECEIPT, 100 publishes in
//!   flight, every delivery acked (`client-individual`, prefetch 200), one message handled at a
//!   time; from the first publish to the last delivery, with the client's CPU time per message
//!   (user + system, whole process) beside the rate. Like tidings, the plain program writes
//!   what it has in one go: its SENDs are fed to the connection and flushed when the window is
//!   full, its ACKs flushed when no delivery is waiting (`BENCH_PLAIN_FLUSH=each` flushes every
//!   frame on its own, as the bench did before);
//! - RPC round trips (p50, p99) of sequential calls, three programs interleaved call by call:
//!   plain "bare" (request and reply non-persistent, no receipts, no deadline, the server's
//!   subscription `auto`-acked: the fastest plain RPC), plain "same promises" (what
//!   `Bus::call` / `Bus::serve` do: the request persistent with a receipt, the call's deadline
//!   as a broker expiry, `reply-to` and `correlation-id`; the caller waits for the RECEIPT and
//!   the reply together; the server replies with a receipt and ACKs the request only once the
//!   reply's RECEIPT came), and tidings.
//!
//! Each round runs every part on fresh connections; the order of the sides alternates
//! (rotates, call by call, for RPC), and the summary is the median over the rounds with the
//! range (min–max).
//!
//! `cargo bench -p tidings-stomp --bench vs_async_stomp`; numbers go in
//! `docs/benchmarks-stomp.md`. `BENCH_MESSAGES` (10,000), `BENCH_CALLS` (1,000), `BENCH_ROUNDS`
//! (10), `BENCH_BROKERS=rabbitmq|activemq` one broker, `BENCH_ONLY=plain|tidings` one client
//! (for `perf` or callgrind), `BENCH_PLAIN_METADATA=1` adds tidings' `tidings` header to the
//! plain SENDs, `BENCH_WORKERS` the tokio worker threads (2).

#[path = "../tests/common/mod.rs"]
mod common;

#[path = "../../bench_support.rs"]
mod bench_support;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_stomp::client::{Connector, Subscriber};
use async_stomp::{AckMode, FromServer, Message, ToServer};
use bench_support::{order, within, Phase, RpcTable, ThroughputTable};
use common::Broker;
use futures::{FutureExt, SinkExt, StreamExt};
use tidings_conformance::support::Note;
use tidings_core::envelope::now_ms;
use tidings_core::Bus;
use tokio::sync::{mpsc, Semaphore};

const WINDOW: usize = 100;

/// A call's deadline: tidings' default call timeout.
const DEADLINE: Duration = tidings_core::rpc::DEFAULT_CALL_TIMEOUT;

/// How long one part of one round may take before the bench gives up on the broker.
const LIMIT: Duration = Duration::from_secs(600);

/// Warm-up calls of every RPC program per round.
const WARM_UP: usize = 20;

type Transport = async_stomp::client::ClientTransport;

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
            inbox_sub: format!("/queue/{ns}.{key}-inbox"),
            inbox_send: format!("/amq/queue/{ns}.{key}-inbox"),
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
            inbox_sub: format!("/queue/tidings-private.{ns}.{key}-inbox"),
            inbox_send: format!("/queue/tidings-private.{ns}.{key}-inbox"),
            inbox_headers: Vec::new(),
            prefetch: "activemq.prefetchSize",
        },
    }
}

async fn plain_connect(broker: Broker) -> Transport {
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

/// `BENCH_PLAIN_FLUSH=each`: the plain throughput program flushes every frame on its own.
fn flush_each() -> bool {
    std::env::var("BENCH_PLAIN_FLUSH").is_ok_and(|v| v == "each")
}

fn send(
    destination: &str,
    body: Vec<u8>,
    persistent: bool,
    receipt: Option<String>,
) -> Message<ToServer> {
    let mut headers = vec![("content-length".to_owned(), body.len().to_string())];
    if let Some(receipt) = receipt {
        headers.push(("receipt".to_owned(), receipt));
    }
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

/// Reads until the RECEIPT `id`; a MESSAGE read meanwhile goes to `held`.
async fn await_receipt(t: &mut Transport, id: &str, held: &mut VecDeque<FromServer>) {
    while let Some(m) = t.next().await {
        match m.expect("frame").content {
            FromServer::Receipt { receipt_id } if receipt_id == id => return,
            message @ FromServer::Message { .. } => held.push_back(message),
            _ => {}
        }
    }
    panic!("connection closed before receipt {id}");
}

/// A connection subscribed to the plan's group queue.
async fn group_consumer(broker: Broker, p: &Plan, prefetch: &str, mode: AckMode) -> Transport {
    let mut consumer = plain_connect(broker).await;
    let mut headers = p.group_headers.clone();
    headers.push((p.prefetch.to_owned(), prefetch.to_owned()));
    consumer
        .send(subscribe(&p.group_sub, "c", headers, mode))
        .await
        .unwrap();
    await_receipt(&mut consumer, "sub", &mut VecDeque::new()).await;
    consumer
}

/// Messages per second and client CPU µs per message through plain async-stomp.
async fn plain_throughput(broker: Broker, ns: &str, n: usize) -> (f64, f64) {
    // Its own key: a queue bound to the key tidings publishes under would get every tidings
    // message too (twice the broker work for tidings, and 10,000 leftovers).
    let p = plan(broker, ns, "plain-tput");
    let each = flush_each();
    let mut consumer = group_consumer(broker, &p, "200", AckMode::ClientIndividual).await;
    let (done_tx, mut done) = mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            // `next` is cancel-safe: when no delivery is waiting, write the ACKs fed so far.
            let m = match consumer.next().now_or_never() {
                Some(m) => m,
                None => {
                    consumer.flush().await.unwrap();
                    consumer.next().await
                }
            };
            let Some(Ok(m)) = m else { break };
            if let FromServer::Message { ack: Some(id), .. } = m.content {
                if each {
                    consumer.send(ack(id)).await.unwrap();
                } else {
                    consumer.feed(ack(id)).await.unwrap();
                }
                seen += 1;
                if seen == n {
                    consumer.flush().await.unwrap();
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
    let phase = Phase::start();
    for i in 0..n {
        let permit = match window.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                // The window is full: write what was fed, then wait for a receipt.
                sink.flush().await.unwrap();
                window.acquire().await.unwrap()
            }
        };
        permit.forget();
        let body = format!("{{\"n\":{i},\"text\":\"note {i}\"}}").into_bytes();
        let frame = send(&p.publish, body, true, Some(i.to_string()));
        if each {
            sink.send(frame).await.unwrap();
        } else {
            sink.feed(frame).await.unwrap();
        }
    }
    sink.flush().await.unwrap();
    done.recv().await;
    let measured = phase.per_item(n);
    receipts.abort();
    measured
}

/// Messages per second and client CPU µs per message through tidings.
async fn tidings_throughput(broker: Broker, ns: &str, n: usize) -> (f64, f64) {
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
    let phase = Phase::start();
    futures::stream::iter(0..n)
        .map(|i| {
            let publisher = publisher.clone();
            async move { publisher.emit("tput", &Note::new(i as u32)).await.unwrap() }
        })
        .buffer_unordered(WINDOW)
        .collect::<Vec<_>>()
        .await;
    done.recv().await;
    let measured = phase.per_item(n);
    let _ = consumer.shutdown().await;
    let _ = publisher.shutdown().await;
    measured
}

/// A plain async-stomp caller and server: the server replies from its own connection.
struct PlainRpc {
    client: Transport,
    serving: tokio::task::JoinHandle<()>,
    broker: Broker,
    /// Keeps tidings' promises (else: bare).
    same: bool,
    publish: String,
    inbox: String,
    sent: usize,
}

impl PlainRpc {
    async fn start(broker: Broker, ns: &str, same: bool) -> Self {
        let p = plan(
            broker,
            ns,
            if same { "plain-rpc" } else { "plain-bare-rpc" },
        );
        let mode = if same {
            AckMode::ClientIndividual
        } else {
            AckMode::Auto
        };
        let mut server = group_consumer(broker, &p, "10", mode).await;
        let serving = tokio::spawn(async move {
            let mut n = 0u64;
            let mut held = VecDeque::new();
            loop {
                let frame = match held.pop_front() {
                    Some(frame) => frame,
                    None => match server.next().await {
                        Some(Ok(m)) => m.content,
                        _ => break,
                    },
                };
                let FromServer::Message {
                    ack: ack_id,
                    headers,
                    body,
                    ..
                } = frame
                else {
                    continue;
                };
                n += 1;
                let (Some(reply_to), Some(correlation)) = (
                    header(&headers, "reply-to"),
                    header(&headers, "correlation-id"),
                ) else {
                    panic!("request without reply-to / correlation-id");
                };
                let receipt = same.then(|| format!("rep{n}"));
                let mut reply = send(reply_to, body.unwrap_or_default(), false, receipt.clone());
                push_header(&mut reply, "correlation-id", correlation.to_owned());
                server.send(reply).await.unwrap();
                if let (Some(receipt), Some(id)) = (receipt, ack_id) {
                    // At least once: the request is acked only once the reply is stored.
                    await_receipt(&mut server, &receipt, &mut held).await;
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
        await_receipt(&mut client, "sub", &mut VecDeque::new()).await;
        Self {
            client,
            serving,
            broker,
            same,
            publish: p.publish,
            inbox: p.inbox_send,
            sent: 0,
        }
    }

    /// One call. Same promises: like tidings' call, the request is persistent with a receipt,
    /// names its reply destination and carries the call's deadline as a broker expiry, so a
    /// server never answers a caller that gave up; the caller waits for the RECEIPT and the
    /// reply with its correlation id, no longer than the deadline. Bare: a non-persistent
    /// request without receipt or expiry, and the reply.
    async fn call(&mut self) -> Duration {
        self.sent += 1;
        let start = Instant::now();
        let correlation = self.sent.to_string();
        let receipt = self.same.then(|| format!("q{}", self.sent));
        let mut request = send(&self.publish, vec![2, 40], self.same, receipt);
        push_header(&mut request, "reply-to", self.inbox.clone());
        push_header(&mut request, "correlation-id", correlation.clone());
        if self.same {
            let (name, value) = match self.broker {
                Broker::RabbitMq => ("expiration", DEADLINE.as_millis()),
                Broker::ActiveMq => ("expires", u128::from(now_ms()) + DEADLINE.as_millis()),
            };
            push_header(&mut request, name, value.to_string());
        }
        self.client.send(request).await.unwrap();
        let client = &mut self.client;
        let mut receipt = !self.same;
        let answered = async {
            let mut reply = false;
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

/// The RPC programs, in the order of the results.
const RPC_NAMES: [&str; 3] = ["plain bare", "plain same", "tidings"];

/// Sequential calls of the three programs, interleaved one by one (who goes first rotates
/// with every call), so that all see the same broker: its disk, its JIT and its garbage
/// collector change over a run, and a client measured after the other would get a different
/// broker. The first calls of each are warm-up. Returns each program's samples (`None` for a
/// program not run).
async fn rpc(broker: Broker, ns: &str, calls: usize, run: [bool; 3]) -> [Option<Vec<Duration>>; 3] {
    let mut bare = if run[0] {
        Some(PlainRpc::start(broker, ns, false).await)
    } else {
        None
    };
    let mut same = if run[1] {
        Some(PlainRpc::start(broker, ns, true).await)
    } else {
        None
    };
    let tidings = if run[2] {
        Some(TidingsRpc::start(broker, ns).await)
    } else {
        None
    };
    let mut samples: [Vec<Duration>; 3] = Default::default();
    for i in 0..calls + WARM_UP {
        for program in order(i, 3) {
            let took = match (program, &mut bare, &mut same, &tidings) {
                (0, Some(p), _, _) => p.call().await,
                (1, _, Some(p), _) => p.call().await,
                (2, _, _, Some(t)) => t.call().await,
                _ => continue,
            };
            if i >= WARM_UP {
                samples[program].push(took);
            }
        }
    }
    for p in [bare, same].into_iter().flatten() {
        p.stop();
    }
    if let Some(t) = tidings {
        t.stop().await;
    }
    let [a, b, c] = samples;
    [
        run[0].then_some(a),
        run[1].then_some(b),
        run[2].then_some(c),
    ]
}

async fn bench(broker: Broker, n: usize, calls: usize, rounds: usize, only: &str) {
    let (run_plain, run_tidings) = (only != "tidings", only != "plain");
    let ns = format!("bench-{}", tidings_conformance::support::unique_tag());
    println!(
        "{}: throughput {n} messages (persistent, receipts, {WINDOW} in flight, client-individual \
         acks, prefetch 200{}), rates in msg/s, client CPU (user + system, whole process) in µs \
         per message",
        broker.label(),
        if flush_each() {
            "; plain flushes every frame"
        } else {
            "; plain batches its writes"
        }
    );
    let mut throughput = ThroughputTable::new("async-stomp");
    let mut calls_table = RpcTable::new(RPC_NAMES);
    let mut rpc_lines = Vec::new();
    for round in 0..rounds {
        let ns = format!("{ns}-{round}");
        let (mut p, mut t) = (None, None);
        for side in order(round, 2) {
            if n == 0 {
                break;
            }
            if side == 0 && run_plain {
                let run = plain_throughput(broker, &ns, n);
                p = Some(within("a plain throughput run", LIMIT, run).await);
            }
            if side == 1 && run_tidings {
                let run = tidings_throughput(broker, &ns, n);
                t = Some(within("a tidings throughput run", LIMIT, run).await);
            }
        }
        if n > 0 {
            println!("{}", throughput.record(round, p, t));
        }
        if calls > 0 {
            let got = rpc(broker, &ns, calls, [run_plain, run_plain, run_tidings]).await;
            rpc_lines.push(calls_table.record(round, got.map(|run| run.map(|l| (l, None)))));
        }
    }
    if n > 0 {
        println!("{}", throughput.summary(rounds, ["", ""]));
    }
    if calls > 0 {
        println!(
            "{}: rpc, {calls} sequential calls per program and round (after {WARM_UP} warm-up \
             calls), interleaved call by call; plain bare (non-persistent, no receipts, no \
             expiry, auto ack) and plain same promises; p50 / p99 in ms",
            broker.label()
        );
        for line in rpc_lines {
            println!("{line}");
        }
        println!(
            "{}",
            calls_table.summary(rounds, "(below 1: tidings faster)")
        );
    }
    let namespaces: Vec<String> = (0..rounds).map(|r| format!("{ns}-{r}")).collect();
    tokio::task::spawn_blocking(move || common::admin::purge(broker, &namespaces))
        .await
        .unwrap();
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` run passes nothing and
    // should stay quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = env_or("BENCH_MESSAGES", if quick { 200 } else { 10_000 });
    let calls = env_or("BENCH_CALLS", if quick { 20 } else { 1_000 });
    let rounds = env_or("BENCH_ROUNDS", if quick { 1 } else { 10 }).max(1);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let brokers = std::env::var("BENCH_BROKERS").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        // `BENCH_WORKERS=1`: every task on one thread, to tell wake-ups across threads apart.
        .worker_threads(env_or("BENCH_WORKERS", 2))
        .enable_all()
        .build()
        .unwrap();
    println!("load average {}", bench_support::load_average());
    // Everything runs in a spawned task, on the runtime's workers, as an application's code
    // does: not on the thread that blocks on the runtime.
    rt.block_on(async move {
        tokio::spawn(async move {
            for broker in [Broker::RabbitMq, Broker::ActiveMq] {
                if !brokers.is_empty() && !brokers.contains(broker.label()) {
                    continue;
                }
                bench(broker, n, calls, rounds, &only).await;
                println!();
            }
        })
        .await
        .unwrap();
    });
    println!("load average {}", bench_support::load_average());
}
