//! Fault tests: the broker connection is cut while 10,000 messages flow to a group; every
//! message must arrive after the driver reconnects, none lost.
//!
//! The cut is made by a TCP proxy inside the test, between the driver and the broker: killing
//! its sockets is exactly what a network failure looks like to both sides, works the same on
//! RabbitMQ and ActiveMQ, and touches no shared broker state (other suites use the same
//! brokers). The two cases run one after the other (one `#[test]` each, `--test-threads=1` is
//! not needed: they use separate proxies and namespaces).
//!
//! And the opposite: a connection with heart-beats on that carries nothing for several
//! heart-beat intervals stays up (the broker's heart-beats count as signs of life).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Broker;
use tidings_conformance::cluster::{self, Node, NODES};
use tidings_conformance::node_loss;
use tidings_conformance::support::Note;
use tidings_core::{Bus, Status};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy whose connections can all be cut at once.
struct Proxy {
    port: u16,
    pipes: Arc<Mutex<Vec<JoinHandle<()>>>>,
    refuse: Arc<AtomicBool>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let pipes: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let refuse = Arc::new(AtomicBool::new(false));
        let accept = {
            let pipes = pipes.clone();
            let refuse = refuse.clone();
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if refuse.load(Ordering::Acquire) {
                        drop(client);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let pipe = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    pipes.lock().unwrap().push(pipe);
                }
            })
        };
        Proxy {
            port,
            pipes,
            refuse,
            accept,
        }
    }

    /// Drops every connection and refuses new ones for `down`.
    async fn cut(&self, down: Duration) {
        self.refuse.store(true, Ordering::Release);
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
        tokio::time::sleep(down).await;
        self.refuse.store(false, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }
}

/// `stomp://user:pass@127.0.0.1:<proxy port>/...` for the broker's URL.
fn through(url: &str, port: u16) -> (String, String) {
    let parsed = url::Url::parse(url).expect("broker url");
    let upstream = format!(
        "{}:{}",
        parsed.host_str().unwrap_or("127.0.0.1"),
        parsed.port().unwrap_or(61613)
    );
    let mut proxied = parsed.clone();
    proxied.set_host(Some("127.0.0.1")).expect("host");
    proxied.set_port(Some(port)).expect("port");
    (proxied.to_string(), upstream)
}

async fn connection_cut_while_10k_flow_to_a_group(broker: Broker) {
    const N: u32 = 10_000;
    let (_, upstream) = through(&broker.url(), 0);
    let proxy = Proxy::start(upstream).await;
    let (proxied, _) = through(&broker.url(), proxy.port);
    let namespace = format!("fault-{}", tidings_conformance::support::unique_tag());
    let url = common::with_options(&proxied, &format!("exchange={namespace}&heartbeat_ms=2000"));
    let group = format!("{namespace}.workers");

    let received: Arc<Mutex<Vec<u32>>> = Arc::default();
    let count = Arc::new(AtomicU32::new(0));
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let bus = Bus::new(
            tidings_stomp::connect(&url)
                .await
                .expect("connect consumer"),
        );
        let received = received.clone();
        let count = count.clone();
        bus.subscribe::<Note>("fault.*")
            .group(&group)
            .durable(true)
            .prefetch(200)
            .concurrency(8)
            .handle(move |note| {
                let received = received.clone();
                let count = count.clone();
                async move {
                    received.lock().unwrap().push(note.n);
                    count.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            })
            .await
            .expect("subscribe");
        consumers.push(bus);
    }
    let publisher = Bus::new(
        tidings_stomp::connect(&url)
            .await
            .expect("connect publisher"),
    );
    let mut status = publisher.status();

    let start = Instant::now();
    let publishing: JoinHandle<Result<(), String>> = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
                let sends = chunk.iter().map(|n| {
                    let publisher = publisher.clone();
                    let n = *n;
                    async move { publisher.emit("fault.item", &Note::new(n)).await }
                });
                for r in futures::future::join_all(sends).await {
                    r.map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        })
    };
    // Cut once the flow is well under way, in both directions, for everyone.
    while count.load(Ordering::Relaxed) < N / 4 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "flow did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at = count.load(Ordering::Relaxed);
    proxy.cut(Duration::from_millis(500)).await;
    let saw_reconnecting = tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| !s.is_connected()),
    )
    .await
    .is_ok();

    publishing
        .await
        .expect("publisher task")
        .expect("every publish confirmed across the cut");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let distinct: BTreeSet<u32> = received.lock().unwrap().iter().copied().collect();
        if distinct.len() == N as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: only {} of {N} distinct messages arrived after the cut",
            broker.label(),
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = received.lock().unwrap().len();
    println!(
        "{}: cut after {at} deliveries; all {N} arrived in {:?}; {} redelivered duplicates \
         (at-least-once); publisher saw the outage: {saw_reconnecting}",
        broker.label(),
        start.elapsed(),
        all - N as usize
    );
    for bus in consumers {
        let _ = bus.shutdown().await;
    }
    let _ = publisher.shutdown().await;
    tokio::task::spawn_blocking(move || common::admin::purge(broker, &[namespace]))
        .await
        .expect("cleanup task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_connection_cut_while_10k_flow_to_a_group() {
    connection_cut_while_10k_flow_to_a_group(Broker::RabbitMq).await;
}

/// Idle for longer than the reader's deadline (three times the heart-beat interval), then
/// used: the connection must never have been dropped, because the broker's heart-beats count
/// as signs of life. ActiveMQ sends its first heart-beat only after twice the interval (10 s
/// here); a deadline of twice the interval lost that race now and then in CI.
async fn idle_connection_with_heart_beats_stays_up(broker: Broker) {
    // Not `fault-<id>`: the ids of one process share their first characters, and the cut
    // test deletes `fault-<id>.*` when it ends.
    let namespace = format!("fault-idle-{}", tidings_conformance::support::unique_tag());
    let url = broker.url_in(&namespace, "&heartbeat_ms=5000");
    let bus = Bus::new(tidings_stomp::connect(&url).await.expect("connect"));
    let (tx, mut got) = tokio::sync::mpsc::unbounded_channel();
    bus.subscribe::<Note>("idle.x")
        .handle(move |note: Note| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(note.n);
                Ok(())
            }
        })
        .await
        .expect("subscribe");
    let mut status = bus.status();
    let seen: Arc<Mutex<Vec<Status>>> = Arc::default();
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while status.changed().await.is_ok() {
                seen.lock()
                    .unwrap()
                    .push(status.borrow_and_update().clone());
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(18)).await;
    bus.emit("idle.x", &Note::new(7)).await.expect("publish");
    let n = tokio::time::timeout(Duration::from_secs(5), got.recv()).await;
    // Taken before shutting down, which ends in Closed.
    let seen = seen.lock().unwrap().clone();
    watcher.abort();
    let _ = bus.shutdown().await;
    tokio::task::spawn_blocking(move || common::admin::purge(broker, &[namespace]))
        .await
        .expect("cleanup task");
    assert_eq!(
        n.ok().flatten(),
        Some(7),
        "{}: the message after the pause",
        broker.label()
    );
    assert!(
        !seen.contains(&Status::Reconnecting),
        "{}: an idle connection was dropped: {seen:?}",
        broker.label()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_idle_connection_with_heart_beats_stays_up() {
    idle_connection_with_heart_beats_stays_up(Broker::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activemq_idle_connection_with_heart_beats_stays_up() {
    idle_connection_with_heart_beats_stays_up(Broker::ActiveMq).await;
}

/// Deletes the idle `tc-` (conformance), `fault-`, `plain-` and (ActiveMQ) `bench-` queues earlier runs of the stomp
/// tests left before they cleaned up after themselves: `cargo test -p tidings-stomp --test
/// faults -- --ignored sweep`. RabbitMQ queues with consumers are never touched; `tc-` queues
/// of other drivers (same naming) go too, which is harmless once their runs are over.
#[test]
#[ignore = "one-off maintenance: deletes leftovers of earlier runs"]
fn sweep_leftovers_of_earlier_runs() {
    // Only the stomp driver uses ActiveMQ; on RabbitMQ `bench-` belongs to other drivers too.
    for (broker, prefixes) in [
        (Broker::RabbitMq, &["tc-", "fault-", "plain-"][..]),
        (Broker::ActiveMq, &["tc-", "fault-", "bench-", "plain-"][..]),
    ] {
        for prefix in prefixes {
            common::admin::purge_prefix(broker, prefix)
                .unwrap_or_else(|e| panic!("{}: {e}", broker.label()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activemq_connection_cut_while_10k_flow_to_a_group() {
    connection_cut_while_10k_flow_to_a_group(Broker::ActiveMq).await;
}

/// `stomp://guest:guest@<nodes>/?...` for the given test cluster nodes, in that order.
fn cluster_url(nodes: &[Node], options: &str) -> String {
    format!(
        "stomp://guest:guest@{}/?{options}",
        cluster::hosts_of(nodes, Node::stomp_port)
    )
}

/// Node loss on the 3-node RabbitMQ cluster: persistent messages flow to a durable group (a
/// quorum queue: the consumer's URL lists three nodes) while the consumer's node is killed with
/// SIGKILL. The consumer moves to another node, re-subscribes there, and every message arrives;
/// the publisher, on a node that stays up, has every publish confirmed. Prints the duplicates
/// and the time from the kill to the first message handled again, then starts the node again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_cluster_consumers_node_killed_mid_stream_loses_nothing() {
    const N: u32 = 6_000;
    // Held to the end: no other test (of this binary or any other) takes a node down
    // meanwhile; it starts any node that is down.
    let _cluster = tokio::task::spawn_blocking(cluster::exclusive)
        .await
        .expect("the test cluster");
    let namespace = format!("fault-node-{}", tidings_conformance::support::unique_tag());
    let group = format!("{namespace}.workers");
    let options = format!("exchange={namespace}&heartbeat_ms=2000&publish_timeout_ms=120000");

    // The consumer: every node, tried in a shuffled order.
    let consumer = Bus::new(
        tidings_stomp::connect(&cluster_url(&NODES, &options))
            .await
            .expect("connect consumer to the cluster"),
    );
    let mut consumer_status = consumer.status();
    let victim = cluster::node_in(&consumer_status.borrow_and_update())
        .expect("the consumer is connected to a node of the cluster");
    // The publisher: one node that stays up (a one-host URL, so it is that node).
    let stays = if victim == Node(1) { Node(2) } else { Node(1) };
    let publisher = Bus::new(
        tidings_stomp::connect(&cluster_url(&[stays], &options))
            .await
            .expect("connect publisher"),
    );
    println!(
        "consumer on node {}, publisher on node {}",
        victim.0, stays.0
    );

    let handled: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let sink = handled.clone();
    consumer
        .subscribe::<Note>("node.*")
        .group(&group)
        .durable(true)
        .prefetch(200)
        .concurrency(8)
        .handle(move |note: Note| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push((note.n, Instant::now()));
                Ok(())
            }
        })
        .await
        .expect("subscribe");

    let start = Instant::now();
    let publishing: JoinHandle<Vec<String>> = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
                let sends = chunk.iter().map(|n| {
                    let publisher = publisher.clone();
                    let n = *n;
                    async move { publisher.emit("node.item", &Note::new(n)).await }
                });
                for (r, n) in futures::future::join_all(sends)
                    .await
                    .into_iter()
                    .zip(chunk)
                {
                    if let Err(e) = r {
                        failures.push(format!("{n}: {e}"));
                    }
                }
            }
            failures
        })
    };
    while handled.lock().unwrap().len() < (N / 3) as usize {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the flow did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restart = cluster::RestartOnDrop;
    let at = handled.lock().unwrap().len();
    let killed_at = Instant::now();
    tokio::task::spawn_blocking(move || victim.kill())
        .await
        .expect("kill");
    println!(
        "killed node {} (SIGKILL) after {at} of {N} deliveries",
        victim.0
    );
    // The consumer moves to another node.
    let moved_to = tokio::time::timeout(
        Duration::from_secs(60),
        consumer_status.wait_for(|s| cluster::node_in(s).is_some_and(|n| n != victim)),
    )
    .await
    .expect("the consumer reconnected to another node within 60 s")
    .expect("status watch")
    .clone();
    let reconnected = killed_at.elapsed();
    let first_again = loop {
        let after = handled
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| *t >= killed_at + reconnected)
            .min();
        if let Some(t) = after {
            break t.duration_since(killed_at);
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(120),
            "no message handled within 120 s of the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };

    let failures = publishing.await.expect("publisher task");
    let deadline = Instant::now() + Duration::from_secs(120);
    let distinct = loop {
        let distinct: BTreeSet<u32> = handled.lock().unwrap().iter().map(|(n, _)| *n).collect();
        if distinct.len() == N as usize || Instant::now() > deadline {
            break distinct;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = handled.lock().unwrap().len();
    let lost: Vec<u32> = (0..N).filter(|n| !distinct.contains(n)).collect();
    println!(
        "node loss (stomp, quorum group): sent {N}, received {} distinct, lost {}, {} duplicates; \
         consumer moved to {moved_to:?} {reconnected:?} after the kill; first message handled \
         again {first_again:?} after the kill; publish failures: {}; total {:?}",
        distinct.len(),
        lost.len(),
        all - distinct.len(),
        failures.len(),
        start.elapsed()
    );
    let _ = consumer.shutdown().await;
    let _ = publisher.shutdown().await;
    tokio::task::spawn_blocking(move || {
        victim.start();
        drop(restart);
    })
    .await
    .expect("restart");
    tokio::task::spawn_blocking({
        let namespace = namespace.clone();
        move || cluster::delete_namespace(&namespace)
    })
    .await
    .expect("cleanup")
    .unwrap_or_else(|e| eprintln!("cleanup of {namespace}: {e}"));
    assert!(
        failures.is_empty(),
        "{} publishes failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        lost.is_empty(),
        "{} messages lost across the kill of node {}, e.g. {:?}",
        lost.len(),
        victim.0,
        &lost[..lost.len().min(10)]
    );
}

/// RPC across the loss of the caller's node on the 3-node RabbitMQ cluster (the shared
/// scenario of `tidings_conformance::node_loss`): calls in flight end by their timeout, calls
/// after the move are answered while the dead node stays down (the inbox is a queue of its own
/// on the new connection: the old one lived on the dead node, and RabbitMQ may take long to
/// forget it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_cluster_calls_work_after_the_callers_node_is_killed() {
    node_loss::calls_work_after_the_callers_node_is_killed(node_loss::Driver {
        url: |nodes, exchange| {
            cluster_url(nodes, &format!("exchange={exchange}&heartbeat_ms=2000"))
        },
        connect: |url| Box::pin(async move { Ok(Bus::new(tidings_stomp::connect(&url).await?)) }),
    })
    .await;
}

/// A durable group whose queue exists with another type (quorum, declared by a bus whose URL
/// says `queue-type=quorum`) cannot be joined as classic: the subscription fails with
/// RabbitMQ's words naming the argument, and the connection goes on (no reconnect loop that
/// re-makes the refused subscription).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_group_queue_of_another_type_is_refused_clearly() {
    let broker = Broker::RabbitMq;
    let namespace = format!("fault-qtype-{}", tidings_conformance::support::unique_tag());
    let quorum = Bus::new(
        tidings_stomp::connect(&broker.url_in(&namespace, "&queue-type=quorum"))
            .await
            .expect("connect"),
    );
    let classic = Bus::new(
        tidings_stomp::connect(&broker.url_in(&namespace, "&queue-type=classic"))
            .await
            .expect("connect"),
    );
    let _member = quorum
        .subscribe::<Note>("qtype.*")
        .group("g")
        .handle(|_| async { Ok(()) })
        .await
        .expect("the quorum group");
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        classic
            .subscribe::<Note>("qtype.*")
            .group("g")
            .handle(|_| async { Ok(()) }),
    )
    .await
    .expect("the refusal comes in time");
    let error = match refused {
        Ok(_) => panic!("a classic member joined a quorum group"),
        Err(e) => e.to_string(),
    };
    println!("{error}");
    assert!(error.contains("x-queue-type"), "{error}");
    // The classic bus still works.
    classic
        .emit("qtype.x", &Note::new(1))
        .await
        .expect("publish");
    let _ = quorum.shutdown().await;
    let _ = classic.shutdown().await;
    tokio::task::spawn_blocking(move || common::admin::purge(broker, &[namespace]))
        .await
        .expect("cleanup task");
}
