//! Fault tests against the local RabbitMQ: a consumer killed with SIGKILL and the broker closing
//! every connection of a bus mid-flow (messages, then calls), on the shared broker (only this
//! test's own connections are closed); and a broker node stopped and started again, or killed
//! with SIGKILL and started again, on node 3 of the test cluster (`scripts/cluster.sh`,
//! `tidings3@localhost` on 127.0.0.1:5684), never on the shared broker. Each asserts that no
//! message is lost. They run one at a time (a global lock) and always restart the node; the
//! restart tests also hold the test cluster (`cluster::exclusive`) against other test binaries.

mod support;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tidings_conformance::cluster::{self, Node};
use tidings_conformance::rabbitmq::Namespace;
use tidings_core::driver::Status;
use tidings_core::Bus;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Serialises the fault tests: they disturb the brokers they run on.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Set in the child process that `kill_9_consumer` starts: `<exchange> <group>`.
const CHILD_ENV: &str = "TIDINGS_AMQP091_FAULT_CHILD";

async fn bus(exchange: &str) -> Bus {
    let url = support::url_with(&format!("exchange={exchange}&publish_timeout_ms=60000"));
    Bus::new(
        tidings_amqp091::connect(&url)
            .await
            .expect("broker reachable"),
    )
}

/// An exchange of the test's own on the shared broker, deleted with its queues when the test
/// ends, even when it fails.
fn namespace(test: &str) -> Namespace {
    Namespace::new(&support::broker_url(), &format!("fault-{test}"))
}

/// The test cluster's node that the restart tests stop and kill (`scripts/cluster.sh`).
const CLUSTER_NODE: Node = Node(3);

/// Its AMQP URL: guest may log in because the node listens on 127.0.0.1 only.
fn cluster_node_url() -> String {
    format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        CLUSTER_NODE.amqp_port()
    )
}

/// An exchange of the test's own on the cluster node, deleted with its queues (through the
/// node's management API) when the test ends.
fn cluster_namespace(test: &str) -> Namespace {
    let broker = format!(
        "{}?management={}",
        cluster_node_url(),
        CLUSTER_NODE.management()
    );
    Namespace::new(&broker, &format!("fault-{test}"))
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The child side of `kill_9_consumer`: joins the group and hangs in the first handler.
#[tokio::test]
#[ignore = "started by kill_9_consumer as a child process"]
async fn fault_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (exchange, group) = spec.split_once(' ').expect("exchange and group");
    let bus = bus(exchange).await;
    bus.subscribe::<u32>("work")
        .group(group)
        .prefetch(10)
        .handle(|n| async move {
            use std::io::Write;
            println!("HANDLING {n}");
            let _ = std::io::stdout().flush();
            std::future::pending::<()>().await;
            Ok(())
        })
        .await
        .expect("subscribe");
    println!("READY");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::future::pending::<()>().await;
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Reads the child's output up to the first line containing `prefix`.
async fn wait_line(mut lines: Lines, prefix: &str) -> (String, Lines) {
    loop {
        match lines.next_line().await {
            Ok(Some(line)) if line.contains(prefix) => return (line, lines),
            Ok(Some(_)) => {}
            other => panic!("child ended before printing {prefix}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_consumer_hands_its_unacked_messages_to_another_worker() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let namespace = namespace("kill9");
    let exchange = namespace.exchange().to_owned();
    let group = format!("{exchange}-workers");

    let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "fault_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{exchange} {group}"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("child starts");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (_, lines) = tokio::time::timeout(Duration::from_secs(30), wait_line(lines, "READY"))
        .await
        .expect("child ready in time");

    let publisher = bus(&exchange).await;
    for n in 0..20u32 {
        publisher.emit("work", &n).await.expect("publish");
    }
    let (line, _) = tokio::time::timeout(Duration::from_secs(30), wait_line(lines, "HANDLING"))
        .await
        .expect("child started handling");
    println!("child: {line}; killing it with SIGKILL");
    child.start_kill().expect("SIGKILL");
    let status = child.wait().await.expect("child reaped");
    println!("child exit: {status}");

    let survivor = bus(&exchange).await;
    let seen: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let sink = seen.clone();
    survivor
        .subscribe::<u32>("work")
        .group(&group)
        .handle_message(move |m| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().insert(*m.event(), m.attempt());
                Ok(())
            }
        })
        .await
        .expect("survivor subscribes");
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let missing: Vec<u32> = (0..20).filter(|n| !seen.contains_key(n)).collect();
    assert!(missing.is_empty(), "lost after SIGKILL: {missing:?}");
    let redelivered = seen.values().filter(|a| **a >= 2).count();
    println!("all 20 delivered to the survivor; {redelivered} counted as attempt >= 2");
    assert!(
        seen[&0] >= 2,
        "the message being handled when the child died should be attempt 2"
    );
    publisher.shutdown().await.ok();
    survivor.shutdown().await.ok();
}

/// Closes, from the broker side, every connection of the buses on `exchange` (the driver names
/// its connections `tidings (<exchange>)`). This is what `rabbitmqctl close_all_connections`
/// does, limited to this test's connections so other users of the shared broker are spared.
fn close_connections_of(exchange: &str) -> usize {
    let listing = rabbitmqctl(&[
        "list_connections",
        "pid",
        "client_properties",
        "--formatter",
        "json",
        "-q",
    ]);
    let connections: serde_json::Value = serde_json::from_str(&listing).unwrap_or_default();
    let wanted = format!("tidings ({exchange})");
    let mut closed = 0;
    for c in connections.as_array().into_iter().flatten() {
        let mine = c
            .get("client_properties")
            .is_some_and(|p| p.to_string().contains(&wanted));
        if let (true, Some(pid)) = (mine, c.get("pid").and_then(|p| p.as_str())) {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["close_connection", pid, "fault test: closed by the broker"])
                .output();
            closed += 1;
        }
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_closing_connections_mid_flow_loses_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let namespace = namespace("closeall");
    let exchange = namespace.exchange().to_owned();
    let group = format!("{exchange}-g");
    const TOTAL: u32 = 10_000;

    let consumer = bus(&exchange).await;
    let seen: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let sink = seen.clone();
    consumer
        .subscribe::<u32>("flow.#")
        .group(&group)
        .prefetch(256)
        .concurrency(8)
        .handle(move |n| {
            let sink = sink.clone();
            async move {
                *sink.lock().unwrap().entry(n).or_default() += 1;
                Ok(())
            }
        })
        .await
        .expect("subscribe");
    let mut status = consumer.status();

    let publisher = bus(&exchange).await;
    let publishing = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            futures::stream::iter(0..TOTAL)
                .map(|n| {
                    let publisher = publisher.clone();
                    async move { publisher.emit("flow.item", &n).await.map_err(|e| (n, e)) }
                })
                .buffer_unordered(64)
                .filter_map(|r| async move { r.err() })
                .collect::<Vec<_>>()
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < (TOTAL / 3) as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at = seen.lock().unwrap().len();
    let closed = tokio::task::spawn_blocking({
        let exchange = exchange.clone();
        move || close_connections_of(&exchange)
    })
    .await
    .unwrap();
    println!("closed {closed} connections from the broker side after {at} of {TOTAL} messages");
    assert!(
        closed >= 2,
        "expected to close the publisher's and the consumer's connections"
    );

    let failures = publishing.await.expect("publisher task");
    assert!(
        failures.is_empty(),
        "publishes failed: {:?}",
        &failures[..failures.len().min(5)]
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().len() < TOTAL as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let missing: Vec<u32> = (0..TOTAL).filter(|n| !seen.contains_key(n)).collect();
    let duplicates: u32 = seen.values().map(|c| c - 1).sum();
    println!(
        "delivered {} distinct of {TOTAL}; {duplicates} duplicate deliveries (at-least-once redelivery after the reconnect)",
        seen.len()
    );
    assert!(
        missing.is_empty(),
        "{} lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        status.borrow_and_update().is_connected(),
        "status after reconnect: {:?}",
        *status.borrow()
    );
    publisher.shutdown().await.ok();
    consumer.shutdown().await.ok();
}

/// Calls keep working across a connection loss: after the reconnect the new request channels
/// consume direct reply-to again and hand their replies to the same inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_work_again_after_the_broker_closes_the_connections() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let namespace = namespace("rpcclose");
    let exchange = namespace.exchange().to_owned();
    let server = bus(&exchange).await;
    let client = bus(&exchange).await;
    let _serving = server
        .serve("math.double", |n: u64| async move { Ok(n * 2) })
        .await
        .expect("serve");
    let before: u64 = client.call("math.double", &21u64).await.expect("call");
    assert_eq!(before, 42);

    let closed = tokio::task::spawn_blocking({
        let exchange = exchange.clone();
        move || close_connections_of(&exchange)
    })
    .await
    .unwrap();
    assert!(closed >= 2, "expected to close both buses' connections");
    for bus in [&server, &client] {
        let mut status = bus.status();
        tokio::time::timeout(
            Duration::from_secs(30),
            status.wait_for(Status::is_connected),
        )
        .await
        .expect("reconnected")
        .expect("status watch");
    }
    // The server's subscription follows the reconnect on its own: retry until it is back.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        match client
            .call::<u64, u64>("math.double", &50u64)
            .timeout(Duration::from_secs(2))
            .await
        {
            Ok(n) => break n,
            Err(e) if Instant::now() < deadline => println!("not yet: {e}"),
            Err(e) => panic!("no call succeeded after the reconnect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(after, 100);
    for n in 0..20u64 {
        let got: u64 = client.call("math.double", &n).await.expect("call");
        assert_eq!(got, n * 2);
    }
    client.shutdown().await.ok();
    server.shutdown().await.ok();
}

/// RabbitMQ's direct reply-to gives a connection one inbox, and the connection owns it: a
/// second bus over the same provider calls through it too, and the driver opens it only once.
#[tokio::test]
async fn a_second_bus_on_one_connection_calls_through_its_inbox() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let namespace = namespace("oneinbox");
    let exchange = namespace.exchange().to_owned();
    let provider = tidings_amqp091::connect(&support::url_with(&format!("exchange={exchange}")))
        .await
        .expect("broker reachable");
    let first = Bus::new(provider.clone());
    let second = Bus::new(provider.clone());
    let _serving = first
        .serve("math.double", |n: u64| async move { Ok(n * 2) })
        .await
        .expect("serve");
    let got: u64 = first
        .call("math.double", &1u64)
        .await
        .expect("first bus calls");
    assert_eq!(got, 2);
    let got: u64 = second
        .call("math.double", &3u64)
        .await
        .expect("a second bus over the same connection calls");
    assert_eq!(got, 6);
    let again = provider.open_inbox().await;
    let error = again.expect_err("a second inbox on one connection");
    assert_eq!(error.kind(), tidings_core::ErrorKind::Unsupported);
    assert!(error.to_string().contains("already open"), "{error}");
    let got: u64 = second
        .with_codec(tidings_core::Codec::Json)
        .call("math.double", &2u64)
        .await
        .expect("a handle of the second bus calls");
    assert_eq!(got, 4);
    first.shutdown().await.ok();
}

/// How the restart tests take the node down.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// `scripts/cluster.sh stop`: `rabbitmqctl stop`, the node shuts down cleanly.
    Stop,
    /// `scripts/cluster.sh kill`: SIGKILL of the node's Erlang VM.
    Kill,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_group_survives_a_broker_restart() {
    durable_group_survives(Outage::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_group_survives_a_broker_killed_with_sigkill() {
    durable_group_survives(Outage::Kill).await;
}

/// A durable group's messages, published (and confirmed) while it has no member, are all
/// delivered after the node it lives on goes down and comes back; the bus reports
/// `Reconnecting` during the outage and `Connected` after, and a publish made during the outage
/// waits for the node and succeeds.
async fn durable_group_survives(outage: Outage) {
    let _serial = ONE_AT_A_TIME.lock().await;
    // Held to the end: no other test (of any binary) takes a node down meanwhile.
    let _cluster = tokio::task::spawn_blocking(cluster::exclusive)
        .await
        .expect("the test cluster");
    let node = CLUSTER_NODE.name();
    let namespace = cluster_namespace(&format!("{outage:?}").to_lowercase());
    let exchange = namespace.exchange().to_owned();
    let group = format!("{exchange}-g");
    const TOTAL: u32 = 1_000;

    let bus = Bus::new(
        tidings_amqp091::connect(&format!(
            "{}?exchange={exchange}&publish_timeout_ms=60000",
            cluster_node_url()
        ))
        .await
        .unwrap_or_else(|e| panic!("{node} at {} reachable: {e}", cluster_node_url())),
    );
    // Create the durable group queue (its leader is the node the bus is connected to), then
    // leave it with no member.
    let sub = bus
        .subscribe::<u32>("stock.#")
        .group(&group)
        .handle(|_| async { Ok(()) })
        .await
        .expect("subscribe");
    sub.unsubscribe().await;
    for n in 0..TOTAL {
        bus.emit("stock.item", &n).await.expect("publish");
    }
    let mut status = bus.status();

    let restart = cluster::RestartOnDrop;
    tokio::task::spawn_blocking(move || match outage {
        Outage::Stop => CLUSTER_NODE.stop(),
        Outage::Kill => CLUSTER_NODE.kill(),
    })
    .await
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| *s == Status::Reconnecting),
    )
    .await
    .expect("status goes to Reconnecting")
    .expect("watch");
    // A publish during the outage waits for the broker instead of failing or vanishing.
    let during = tokio::spawn({
        let bus = bus.clone();
        async move { bus.emit("stock.item", &TOTAL).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !during.is_finished(),
        "the publish made during the outage returned before the node was back: {:?}",
        during.await
    );
    tokio::task::spawn_blocking(|| CLUSTER_NODE.start())
        .await
        .unwrap();
    drop(restart);
    tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(Status::is_connected),
    )
    .await
    .expect("reconnected after the node started again")
    .expect("watch");
    during
        .await
        .unwrap()
        .expect("the publish made during the outage succeeds after it");

    let seen: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let sink = seen.clone();
    bus.subscribe::<u32>("stock.#")
        .group(&group)
        .prefetch(256)
        .handle(move |n| {
            let sink = sink.clone();
            async move {
                *sink.lock().unwrap().entry(n).or_default() += 1;
                Ok(())
            }
        })
        .await
        .expect("subscribe after restart");
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() <= TOTAL as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let missing: Vec<u32> = (0..=TOTAL).filter(|n| !seen.contains_key(n)).collect();
    println!(
        "after the {outage:?} of {node}: {} distinct of {}",
        seen.len(),
        TOTAL + 1
    );
    assert!(
        missing.is_empty(),
        "{} lost across the {outage:?} of {node}, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    bus.shutdown().await.ok();
}
