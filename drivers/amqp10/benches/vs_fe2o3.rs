//! tidings-amqp10 beside a plain fe2o3-amqp program doing the same work on the same broker in
//! the same run: confirmed throughput to a competing-consumer queue, and RPC round-trip
//! latency (p50/p99). Both sides publish durable, unsettled (confirmed) messages into a topic
//! exchange and consume `/amq/queue/Q` with link credit granted on exhaustion.
//!
//! Besides wall-clock rates (bounded by the broker, which shares the machine) it reports the
//! client's own CPU time per message, read from `/proc/self/stat` around each phase: that is
//! what the driver costs, whatever the broker and the other processes do.
//!
//! Run: `cargo bench -p tidings-amqp10 --bench vs_fe2o3` (broker: `TIDINGS_AMQP10_URL`).
//! `TIDINGS_BENCH_SIDE=plain|tidings` runs one side only (for `perf`); `TIDINGS_BENCH_ROUNDS`
//! sets how many alternating rounds run (default 2; each round's rates are printed, then the
//! best of each side);
//! `TIDINGS_BENCH_CALLS` how many RPC calls (default 2000; 0 leaves the throughput phase alone);
//! `TIDINGS_BENCH_MESSAGES` how many messages the throughput phase sends (default 20000).

use std::time::{Duration, Instant};

use fe2o3_amqp::link::CreditMode;
use fe2o3_amqp::types::messaging::{Body, Data, Message, Properties};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Connection, Receiver, Sendable, Sender, Session};
use futures::future::join_all;
use tidings_conformance::rabbitmq::Management;
use tidings_core::Bus;

const WINDOW: usize = 500;
/// Messages of the throughput phase; `TIDINGS_BENCH_MESSAGES` overrides it (a multiple of the
/// window), so that running N and 2N under callgrind gives the cost per message without the
/// set-up.
fn messages() -> u32 {
    std::env::var("TIDINGS_BENCH_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}
/// RPC calls per side; `TIDINGS_BENCH_CALLS` overrides it (0 profiles the throughput phase
/// alone).
fn calls() -> usize {
    std::env::var("TIDINGS_BENCH_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000)
}

fn base_url() -> String {
    std::env::var("TIDINGS_AMQP10_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "amqp10://guest:guest@127.0.0.1:5672/".to_owned())
}

/// The management API of the bench's broker: the plain side declares and deletes its topology
/// there, as RabbitMQ cannot declare queues or bindings over AMQP 1.0.
fn management() -> Management {
    Management::for_broker(&base_url()).expect("broker url")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Result {
    throughput: f64,
    /// Client CPU time (user + system, all threads) per message of the throughput phase.
    cpu_per_message: Duration,
    p50: Duration,
    p99: Duration,
}

/// CPU time this process has used so far (user + system, every thread), from
/// `/proc/self/stat` (10 ms resolution; a phase takes seconds).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state = field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15, i.e. indices 11 and 12 here; USER_HZ is 100.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

async fn tidings_side(exchange: &str) -> Result {
    let url = format!("{}?exchange={exchange}", base_url());
    let consumer = Bus::new(tidings_amqp10::connect(&url).await.expect("connect"));
    let publisher = Bus::new(tidings_amqp10::connect(&url).await.expect("connect"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    consumer
        .subscribe::<Vec<u8>>("bench.*")
        .group(&format!("{exchange}-work"))
        .prefetch(WINDOW as u16)
        .handle(move |_| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(());
                Ok(())
            }
        })
        .await
        .expect("subscribe");
    let payload = vec![7u8; 100];
    let started = Instant::now();
    let cpu = process_cpu();
    for chunk in (0..messages()).collect::<Vec<_>>().chunks(WINDOW) {
        let sends = chunk
            .iter()
            .map(|_| std::future::IntoFuture::into_future(publisher.emit("bench.item", &payload)));
        for r in join_all(sends).await {
            r.expect("publish");
        }
    }
    for _ in 0..messages() {
        rx.recv().await.expect("consume");
    }
    let throughput = f64::from(messages()) / started.elapsed().as_secs_f64();
    let cpu_per_message = (process_cpu() - cpu) / messages();

    let name = format!("{exchange}-add");
    consumer
        .serve(&name, |pair: Vec<u8>| async move {
            Ok(pair.iter().map(|x| u64::from(*x)).sum::<u64>())
        })
        .await
        .expect("serve");
    let mut latencies = Vec::with_capacity(calls());
    for _ in 0..calls() {
        let t = Instant::now();
        let sum: u64 = publisher.call(&name, &vec![2u8, 40]).await.expect("call");
        assert_eq!(sum, 42);
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let _ = publisher.shutdown().await;
    let _ = consumer.shutdown().await;
    let cleanup_url = url.clone();
    let _ =
        tokio::task::spawn_blocking(move || Management::delete_namespace_of(&cleanup_url)).await;
    Result {
        throughput,
        cpu_per_message,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    }
}

/// With `TIDINGS_BENCH_PLAIN_METADATA=1` the plain side's throughput messages carry what a
/// tidings envelope adds on the wire (message id, content type, creation time and the
/// `tidings-*` application properties), which tells the cost of that metadata apart from the
/// driver's own.
fn with_metadata(mut sendable: Sendable<Body<Value>>, n: u32) -> Sendable<Body<Value>> {
    use fe2o3_amqp::types::messaging::ApplicationProperties;
    use fe2o3_amqp::types::primitives::{OrderedMap, SimpleValue, Symbol, Timestamp};
    if let Some(p) = sendable.message.properties.as_mut() {
        p.message_id = Some(format!("0123456789abcdef-{n:x}").into());
        p.content_type = Some(Symbol::from("application/postcard"));
        p.creation_time = Some(Timestamp::from_milliseconds(1_700_000_000_000));
    }
    let mut map = OrderedMap::new();
    map.insert(
        "tidings-event".to_owned(),
        SimpleValue::String("alloc::vec::Vec<u8>".to_owned()),
    );
    map.insert(
        "tidings-emitter".to_owned(),
        SimpleValue::String("host.process.12345".to_owned()),
    );
    // No `tidings-attempt`: a first attempt leaves it out.
    sendable.message.application_properties = Some(ApplicationProperties(map));
    sendable
}

fn message(
    subject: &str,
    reply_to: Option<String>,
    correlation: Option<String>,
    body: Vec<u8>,
) -> Sendable<Body<Value>> {
    let message = Message::builder()
        .header(fe2o3_amqp::types::messaging::Header {
            durable: true,
            ..Default::default()
        })
        .properties(Properties {
            subject: Some(subject.to_owned()),
            reply_to,
            correlation_id: correlation.map(Into::into),
            ..Default::default()
        })
        .body(Body::Data(vec![Data(Binary::from(body))].into()))
        .build();
    Sendable::builder().message(message).settled(false).build()
}

async fn top_up(receiver: &mut Receiver, credit: u32) {
    if receiver.credit() == 0 {
        receiver.set_credit(credit).await.expect("credit");
    }
}

async fn plain_side(exchange: &str) -> Result {
    let metadata = std::env::var("TIDINGS_BENCH_PLAIN_METADATA").is_ok_and(|v| v == "1");
    let api = management();
    api.declare_exchange(exchange, "topic")
        .expect("declare exchange");
    for (q, key) in [("work", "bench.*"), ("rpc", "rpc"), ("inbox", "")] {
        let queue = format!("{exchange}.{q}");
        api.declare_queue(&queue).expect("declare queue");
        if !key.is_empty() {
            api.bind_queue(exchange, &queue, key).expect("bind queue");
        }
    }
    let open = || async {
        let stream = tokio::net::TcpStream::connect("127.0.0.1:5672")
            .await
            .expect("tcp");
        stream.set_nodelay(true).expect("nodelay");
        let mut c = Connection::builder()
            .container_id(format!("plain-{}", tidings_core::envelope::new_id()))
            .hostname("vhost:/")
            .sasl_profile(("guest", "guest"))
            .open_with_stream(stream)
            .await
            .expect("open");
        let s = Session::begin(&mut c).await.expect("session");
        (c, s)
    };
    let (mut pc, mut ps) = open().await;
    let (mut cc, mut cs) = open().await;
    let mut sender = Sender::attach(&mut ps, "plain-send", format!("/exchange/{exchange}"))
        .await
        .expect("sender");
    let mut receiver = Receiver::builder()
        .name("plain-recv")
        .source(format!("/amq/queue/{exchange}.work"))
        .credit_mode(CreditMode::Manual)
        .auto_accept(false)
        .attach(&mut cs)
        .await
        .expect("receiver");
    let messages = messages();
    let consume = tokio::spawn(async move {
        for _ in 0..messages {
            top_up(&mut receiver, WINDOW as u32).await;
            let d = receiver.recv::<Body<Value>>().await.expect("recv");
            receiver.accept(&d).await.expect("accept");
        }
        receiver
    });
    let started = Instant::now();
    let cpu = process_cpu();
    for chunk in (0..messages).collect::<Vec<_>>().chunks(WINDOW) {
        let mut futs = Vec::with_capacity(chunk.len());
        for n in chunk {
            let mut m = message("bench.item", None, None, vec![7u8; 100]);
            if metadata {
                m = with_metadata(m, *n);
            }
            futs.push(sender.send_batchable(m).await.expect("send"));
        }
        for f in join_all(futs).await {
            f.expect("confirm");
        }
    }
    let receiver = consume.await.expect("consumer");
    let throughput = f64::from(messages) / started.elapsed().as_secs_f64();
    let cpu_per_message = (process_cpu() - cpu) / messages;
    let _ = receiver.close().await;

    // RPC: a server answering on the request's reply-to, a client with one inbox.
    let mut requests = Receiver::builder()
        .name("plain-rpc")
        .source(format!("/amq/queue/{exchange}.rpc"))
        .credit_mode(CreditMode::Manual)
        .auto_accept(false)
        .attach(&mut cs)
        .await
        .expect("rpc receiver");
    let mut replier = Sender::attach(
        &mut cs,
        "plain-reply",
        format!("/amq/queue/{exchange}.inbox"),
    )
    .await
    .expect("replier");
    let server = tokio::spawn(async move {
        for _ in 0..calls() {
            top_up(&mut requests, 32).await;
            let d = requests.recv::<Body<Value>>().await.expect("request");
            let correlation = d
                .message()
                .properties
                .as_ref()
                .and_then(|p| p.message_id.clone());
            let corr = correlation.map(|c| format!("{c:?}"));
            replier
                .send(message("reply", None, corr, vec![42]))
                .await
                .expect("reply");
            requests.accept(&d).await.expect("accept");
        }
        (requests, replier)
    });
    let mut inbox = Receiver::builder()
        .name("plain-inbox")
        .source(format!("/amq/queue/{exchange}.inbox"))
        .credit_mode(CreditMode::Manual)
        .auto_accept(false)
        .attach(&mut ps)
        .await
        .expect("inbox");
    let mut latencies = Vec::with_capacity(calls());
    for i in 0..calls() {
        let t = Instant::now();
        let mut m = message(
            "rpc",
            Some(format!("/amq/queue/{exchange}.inbox")),
            None,
            vec![2, 40],
        );
        m.message.properties.as_mut().expect("props").message_id = Some(format!("c{i}").into());
        sender.send(m).await.expect("request");
        top_up(&mut inbox, 32).await;
        let d = inbox.recv::<Body<Value>>().await.expect("reply");
        inbox.accept(&d).await.expect("accept");
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let _ = server.await;
    let _ = sender.close().await;
    let _ = inbox.close().await;
    let _ = ps.end().await;
    let _ = cs.end().await;
    let _ = pc.close().await;
    let _ = cc.close().await;
    for q in ["work", "rpc", "inbox"] {
        let _ = api.delete_queue(&format!("{exchange}.{q}"));
    }
    let _ = api.delete_exchange(exchange);
    Result {
        throughput,
        cpu_per_message,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let side = std::env::var("TIDINGS_BENCH_SIDE").unwrap_or_default();
    let rounds: usize = std::env::var("TIDINGS_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    runtime.block_on(async {
        let id = &tidings_conformance::support::unique_tag();
        // Alternating plain, tidings, plain, tidings, …: the best of each is reported.
        let (mut plain, mut tidings) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let mut line = format!("round {round}:");
            if side != "tidings" {
                let r = plain_side(&format!("bench-p{round}-{id}")).await;
                line += &format!(" plain {:.0} msg/s, p50 {:?};", r.throughput, r.p50);
                plain.push(r);
            }
            if side != "plain" {
                let r = tidings_side(&format!("bench-t{round}-{id}")).await;
                line += &format!(" tidings {:.0} msg/s, p50 {:?}", r.throughput, r.p50);
                tidings.push(r);
            }
            // Each round on its own, so that many rounds can be pooled (ratio of medians).
            println!("{line}");
        }
        let best = |all: Vec<Result>| {
            all.into_iter().reduce(|a, b| Result {
                throughput: a.throughput.max(b.throughput),
                cpu_per_message: a.cpu_per_message.min(b.cpu_per_message),
                p50: a.p50.min(b.p50),
                p99: a.p99.min(b.p99),
            })
        };
        let show = |name: &str, r: &Option<Result>| {
            if let Some(r) = r {
                println!(
                    "{name}: {:.0} msg/s, client CPU {:.1} us/msg, RPC p50 {:?}, p99 {:?}",
                    r.throughput,
                    r.cpu_per_message.as_secs_f64() * 1e6,
                    r.p50,
                    r.p99
                );
            }
        };
        let (p, t) = (best(plain), best(tidings));
        show("plain fe2o3-amqp", &p);
        show("tidings-amqp10", &t);
        let (Some(p), Some(t)) = (p, t) else { return };
        println!("| | plain fe2o3-amqp | tidings-amqp10 | ratio |");
        println!("|---|---|---|---|");
        println!(
            "| throughput ({} x 100 B, confirmed, consumed) | {:.0} msg/s | {:.0} msg/s | {:.2} |",
            messages(),
            p.throughput,
            t.throughput,
            t.throughput / p.throughput
        );
        println!(
            "| client CPU per message (publish + consume) | {:.1} us | {:.1} us | {:.2} |",
            p.cpu_per_message.as_secs_f64() * 1e6,
            t.cpu_per_message.as_secs_f64() * 1e6,
            p.cpu_per_message.as_secs_f64() / t.cpu_per_message.as_secs_f64()
        );
        println!(
            "| RPC p50 ({} sequential calls) | {:?} | {:?} | {:.2} |",
            calls(),
            p.p50,
            t.p50,
            p.p50.as_secs_f64() / t.p50.as_secs_f64()
        );
        println!(
            "| RPC p99 | {:?} | {:?} | {:.2} |",
            p.p99,
            t.p99,
            p.p99.as_secs_f64() / t.p99.as_secs_f64()
        );
    });
}
