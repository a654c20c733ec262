//! tidings-amqp10 beside the fastest plain fe2o3-amqp program that keeps the same promises, on
//! the same broker in the same run:
//!
//! 1. throughput: 20,000 durable, unsettled (confirmed) messages of 100 bytes into a topic
//!    exchange, 500 in flight on both sides (a sliding window), consumed on a second connection
//!    from the durable queue `/amq/queue/Q` with link credit 500 granted when used up, each
//!    message accepted once handled (the plain consumer, like tidings, gathers its accepts and
//!    sends them in one disposition whenever nothing else is waiting); from the first publish
//!    to the last message handled, with the client's CPU time per message (user + system,
//!    whole process) beside the rate;
//! 2. RPC latency (p50/p99) of sequential calls, three programs in every round: plain "bare"
//!    (requests and replies sent pre-settled and non-durable straight to a queue, consumed
//!    pre-settled: the fastest plain RPC), plain "same promises" (what tidings does: the
//!    request durable, confirmed, with the call's deadline as its TTL, through the topic
//!    exchange to a durable queue; the caller waits for the request's confirm and the reply
//!    together; the server sends a non-durable reply to the caller's non-durable inbox queue
//!    (`/amq/queue/…`), waits for its confirm, then accepts the request), and tidings.
//!
//! Each round runs every side; the order alternates (rotates for the three RPC programs), and
//! the summary is the median over the rounds with the range (min–max).
//!
//! Run: `cargo bench -p tidings-amqp10 --bench vs_fe2o3` (broker: `TIDINGS_AMQP10_URL`).
//! `TIDINGS_BENCH_ROUNDS` (default 10); `TIDINGS_BENCH_MESSAGES` (default 20000; 0 skips the
//! throughput part); `TIDINGS_BENCH_CALLS` (default 2000; 0 skips RPC);
//! `TIDINGS_BENCH_SIDE=plain|tidings` runs one side only (for callgrind or perf);
//! `TIDINGS_BENCH_PLAIN_METADATA=1` makes the plain throughput messages carry what a tidings
//! envelope adds on the wire, which tells the cost of that metadata apart from the driver's.

#[path = "../../bench_support.rs"]
mod bench_support;

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use bench_support::{order, process_cpu, within, Phase, RpcTable, ThroughputTable};
use fe2o3_amqp::link::delivery::DeliveryFut;
use fe2o3_amqp::link::{CreditMode, SendError};
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::messaging::{Body, Data, Message, MessageId, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Receiver, Sendable, Sender};
use futures::future::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use tidings_conformance::rabbitmq::Management;
use tidings_core::Bus;

const WINDOW: usize = 500;
/// Warm-up calls before every RPC run.
const WARM_UP: usize = 100;
/// A call's deadline: tidings' default call timeout, which travels as the request's TTL.
const DEADLINE: Duration = tidings_core::rpc::DEFAULT_CALL_TIMEOUT;
/// How long one side of one round may take before the bench gives up on the broker.
const LIMIT: Duration = Duration::from_secs(600);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Messages of the throughput phase; `TIDINGS_BENCH_MESSAGES` overrides it, so that running N
/// and 2N under callgrind gives the cost per message without the set-up.
fn messages() -> usize {
    env_or("TIDINGS_BENCH_MESSAGES", 20_000)
}

/// RPC calls per program and round; `TIDINGS_BENCH_CALLS` overrides it.
fn calls() -> usize {
    env_or("TIDINGS_BENCH_CALLS", 2_000)
}

fn base_url() -> String {
    std::env::var("TIDINGS_AMQP10_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "amqp10://guest:guest@127.0.0.1:5672/".to_owned())
}

/// The management API of the bench's broker: the plain side declares and deletes its topology
/// there, as RabbitMQ cannot declare durable queues or bindings over AMQP 1.0.
fn management() -> Management {
    Management::for_broker(&base_url()).expect("broker url")
}

/// Runs blocking management calls off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Messages per second and client CPU µs per message through tidings.
async fn tidings_throughput(exchange: &str) -> (f64, f64) {
    let url = format!("{}?exchange={exchange}", base_url());
    let consumer = Bus::new(tidings_amqp10::connect(&url).await.expect("connect"));
    let publisher = Bus::new(tidings_amqp10::connect(&url).await.expect("connect"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let sub = consumer
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
    let n = messages();
    let phase = Phase::start();
    futures::stream::iter(0..n)
        .map(|_| publisher.emit("bench.item", &payload).into_future())
        .buffer_unordered(WINDOW)
        .for_each(|r| async move { r.expect("publish") })
        .await;
    for _ in 0..n {
        rx.recv().await.expect("consume");
    }
    let measured = phase.per_item(n);
    sub.unsubscribe().await;
    let _ = publisher.shutdown().await;
    let _ = consumer.shutdown().await;
    let _ = blocking(move || Management::delete_namespace_of(&url)).await;
    measured
}

/// With `TIDINGS_BENCH_PLAIN_METADATA=1` the plain side's throughput messages carry what a
/// tidings envelope adds on the wire (message id, content type, creation time and the
/// `tidings-*` application properties), which tells the cost of that metadata apart from the
/// driver's own.
fn with_metadata(mut sendable: Sendable<Body<Value>>, n: usize) -> Sendable<Body<Value>> {
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

/// What a plain message is.
#[derive(Clone, Copy)]
struct Kind {
    durable: bool,
    /// Sent settled: no confirm.
    settled: bool,
    /// The header's TTL (tidings sends the call's deadline with a request).
    ttl: Option<Duration>,
}

const CONFIRMED_DURABLE: Kind = Kind {
    durable: true,
    settled: false,
    ttl: None,
};

fn message(
    kind: Kind,
    subject: &str,
    reply_to: Option<String>,
    id: Option<MessageId>,
    correlation: Option<MessageId>,
    body: Vec<u8>,
) -> Sendable<Body<Value>> {
    let message = Message::builder()
        .header(fe2o3_amqp::types::messaging::Header {
            durable: kind.durable,
            ttl: kind.ttl.map(|t| t.as_millis().min(u32::MAX as u128) as u32),
            ..Default::default()
        })
        .properties(Properties {
            subject: Some(subject.to_owned()),
            reply_to,
            message_id: id,
            correlation_id: correlation,
            ..Default::default()
        })
        .body(Body::Data(vec![Data(Binary::from(body))].into()))
        .build();
    Sendable::builder()
        .message(message)
        .settled(kind.settled)
        .build()
}

async fn top_up(receiver: &mut Receiver, credit: u32) {
    if receiver.credit() == 0 {
        receiver.set_credit(credit).await.expect("credit");
    }
}

/// A plain connection and session.
async fn open() -> (Connection, Session) {
    let stream = tokio::net::TcpStream::connect("127.0.0.1:5672")
        .await
        .expect("tcp");
    stream.set_nodelay(true).expect("nodelay");
    let mut c = fe2o3_amqp::Connection::builder()
        .container_id(format!("plain-{}", tidings_core::envelope::new_id()))
        .hostname("vhost:/")
        .sasl_profile(("guest", "guest"))
        .open_with_stream(stream)
        .await
        .expect("open");
    let s = fe2o3_amqp::Session::begin(&mut c).await.expect("session");
    (c, s)
}

/// A plain connection and session as fe2o3 hands them out.
type Connection = fe2o3_amqp::connection::ConnectionHandle<()>;
type Session = fe2o3_amqp::session::SessionHandle<()>;

/// Closes a link, session or connection politely, but waits at most two seconds for the
/// broker's answer: RabbitMQ 3.10's AMQP 1.0 plugin sometimes never answers an `end` or a
/// `close` (the measurement is taken by then; dropping the handles closes the socket).
async fn quietly<T>(closing: impl std::future::Future<Output = T>) {
    let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
}

async fn close((mut c, mut s): (Connection, Session)) {
    quietly(s.end()).await;
    quietly(c.close()).await;
}

/// Messages per second and client CPU µs per message through plain fe2o3-amqp doing the same.
async fn plain_throughput(exchange: &str) -> (f64, f64) {
    let metadata = std::env::var("TIDINGS_BENCH_PLAIN_METADATA").is_ok_and(|v| v == "1");
    let api = management();
    let (ex, queue) = (exchange.to_owned(), format!("{exchange}.work"));
    let (e, q) = (ex.clone(), queue.clone());
    blocking(move || {
        let api = management();
        api.declare_exchange(&e, "topic").expect("declare exchange");
        api.declare_queue(&q).expect("declare queue");
        api.bind_queue(&e, &q, "bench.*").expect("bind queue");
    })
    .await;
    let (pc, mut ps) = open().await;
    let (cc, mut cs) = open().await;
    let mut sender = Sender::attach(&mut ps, "plain-send", format!("/exchange/{exchange}"))
        .await
        .expect("sender");
    let mut receiver = Receiver::builder()
        .name("plain-recv")
        .source(format!("/amq/queue/{queue}"))
        .credit_mode(CreditMode::Manual)
        .auto_accept(false)
        .attach(&mut cs)
        .await
        .expect("receiver");
    let n = messages();
    let consume = tokio::spawn(async move {
        let mut handled = Vec::with_capacity(WINDOW);
        for _ in 0..n {
            if receiver.credit() == 0 {
                // Before granting credit, settle what was handled (as tidings does).
                receiver
                    .accept_all(handled.drain(..))
                    .await
                    .expect("accept");
                top_up(&mut receiver, WINDOW as u32).await;
            }
            // `recv` is cancel-safe: when nothing is waiting, send the gathered accepts first.
            let d = match receiver.recv::<Body<Value>>().now_or_never() {
                Some(d) => d,
                None => {
                    if !handled.is_empty() {
                        receiver
                            .accept_all(handled.drain(..))
                            .await
                            .expect("accept");
                    }
                    receiver.recv::<Body<Value>>().await
                }
            }
            .expect("recv");
            // Handled: nothing to do with it but settle.
            handled.push(d);
        }
        receiver
            .accept_all(handled.drain(..))
            .await
            .expect("accept");
        receiver
    });
    let phase = Phase::start();
    let mut in_flight: FuturesUnordered<DeliveryFut<Result<Outcome, SendError>>> =
        FuturesUnordered::new();
    for i in 0..n {
        if in_flight.len() >= WINDOW {
            let outcome: Outcome = in_flight.next().await.expect("in flight").expect("confirm");
            assert!(
                matches!(outcome, Outcome::Accepted(_)),
                "broker refused a message"
            );
        }
        let mut m = message(
            CONFIRMED_DURABLE,
            "bench.item",
            None,
            None,
            None,
            vec![7u8; 100],
        );
        if metadata {
            m = with_metadata(m, i);
        }
        in_flight.push(sender.send_batchable(m).await.expect("send"));
    }
    while let Some(outcome) = in_flight.next().await {
        let outcome: Outcome = outcome.expect("confirm");
        assert!(matches!(outcome, Outcome::Accepted(_)));
    }
    let receiver = consume.await.expect("consumer");
    let measured = phase.per_item(n);
    quietly(receiver.close()).await;
    quietly(sender.close()).await;
    close((pc, ps)).await;
    close((cc, cs)).await;
    blocking(move || {
        let _ = api.delete_queue(&queue);
        let _ = api.delete_exchange(&ex);
    })
    .await;
    measured
}

/// Latencies of `calls` sequential calls through tidings, and client CPU µs per call.
async fn tidings_rpc(exchange: &str, calls: usize) -> (Vec<Duration>, f64) {
    let url = format!("{}?exchange={exchange}", base_url());
    let server = Bus::new(tidings_amqp10::connect(&url).await.expect("connect"));
    let client = Bus::new(tidings_amqp10::connect(&url).await.expect("connect"));
    let name = format!("{exchange}-add");
    let serving = server
        .serve(&name, |pair: Vec<u8>| async move {
            Ok(pair.iter().map(|x| u64::from(*x)).sum::<u64>())
        })
        .await
        .expect("serve");
    let mut latencies = Vec::with_capacity(calls);
    let mut cpu = Duration::ZERO;
    for i in 0..WARM_UP + calls {
        if i == WARM_UP {
            cpu = process_cpu();
        }
        let t = Instant::now();
        let sum: u64 = client.call(&name, &vec![2u8, 40]).await.expect("call");
        assert_eq!(sum, 42);
        if i >= WARM_UP {
            latencies.push(t.elapsed());
        }
    }
    let cpu = (process_cpu() - cpu).as_secs_f64() * 1e6 / calls.max(1) as f64;
    serving.unsubscribe().await;
    let _ = client.shutdown().await;
    let _ = server.shutdown().await;
    let _ = blocking(move || Management::delete_namespace_of(&url)).await;
    (latencies, cpu)
}

/// What a plain RPC program promises.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plain {
    /// The fastest plain RPC: everything pre-settled and non-durable, straight to queues.
    Bare,
    /// What tidings promises (see the module docs).
    Same,
}

/// Latencies of `calls` sequential calls through a plain fe2o3-amqp caller and server, and
/// client CPU µs per call (both together, as for tidings).
async fn plain_rpc(exchange: &str, calls: usize, plain: Plain) -> (Vec<Duration>, f64) {
    let same = plain == Plain::Same;
    let api = management();
    let requests_queue = format!("{exchange}.rpc");
    let inbox_queue = format!("{exchange}.inbox");
    if same {
        let (e, q) = (exchange.to_owned(), requests_queue.clone());
        blocking(move || {
            let api = management();
            api.declare_exchange(&e, "topic").expect("declare exchange");
            api.declare_queue(&q).expect("declare queue");
            api.bind_queue(&e, &q, "rpc").expect("bind queue");
        })
        .await;
    }
    let (sc, mut ss) = open().await;
    let (cc, mut cs) = open().await;
    // Consumers of `/queue/Q` make RabbitMQ declare Q non-durable (the bare request queue and
    // both inboxes), like tidings' inbox; the durable request queue was declared above.
    let settle_mode = if same {
        SenderSettleMode::Mixed
    } else {
        SenderSettleMode::Settled
    };
    let mut requests = Receiver::builder()
        .name("plain-rpc")
        .source(if same {
            format!("/amq/queue/{requests_queue}")
        } else {
            format!("/queue/{requests_queue}")
        })
        .sender_settle_mode(settle_mode.clone())
        .credit_mode(CreditMode::Manual)
        .auto_accept(false)
        .attach(&mut ss)
        .await
        .expect("rpc receiver");
    let mut inbox = Receiver::builder()
        .name("plain-inbox")
        .source(format!("/queue/{inbox_queue}"))
        .sender_settle_mode(settle_mode)
        .credit_mode(CreditMode::Manual)
        .auto_accept(false)
        .attach(&mut cs)
        .await
        .expect("inbox");
    let reply_address = format!("/amq/queue/{inbox_queue}");
    let mut replier = Sender::attach(&mut ss, "plain-reply", reply_address.clone())
        .await
        .expect("replier");
    let reply_kind = Kind {
        durable: false,
        settled: !same,
        ttl: None,
    };
    let server = tokio::spawn(async move {
        for _ in 0..WARM_UP + calls {
            top_up(&mut requests, 32).await;
            let d = requests.recv::<Body<Value>>().await.expect("request");
            let properties = d.message().properties.as_ref();
            let correlation = properties.and_then(|p| p.message_id.clone());
            let reply_to = properties
                .and_then(|p| p.reply_to.clone())
                .expect("reply-to");
            assert_eq!(reply_to, reply_address);
            // The reply, confirmed (same promises) before the request is accepted.
            let replied = replier
                .send(message(
                    reply_kind,
                    "reply",
                    None,
                    None,
                    correlation,
                    vec![42],
                ))
                .await
                .expect("reply");
            assert!(matches!(replied, Outcome::Accepted(_)));
            if same {
                requests.accept(&d).await.expect("accept");
            }
        }
        (requests, replier)
    });
    let mut sender = if same {
        Sender::attach(&mut cs, "plain-send", format!("/exchange/{exchange}"))
            .await
            .expect("sender")
    } else {
        Sender::attach(
            &mut cs,
            "plain-send",
            format!("/amq/queue/{requests_queue}"),
        )
        .await
        .expect("sender")
    };
    let request_kind = if same {
        Kind {
            durable: true,
            settled: false,
            ttl: Some(DEADLINE),
        }
    } else {
        Kind {
            durable: false,
            settled: true,
            ttl: None,
        }
    };
    let mut latencies = Vec::with_capacity(calls);
    let mut cpu = Duration::ZERO;
    for i in 0..WARM_UP + calls {
        if i == WARM_UP {
            cpu = process_cpu();
        }
        let t = Instant::now();
        let m = message(
            request_kind,
            "rpc",
            Some(format!("/amq/queue/{inbox_queue}")),
            Some(MessageId::String(format!("c{i}"))),
            None,
            vec![2, 40],
        );
        top_up(&mut inbox, 32).await;
        let reply = if same {
            // The confirm and the reply together, as tidings' call waits for them.
            let confirm = sender.send_batchable(m).await.expect("request");
            let (confirmed, reply) = tokio::join!(confirm, inbox.recv::<Body<Value>>());
            assert!(matches!(confirmed.expect("confirm"), Outcome::Accepted(_)));
            reply
        } else {
            sender.send(m).await.expect("request");
            inbox.recv::<Body<Value>>().await
        }
        .expect("reply");
        let correlation = reply
            .message()
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone());
        assert_eq!(correlation, Some(MessageId::String(format!("c{i}"))));
        if i >= WARM_UP {
            latencies.push(t.elapsed());
        }
        if same {
            inbox.accept(&reply).await.expect("accept");
        }
    }
    let cpu = (process_cpu() - cpu).as_secs_f64() * 1e6 / calls.max(1) as f64;
    let (requests, replier) = server.await.expect("server");
    quietly(requests.close()).await;
    quietly(replier.close()).await;
    quietly(sender.close()).await;
    quietly(inbox.close()).await;
    close((sc, ss)).await;
    close((cc, cs)).await;
    let exchange = exchange.to_owned();
    blocking(move || {
        let _ = api.delete_queue(&requests_queue);
        let _ = api.delete_queue(&inbox_queue);
        if same {
            let _ = api.delete_exchange(&exchange);
        }
    })
    .await;
    (latencies, cpu)
}

async fn throughput_rounds(id: &str, rounds: usize, side: &str) {
    println!(
        "throughput: {} x 100 B durable, confirmed ({WINDOW} in flight on both sides), consumed \
         with credit {WINDOW} and accepts gathered between receives; from the first publish to \
         the last message handled{}",
        messages(),
        if std::env::var("TIDINGS_BENCH_PLAIN_METADATA").is_ok_and(|v| v == "1") {
            "; plain messages carry tidings' metadata"
        } else {
            ""
        }
    );
    println!("  rates in msg/s, client CPU (user + system, whole process) in µs per message");
    let mut table = ThroughputTable::new("plain fe2o3");
    for round in 0..rounds {
        let (mut p, mut t) = (None, None);
        for s in order(round, 2) {
            if s == 0 && side != "tidings" {
                let exchange = format!("bench-{id}-p{round}");
                let run = plain_throughput(&exchange);
                p = Some(within("a plain throughput run", LIMIT, run).await);
            }
            if s == 1 && side != "plain" {
                let exchange = format!("bench-{id}-t{round}");
                let run = tidings_throughput(&exchange);
                t = Some(within("a tidings throughput run", LIMIT, run).await);
            }
        }
        println!("{}", table.record(round, p, t));
    }
    println!("{}", table.summary(rounds, ["", ""]));
}

async fn rpc_rounds(id: &str, rounds: usize, side: &str) {
    println!(
        "rpc: {} sequential calls (after {WARM_UP} warm-up calls); plain bare (pre-settled, \
         non-durable) and plain same promises (see the bench's docs); p50 / p99 in ms, client \
         CPU per call in µs",
        calls()
    );
    let mut table = RpcTable::new(["plain bare", "plain same", "tidings"]);
    for round in 0..rounds {
        let mut got = [None, None, None];
        for s in order(round, 3) {
            let run = match s {
                0 if side != "tidings" => {
                    let exchange = format!("bench-{id}-rb{round}");
                    let run = plain_rpc(&exchange, calls(), Plain::Bare);
                    within("a bare RPC run", LIMIT, run).await
                }
                1 if side != "tidings" => {
                    let exchange = format!("bench-{id}-rs{round}");
                    let run = plain_rpc(&exchange, calls(), Plain::Same);
                    within("a same-promises RPC run", LIMIT, run).await
                }
                2 if side != "plain" => {
                    let exchange = format!("bench-{id}-rt{round}");
                    within("a tidings RPC run", LIMIT, tidings_rpc(&exchange, calls())).await
                }
                _ => continue,
            };
            got[s] = Some((run.0, Some(run.1)));
        }
        println!("{}", table.record(round, got));
    }
    println!("{}", table.summary(rounds, "(below 1: tidings faster)"));
}

async fn run() {
    let side = std::env::var("TIDINGS_BENCH_SIDE").unwrap_or_default();
    let rounds = env_or("TIDINGS_BENCH_ROUNDS", 10).max(1);
    let id = tidings_conformance::support::unique_tag();
    println!(
        "RabbitMQ (AMQP 1.0) at {}; load average {}",
        base_url().split('@').next_back().unwrap_or("?"),
        bench_support::load_average()
    );
    if messages() > 0 {
        throughput_rounds(&id, rounds, &side).await;
    }
    if calls() > 0 {
        println!();
        rpc_rounds(&id, rounds, &side).await;
    }
    // What a run declared is deleted after it; anything left (a run that failed) goes now.
    let prefix = format!("bench-{id}-");
    let left = blocking(move || management().delete_queues_with_prefix(&prefix, false)).await;
    match left {
        Ok(left) if left.is_empty() => println!("left on the broker: nothing"),
        Ok(left) => println!("left on the broker, now deleted: {left:?}"),
        Err(e) => println!("could not check what is left on the broker: {e}"),
    }
    println!("load average {}", bench_support::load_average());
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Everything runs in a spawned task, on the runtime's workers, as an application's code
    // does: not on the thread that blocks on the runtime.
    runtime.block_on(async { tokio::spawn(run()).await.expect("bench") });
}
