//! tidings on RabbitMQ against the fastest plain lapin program that keeps the same promises,
//! in one run on the same broker (`TIDINGS_AMQP091_URL`, default the local RabbitMQ):
//!
//! 1. throughput: 100,000 messages of 128 bytes, persistent, into a durable queue through a
//!    topic exchange, publisher confirms with 256 publishes in flight on both sides (plain:
//!    a sliding window of `basic_publish` + confirm futures, as tidings keeps), one consumer
//!    with manual acks (each acked after it is handled) and prefetch 256; from the first publish
//!    to the last ack; the client's CPU time per message (user + system, whole process) beside
//!    the rate;
//! 2. RPC: 10,000 sequential calls, p50 and p99, every side with direct reply-to
//!    (`amq.rabbitmq.reply-to`): plain lapin "bare" (requests straight to a queue, no
//!    confirms: the fastest plain RPC it has), plain lapin "guarded" (what tidings promises:
//!    confirmed, mandatory requests with an expiration through a topic exchange to a durable
//!    queue, the reply confirmed before the request is acked), and tidings.
//!
//! Every round runs every side; the order alternates (rotates for the three RPC programs) from
//! round to round, and the summary is the median over the rounds with the range (min–max).
//!
//! Run: `cargo bench -p tidings-amqp091 --bench vs_lapin`. Options (after `--`):
//! `--messages N` (0: RPC only), `--calls N` (0: throughput only), `--rounds N` (default 10),
//! `--side plain|tidings` (one side only, for callgrind or perf), `--publish-only` (no consumer:
//! the messages stay in the durable queue until it is deleted; measures the publish path),
//! `--plain-metadata` (the plain messages carry what tidings adds on the wire: a tidings-style
//! message id, the timestamp property and the `tidings-timestamp-ms` header),
//! `--plain-queued-acks` (the plain consumer acks as tidings does, `Channel::basic_ack` queued
//! and not awaited, instead of lapin's documented `Delivery::ack(..).await`), `--no-warmup`,
//! `--queue-type classic|quorum` (the durable queues of both sides), `--cluster` (the test
//! cluster of scripts/cluster.sh, tidings on all three nodes' URL and plain lapin on the first
//! node; the whole run on classic queues, then on quorum queues).

#[path = "../../bench_support.rs"]
mod bench_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_support::{order, process_cpu, within, Phase, RpcTable, ThroughputTable};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use tidings_conformance::rabbitmq::Management;
use tidings_core::driver::PublishOptions;
use tidings_core::envelope::{new_id, now_ms};
use tidings_core::{Bus, Bytes, Envelope};
use tokio::sync::Notify;

const BODY: usize = 128;
const WINDOW: usize = 256;
const PREFETCH: u16 = 256;

/// The test cluster's nodes (scripts/cluster.sh), for `--cluster`.
const CLUSTER_URL: &str = "amqp://guest:guest@127.0.0.1:5682,127.0.0.1:5683,127.0.0.1:5684/%2f";

/// The broker URL tidings connects to: `TIDINGS_AMQP091_URL`, else the test cluster's nodes with
/// `--cluster`, else the local RabbitMQ. It may list several nodes.
fn url() -> String {
    std::env::var("TIDINGS_AMQP091_URL").unwrap_or_else(|_| {
        if flag("--cluster") {
            CLUSTER_URL.to_owned()
        } else {
            "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()
        }
    })
}

/// What plain lapin connects to: the first node of [`url`] (lapin takes one host).
fn plain_url() -> String {
    let url = url();
    let Some((scheme, rest)) = url.split_once("://") else {
        return url;
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (login, hosts) = authority
        .rsplit_once('@')
        .map_or(("", authority), |(l, h)| (l, h));
    let first = hosts.split(',').next().unwrap_or(hosts);
    let at = if login.is_empty() { "" } else { "@" };
    format!("{scheme}://{login}{at}{first}{tail}")
}

/// The queue type of the durable queues both sides use in the current part of the run: 0 the
/// URL's default, 1 classic, 2 quorum.
static QUEUE_TYPE: AtomicUsize = AtomicUsize::new(0);

fn queue_type() -> Option<&'static str> {
    match QUEUE_TYPE.load(Ordering::Relaxed) {
        1 => Some("classic"),
        2 => Some("quorum"),
        _ => None,
    }
}

/// tidings' URL for `exchange`, with the current queue type.
fn tidings_url(exchange: &str) -> String {
    match queue_type() {
        Some(kind) => format!("{}?exchange={exchange}&queue-type={kind}", url()),
        None => format!("{}?exchange={exchange}", url()),
    }
}

/// Declares a durable queue for the plain side, of the current queue type: a quorum queue
/// carries the same arguments tidings gives its own (and, like tidings on RabbitMQ 3, waits a
/// moment before consuming from it: its replicas may still be starting).
async fn declare_durable(channel: &lapin::Channel, queue: &str) {
    let mut arguments = FieldTable::default();
    if queue_type() == Some("quorum") {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        arguments.insert("x-delivery-limit".into(), AMQPValue::LongInt(i32::MAX));
    }
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .unwrap();
    if queue_type() == Some("quorum") {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn text_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn tag() -> String {
    tidings_conformance::support::unique_tag()
}

/// What every exchange and queue of this run is named after: `bench-<run>-`.
fn run_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| format!("bench-{}", tag()))
}

/// How long one side of one round may take before the bench gives up on the broker.
const LIMIT: Duration = Duration::from_secs(600);

/// What a throughput run does besides publishing.
#[derive(Clone, Copy)]
struct Throughput {
    /// A consumer takes every message (else they stay queued: the publish path alone).
    consume: bool,
    /// The plain messages carry tidings' metadata.
    plain_metadata: bool,
    /// The plain consumer acks as tidings does: `Channel::basic_ack` queued, its write not
    /// awaited (instead of lapin's documented `Delivery::ack(..).await`).
    plain_queued_acks: bool,
}

/// Messages per second and client CPU µs per message through tidings.
async fn tidings_throughput(n: usize, how: Throughput) -> (f64, f64) {
    let exchange = format!("{}-tidings-{}", run_prefix(), tag());
    let bus = Bus::new(
        tidings_amqp091::connect(&tidings_url(&exchange))
            .await
            .expect("connect"),
    );
    let received = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (r, d) = (received.clone(), done.clone());
    let group = format!("{exchange}-g");
    let sub = bus
        .subscribe::<Envelope>("bench.#")
        .group(&group)
        .prefetch(PREFETCH)
        .handle(move |_| {
            let (r, d) = (r.clone(), d.clone());
            async move {
                if r.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    d.notify_one();
                }
                Ok(())
            }
        })
        .await
        .expect("subscribe");
    let sub = if how.consume {
        Some(sub)
    } else {
        // The durable group queue stays, bound, without a consumer.
        sub.unsubscribe().await;
        None
    };
    let body = Bytes::from(vec![7u8; BODY]);
    let options = PublishOptions::default();
    let phase = Phase::start();
    futures::stream::iter(0..n)
        .map(|_| {
            let envelope = Envelope::new("bench.item", "application/octet-stream", body.clone());
            bus.publish_envelope(envelope, &options)
        })
        .buffer_unordered(WINDOW)
        .for_each(|r| async move { r.expect("publish") })
        .await;
    if how.consume {
        done.notified().await;
    }
    let measured = phase.per_item(n);
    if let Some(sub) = sub {
        sub.unsubscribe().await;
    }
    bus.shutdown().await.ok();
    cleanup(&exchange).await;
    measured
}

/// Messages per second and client CPU µs per message through plain lapin doing the same: its
/// publishes pipelined (256 confirms in flight), like tidings'.
async fn lapin_throughput(n: usize, how: Throughput) -> (f64, f64) {
    let exchange = format!("{}-lapin-{}", run_prefix(), tag());
    let queue = format!("{exchange}.q");
    let conn = Connection::connect(&plain_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let publisher = conn.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let consumer_channel = conn.create_channel().await.unwrap();
    consumer_channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    declare_durable(&consumer_channel, &queue).await;
    declare_bound(&consumer_channel, &exchange, &queue, "bench.#").await;
    let reader = if how.consume {
        let mut consumer = consumer_channel
            .basic_consume(
                queue.as_str().into(),
                "bench".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let channel = consumer_channel.clone();
        Some(tokio::spawn(async move {
            let mut count = 0;
            while let Some(Ok(delivery)) = consumer.next().await {
                if how.plain_queued_acks {
                    queue_ack(&channel, delivery.delivery_tag);
                } else {
                    delivery.ack(BasicAckOptions::default()).await.unwrap();
                }
                count += 1;
                if count == n {
                    break;
                }
            }
        }))
    } else {
        None
    };
    let body = vec![7u8; BODY];
    let (publisher, body, exchange_ref) = (&publisher, &body, &exchange);
    let phase = Phase::start();
    futures::stream::iter(0..n)
        .map(|i| async move {
            let properties = if how.plain_metadata {
                // What tidings' envelope puts on the wire (see wire::encode).
                let mut headers = FieldTable::default();
                headers.insert(
                    "tidings-timestamp-ms".into(),
                    AMQPValue::LongLongInt(now_ms() as i64),
                );
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(new_id().into())
                    .with_timestamp(now_ms() / 1000)
                    .with_content_type("application/octet-stream".into())
                    .with_headers(headers)
            } else {
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(i.to_string().into())
                    .with_content_type("application/octet-stream".into())
            };
            publisher
                .basic_publish(
                    exchange_ref.as_str().into(),
                    "bench.item".into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await?
                .await
        })
        .buffer_unordered(WINDOW)
        .for_each(|confirmed| async move {
            assert!(confirmed.expect("publish").is_ack(), "broker nacked");
        })
        .await;
    if let Some(reader) = reader {
        reader.await.unwrap();
    }
    let measured = phase.per_item(n);
    let _ = conn.close(200, "bench".into()).await;
    cleanup(&exchange).await;
    measured
}

/// Acks `tag` the way tidings' driver does: the first poll of `basic_ack` checks the channel
/// and queues the frame; lapin writes it with the next frames, unawaited.
fn queue_ack(channel: &lapin::Channel, tag: u64) {
    use std::future::Future;
    let ack = std::pin::pin!(channel.basic_ack(tag, BasicAckOptions::default()));
    let waker = futures::task::noop_waker();
    if let std::task::Poll::Ready(Err(e)) = ack.poll(&mut std::task::Context::from_waker(&waker)) {
        panic!("ack: {e}");
    }
}

/// Sequential call latencies through tidings, and client CPU µs per call.
async fn tidings_rpc(calls: usize) -> (Vec<Duration>, f64) {
    let exchange = format!("{}-tidings-rpc-{}", run_prefix(), tag());
    let connect = || async {
        Bus::new(
            tidings_amqp091::connect(&tidings_url(&exchange))
                .await
                .expect("connect"),
        )
    };
    let server = connect().await;
    let client = connect().await;
    let serving = server
        .serve("bench.echo", |n: u64| async move { Ok(n + 1) })
        .await
        .expect("serve");
    let mut latencies = Vec::with_capacity(calls);
    let mut cpu = Duration::ZERO;
    for i in 0..calls as u64 + 200 {
        if i == 200 {
            cpu = process_cpu();
        }
        let t = Instant::now();
        let reply: u64 = client.call("bench.echo", &i).await.expect("call");
        assert_eq!(reply, i + 1);
        if i >= 200 {
            latencies.push(t.elapsed());
        }
    }
    let cpu = (process_cpu() - cpu).as_secs_f64() * 1e6 / calls.max(1) as f64;
    serving.unsubscribe().await;
    client.shutdown().await.ok();
    server.shutdown().await.ok();
    cleanup(&exchange).await;
    (latencies, cpu)
}

/// What the plain RPC program promises.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plain {
    /// The fastest plain RPC: requests straight to a queue, no confirms anywhere.
    Bare,
    /// What tidings promises: the request goes through a topic exchange to a durable queue,
    /// confirmed, `mandatory` (a missing server is reported) and with an expiration (the call's
    /// timeout); the server acks the request only after the broker confirmed its reply.
    Guarded,
}

/// Sequential call latencies through plain lapin with direct reply-to, and client CPU µs per
/// call.
async fn lapin_rpc(calls: usize, plain: Plain) -> (Vec<Duration>, f64) {
    let guarded = plain == Plain::Guarded;
    // The bare program declares no exchange; its queue is named after one all the same, so
    // that cleaning up is the same for both.
    let exchange = format!("{}-lapin-rpc-{}", run_prefix(), tag());
    let queue = format!("{exchange}.q");
    let server_conn = Connection::connect(&plain_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let client_conn = Connection::connect(&plain_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let server = server_conn.create_channel().await.unwrap();
    if guarded {
        declare_durable(&server, &queue).await;
    } else {
        server
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    if guarded {
        declare_bound(&server, &exchange, &queue, "bench.echo").await;
    }
    server
        .basic_qos(32, BasicQosOptions::default())
        .await
        .unwrap();
    let mut requests = server
        .basic_consume(
            queue.as_str().into(),
            "server".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let replier = if guarded {
        let replier = server_conn.create_channel().await.unwrap();
        replier
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        replier
    } else {
        server.clone()
    };
    let serving = tokio::spawn(async move {
        while let Some(Ok(request)) = requests.next().await {
            let n = u64::from_le_bytes(request.data[..8].try_into().unwrap());
            let reply_to = request.properties.reply_to().clone().unwrap();
            let properties = BasicProperties::default()
                .with_correlation_id(request.properties.correlation_id().clone().unwrap());
            let confirm = replier
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &(n + 1).to_le_bytes(),
                    properties,
                )
                .await
                .unwrap();
            if guarded {
                confirm.await.unwrap();
            }
            request.ack(BasicAckOptions::default()).await.unwrap();
        }
    });
    let client = client_conn.create_channel().await.unwrap();
    let mut replies = client
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "client".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    if guarded {
        client
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
    }
    let (target, key) = if guarded {
        (exchange.as_str(), "bench.echo")
    } else {
        ("", queue.as_str())
    };
    let mut latencies = Vec::with_capacity(calls);
    let mut cpu = Duration::ZERO;
    for i in 0..calls as u64 + 200 {
        if i == 200 {
            cpu = process_cpu();
        }
        let t = Instant::now();
        let mut properties = BasicProperties::default()
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_correlation_id(i.to_string().into());
        if guarded {
            properties = properties.with_expiration("30000".into());
        }
        let confirm = client
            .basic_publish(
                target.into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: guarded,
                    ..BasicPublishOptions::default()
                },
                &i.to_le_bytes(),
                properties,
            )
            .await
            .unwrap();
        // Like tidings, wait for the confirm and the reply together.
        let (confirmed, reply) = tokio::join!(confirm, replies.next());
        if guarded {
            let confirmed = confirmed.unwrap();
            assert!(confirmed.is_ack() && confirmed.take_message().is_none());
        }
        let reply = reply.unwrap().unwrap();
        assert_eq!(
            u64::from_le_bytes(reply.data[..8].try_into().unwrap()),
            i + 1
        );
        if i >= 200 {
            latencies.push(t.elapsed());
        }
    }
    let cpu = (process_cpu() - cpu).as_secs_f64() * 1e6 / calls.max(1) as f64;
    serving.abort();
    let _ = client_conn.close(200, "bench".into()).await;
    let _ = server_conn.close(200, "bench".into()).await;
    cleanup(&exchange).await;
    (latencies, cpu)
}

/// Declares the durable topic exchange `exchange` and binds `queue` to it with `pattern`.
async fn declare_bound(channel: &lapin::Channel, exchange: &str, queue: &str, pattern: &str) {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Deletes the exchange `exchange` and every queue `<exchange>.*` through the management API;
/// what cannot be deleted is reported (and looked for again at the end of the run).
async fn cleanup(exchange: &str) {
    let exchange = exchange.to_owned();
    let deleted = tokio::task::spawn_blocking(move || {
        Management::for_broker(&url()).and_then(|api| api.delete_namespace(&exchange))
    })
    .await
    .expect("cleanup task");
    if let Err(e) = deleted {
        eprintln!("cleanup: {e}");
    }
}

/// Looks for queues of this run left on the broker, deletes them and says so.
async fn check_left_over() {
    let found = tokio::task::spawn_blocking(|| {
        Management::for_broker(&url())
            .and_then(|api| api.delete_queues_with_prefix(&format!("{}-", run_prefix()), false))
    })
    .await
    .expect("cleanup task");
    match found {
        Ok(left) if left.is_empty() => println!("left on the broker: nothing"),
        Ok(left) => println!("left on the broker, now deleted: {left:?}"),
        Err(e) => println!("could not check what is left on the broker: {e}"),
    }
}

/// Which sides run.
#[derive(Clone, Copy)]
struct Sides {
    plain: bool,
    tidings: bool,
}

async fn throughput_rounds(messages: usize, rounds: usize, sides: Sides, how: Throughput) {
    let what = if how.consume {
        "from the first publish to the last ack"
    } else {
        "publish only (no consumer), from the first publish to the last confirm"
    };
    println!(
        "throughput: {messages} x {BODY} B persistent into a durable queue, confirms ({WINDOW} in \
         flight on both sides), manual acks, prefetch {PREFETCH}; {what}{}",
        if how.plain_metadata {
            "; plain messages carry tidings' metadata"
        } else {
            ""
        }
    );
    println!(
        "  plain acks {}",
        if how.plain_queued_acks {
            "as tidings does: Channel::basic_ack queued, its write not awaited"
        } else {
            "with lapin's documented Delivery::ack(..).await (through lapin's internal task)"
        }
    );
    println!("  rates in msg/s, client CPU (user + system, whole process) in µs per message");
    let mut table = ThroughputTable::new("plain lapin");
    for round in 0..rounds {
        let (mut p, mut t) = (None, None);
        for side in order(round, 2) {
            if side == 0 && sides.plain {
                let run = lapin_throughput(messages, how);
                p = Some(within("a plain throughput run", LIMIT, run).await);
            }
            if side == 1 && sides.tidings {
                let run = tidings_throughput(messages, how);
                t = Some(within("a tidings throughput run", LIMIT, run).await);
            }
        }
        println!("{}", table.record(round, p, t));
    }
    println!(
        "{}",
        table.summary(rounds, ["(target >= 0.95)", "(target <= 1.0)"])
    );
}

async fn rpc_rounds(calls: usize, rounds: usize, sides: Sides) {
    println!(
        "rpc: {calls} sequential calls (after 200 warm-up calls), all with direct reply-to; plain \
         lapin bare (no confirms, no durable queue) and guarded (tidings' promises); p50 / p99 in \
         ms, client CPU per call in µs"
    );
    let mut table = RpcTable::new(["lapin bare", "lapin guarded", "tidings"]);
    for round in 0..rounds {
        let mut got = [None, None, None];
        for side in order(round, 3) {
            let run = match side {
                0 if sides.plain => {
                    within("a bare RPC run", LIMIT, lapin_rpc(calls, Plain::Bare)).await
                }
                1 if sides.plain => {
                    within("a guarded RPC run", LIMIT, lapin_rpc(calls, Plain::Guarded)).await
                }
                2 if sides.tidings => within("a tidings RPC run", LIMIT, tidings_rpc(calls)).await,
                _ => continue,
            };
            got[side] = Some((run.0, Some(run.1)));
        }
        println!("{}", table.record(round, got));
    }
    println!("{}", table.summary(rounds, "(target <= 1.1 vs bare)"));
}

async fn run() {
    let messages = arg("--messages", 100_000);
    let calls = arg("--calls", 10_000);
    let rounds = arg("--rounds", 10).max(1);
    let side = text_arg("--side").unwrap_or_default();
    let sides = Sides {
        plain: side != "tidings",
        tidings: side != "plain",
    };
    let how = Throughput {
        consume: !flag("--publish-only"),
        plain_metadata: flag("--plain-metadata"),
        plain_queued_acks: flag("--plain-queued-acks"),
    };
    println!(
        "RabbitMQ at {}; load average {}",
        url().split('@').next_back().unwrap_or("?"),
        bench_support::load_average()
    );
    if !flag("--no-warmup") {
        println!("warming up...");
        if sides.plain {
            lapin_throughput(5_000, how).await;
        }
        if sides.tidings {
            tidings_throughput(5_000, how).await;
        }
    }
    // `--cluster`: the whole run on classic queues, then on quorum queues (both sides on the
    // same type); `--queue-type T`: on that type; else the URL's default.
    let types: Vec<usize> = match (flag("--cluster"), text_arg("--queue-type").as_deref()) {
        (_, Some("classic")) => vec![1],
        (_, Some("quorum")) => vec![2],
        (_, Some(other)) => panic!("--queue-type {other}: classic or quorum"),
        (true, None) => vec![1, 2],
        (false, None) => vec![0],
    };
    for kind in types {
        QUEUE_TYPE.store(kind, Ordering::Relaxed);
        if let Some(kind) = queue_type() {
            println!("\n=== durable queues: {kind} (both sides) ===");
        }
        if messages > 0 {
            println!();
            throughput_rounds(messages, rounds, sides, how).await;
        }
        if calls > 0 {
            println!();
            rpc_rounds(calls, rounds, sides).await;
        }
    }
    check_left_over().await;
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
