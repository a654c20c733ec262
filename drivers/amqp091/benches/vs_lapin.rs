//! tidings on RabbitMQ against a plain lapin program doing the same work, in one run on the
//! same broker (`TIDINGS_AMQP091_URL`, default the local RabbitMQ):
//!
//! 1. throughput: 100,000 messages of 128 bytes, persistent, publisher confirms (256 in
//!    flight), one consumer with manual acks and prefetch 256; from the first publish to the
//!    last ack;
//! 2. RPC: 10,000 sequential calls, p50 and p99, every side with direct reply-to
//!    (`amq.rabbitmq.reply-to`): plain lapin "bare" (requests straight to a queue, no
//!    confirms: the fastest plain RPC it has), plain lapin "guarded" (what tidings promises:
//!    confirmed, mandatory requests with an expiration through a topic exchange to a durable
//!    queue, the reply confirmed before the request is acked), and tidings.
//!
//! Run: `cargo bench -p tidings-amqp091 --bench vs_lapin`
//! (`-- --messages N --calls N --rounds N` for other sizes, `--messages 0` for RPC only; rounds
//! alternate the sides and the median ratio is the result).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use tidings_core::driver::PublishOptions;
use tidings_core::{Bus, Bytes, Envelope};
use tokio::sync::Notify;

const BODY: usize = 128;
const WINDOW: usize = 256;
const PREFETCH: u16 = 256;

fn url() -> String {
    std::env::var("TIDINGS_AMQP091_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn tag() -> String {
    tidings_conformance::support::unique_tag()
}

/// Messages per second through tidings.
async fn tidings_throughput(n: usize) -> f64 {
    let exchange = format!("bench-tidings-{}", tag());
    let bus = Bus::new(
        tidings_amqp091::connect(&format!("{}?exchange={exchange}", url()))
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
    let body = Bytes::from(vec![7u8; BODY]);
    let start = Instant::now();
    let options = PublishOptions::default();
    futures::stream::iter(0..n)
        .map(|_| {
            let envelope = Envelope::new("bench.item", "application/octet-stream", body.clone());
            bus.publish_envelope(envelope, &options)
        })
        .buffer_unordered(WINDOW)
        .for_each(|r| async move { r.expect("publish") })
        .await;
    done.notified().await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    sub.unsubscribe().await;
    bus.shutdown().await.ok();
    cleanup(&exchange, &[format!("{exchange}.group.{group}")]).await;
    rate
}

/// Messages per second through plain lapin doing the same.
async fn lapin_throughput(n: usize) -> f64 {
    let exchange = format!("bench-lapin-{}", tag());
    let queue = format!("{exchange}.q");
    let conn = Connection::connect(&url(), ConnectionProperties::default())
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
    consumer_channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    declare_bound(&consumer_channel, &exchange, &queue, "bench.#").await;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut count = 0;
        while let Some(Ok(delivery)) = consumer.next().await {
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            count += 1;
            if count == n {
                break;
            }
        }
    });
    let body = vec![7u8; BODY];
    let start = Instant::now();
    let mut in_flight: FuturesUnordered<lapin::PublisherConfirm> = FuturesUnordered::new();
    for i in 0..n {
        if in_flight.len() >= WINDOW {
            in_flight.next().await.unwrap().unwrap();
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(i.to_string().into())
            .with_content_type("application/octet-stream".into());
        let confirm = publisher
            .basic_publish(
                exchange.as_str().into(),
                "bench.item".into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .unwrap();
        in_flight.push(confirm);
    }
    while let Some(confirm) = in_flight.next().await {
        confirm.unwrap();
    }
    reader.await.unwrap();
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = conn.close(200, "bench".into()).await;
    cleanup(&exchange, &[queue]).await;
    rate
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Sequential call latencies through tidings.
async fn tidings_rpc(calls: usize) -> Vec<Duration> {
    let exchange = format!("bench-tidings-rpc-{}", tag());
    let connect = || async {
        Bus::new(
            tidings_amqp091::connect(&format!("{}?exchange={exchange}", url()))
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
    for i in 0..calls as u64 + 200 {
        let t = Instant::now();
        let reply: u64 = client.call("bench.echo", &i).await.expect("call");
        assert_eq!(reply, i + 1);
        if i >= 200 {
            latencies.push(t.elapsed());
        }
    }
    serving.unsubscribe().await;
    client.shutdown().await.ok();
    server.shutdown().await.ok();
    cleanup(&exchange, &[format!("{exchange}.group.bench.echo")]).await;
    latencies
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

/// Sequential call latencies through plain lapin with direct reply-to.
async fn lapin_rpc(calls: usize, plain: Plain) -> Vec<Duration> {
    let guarded = plain == Plain::Guarded;
    let queue = format!("bench-lapin-rpc-{}", tag());
    let exchange = if guarded {
        format!("bench-lapin-rpc-{}", tag())
    } else {
        String::new()
    };
    let server_conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap();
    let client_conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap();
    let server = server_conn.create_channel().await.unwrap();
    server
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: guarded,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
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
    for i in 0..calls as u64 + 200 {
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
    serving.abort();
    let _ = client_conn.close(200, "bench".into()).await;
    let _ = server_conn.close(200, "bench".into()).await;
    cleanup(&exchange, &[queue]).await;
    latencies
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

async fn cleanup(exchange: &str, queues: &[String]) {
    let Ok(conn) = Connection::connect(&url(), ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(channel) = conn.create_channel().await {
        for q in queues {
            let _ = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        if !exchange.is_empty() {
            let _ = channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, "cleanup".into()).await;
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50 and p99 of `latencies`, in milliseconds.
fn latency(mut latencies: Vec<Duration>) -> (f64, f64) {
    latencies.sort();
    (
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
    )
}

/// The median of `values` (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let messages = arg("--messages", 100_000);
    let calls = arg("--calls", 10_000);
    // Rounds alternate the two sides, so a burst of load elsewhere on the machine hits both.
    let rounds = arg("--rounds", 3).max(1);
    println!(
        "RabbitMQ at {}",
        url().split('@').next_back().unwrap_or("?")
    );
    println!("warming up...");
    lapin_throughput(5_000).await;
    tidings_throughput(5_000).await;

    println!();
    println!("throughput: {messages} x {BODY} B, confirms ({WINDOW} in flight), manual acks, prefetch {PREFETCH}");
    let mut ratios = Vec::new();
    // `--messages 0` measures RPC only.
    for round in (1..=rounds).filter(|_| messages > 0) {
        let lapin_rate = lapin_throughput(messages).await;
        let tidings_rate = tidings_throughput(messages).await;
        ratios.push(tidings_rate / lapin_rate);
        println!(
            "  round {round}: plain lapin {lapin_rate:>8.0} msg/s   tidings {tidings_rate:>8.0} msg/s   ratio {:.3}",
            tidings_rate / lapin_rate
        );
    }
    if !ratios.is_empty() {
        println!(
            "  median ratio: {:.3} (tidings / lapin, target >= 0.95)",
            median(&mut ratios)
        );
    }

    println!();
    println!("rpc: {calls} sequential calls, all with direct reply-to; plain lapin bare (no confirms) and guarded (tidings' guarantees)");
    let (mut bare_ratios, mut guarded_ratios) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let bare = latency(lapin_rpc(calls, Plain::Bare).await);
        let guarded = latency(lapin_rpc(calls, Plain::Guarded).await);
        let tidings = latency(tidings_rpc(calls).await);
        bare_ratios.push(tidings.0 / bare.0);
        guarded_ratios.push(tidings.0 / guarded.0);
        println!(
            "  round {round}: p50 / p99 ms: lapin bare {:.3} / {:.3}   lapin guarded {:.3} / {:.3}   tidings {:.3} / {:.3}   p50 ratio vs bare {:.3}, vs guarded {:.3}",
            bare.0, bare.1, guarded.0, guarded.1, tidings.0, tidings.1,
            tidings.0 / bare.0, tidings.0 / guarded.0
        );
    }
    println!(
        "  median p50 ratio: vs bare {:.3} (target <= 1.1), vs guarded {:.3}",
        median(&mut bare_ratios),
        median(&mut guarded_ratios)
    );
}
