//! Node loss on the 3-node test cluster (`scripts/cluster.sh`, never the shared broker): buses
//! connect with one URL that lists every node, durable groups are quorum queues, and nodes are
//! killed with SIGKILL or restarted one by one while messages and calls flow. Each test counts
//! what was lost (must be none) and duplicated, and prints how long the bus took to recover.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tidings_conformance::cluster::{self, Node};
use tidings_conformance::rabbitmq::{Management, Namespace};
use tidings_core::driver::Status;
use tidings_core::{Bus, ErrorKind};

/// Serialises the tests: they take the cluster's nodes down.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An exchange of the test's own, deleted with its queues (through the first node's management
/// API) when the test ends: declared before `cluster::RestartOnDrop`, after the nodes are back.
fn namespace(test: &str) -> Namespace {
    let broker = format!(
        "amqp://guest:guest@127.0.0.1:5682/%2f?management={}",
        cluster::NODES[0].management()
    );
    Namespace::new(&broker, &format!("cluster-{test}"))
}

fn cluster_url(exchange: &str) -> String {
    format!(
        "amqp://guest:guest@{}/%2f?exchange={exchange}&publish_timeout_ms=60000",
        cluster::hosts(Node::amqp_port)
    )
}

/// The node `bus` is connected to, from its status.
fn node_of(bus: &Bus) -> Node {
    let status = bus.status().borrow().clone();
    cluster::node_in(&status)
        .unwrap_or_else(|| panic!("{status:?}: not connected to a node of the test cluster"))
}

/// The status of a bus connected to `node`.
fn status_on(node: Node) -> Status {
    Status::Connected {
        node: format!("127.0.0.1:{}", node.amqp_port()),
    }
}

/// A bus on the cluster URL, connected to a node other than `not` (the URL's nodes are tried
/// in a random order, so a few connections land elsewhere).
async fn connect_avoiding(exchange: &str, not: Option<Node>) -> (Bus, Node) {
    for _ in 0..30 {
        let bus = Bus::new(
            tidings_amqp091::connect(&cluster_url(exchange))
                .await
                .expect("the cluster is reachable"),
        );
        let node = node_of(&bus);
        if Some(node) != not {
            return (bus, node);
        }
        bus.shutdown().await.ok();
    }
    panic!("30 connections all landed on {not:?}: the node order is not shuffled");
}

/// Runs a blocking cluster command (kill, stop, start) off the runtime's threads.
async fn on_cluster(action: impl FnOnce() + Send + 'static) {
    tokio::task::spawn_blocking(action)
        .await
        .expect("cluster command");
}

/// What a consumer saw: how often each message arrived, and when the first message after a
/// given instant arrived.
#[derive(Default)]
struct Seen {
    counts: Mutex<HashMap<u32, u32>>,
    first_after: Mutex<Option<(Instant, Option<Instant>)>>,
}

impl Seen {
    fn record(&self, n: u32) {
        *self.counts.lock().unwrap().entry(n).or_default() += 1;
        let mut first = self.first_after.lock().unwrap();
        if let Some((since, None)) = *first {
            let now = Instant::now();
            if now > since {
                *first = Some((since, Some(now)));
            }
        }
    }

    /// Starts timing: the next message recorded after now gives [`recovery`](Self::recovery).
    fn time_from_now(&self) {
        *self.first_after.lock().unwrap() = Some((Instant::now(), None));
    }

    fn recovery(&self) -> Option<Duration> {
        let first = self.first_after.lock().unwrap();
        first.and_then(|(since, at)| at.map(|at| at - since))
    }

    fn distinct(&self) -> usize {
        self.counts.lock().unwrap().len()
    }

    fn duplicates(&self) -> u32 {
        self.counts.lock().unwrap().values().map(|n| n - 1).sum()
    }

    fn missing(&self, total: u32) -> Vec<u32> {
        let counts = self.counts.lock().unwrap();
        (0..total).filter(|n| !counts.contains_key(n)).collect()
    }

    async fn wait_for_all(&self, total: u32, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.distinct() < total as usize && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Joins durable group `group` on `stock.#` (prefetch 100), recording what arrives.
async fn consume_group(bus: &Bus, group: &str) -> (tidings_core::Subscription, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let recorder = seen.clone();
    let subscription = bus
        .subscribe::<u32>("stock.#")
        .group(group)
        .prefetch(100)
        .handle(move |n| {
            recorder.record(n);
            async { Ok(()) }
        })
        .await
        .expect("subscribe");
    (subscription, seen)
}

/// Publishes `0..total` on `bus`, one every 2 ms (so node losses land mid-stream) while
/// `paused` is not set, at most 64 waiting for their confirm; a publish that fails is published
/// again, as a program would (counted in `failed`), so a message is lost only if a publish that
/// returned `Ok` never arrives. `confirmed` counts publishes the broker confirmed.
async fn publish_all(
    bus: Bus,
    total: u32,
    confirmed: Arc<AtomicU32>,
    failed: Arc<AtomicU32>,
    paused: Arc<AtomicBool>,
) {
    let mut ticks = tokio::time::interval(Duration::from_millis(2));
    // After a pause the pace goes on, rather than catching up in a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ticks = Arc::new(tokio::sync::Mutex::new(ticks));
    futures::stream::iter(0..total)
        .then(|n| {
            let (ticks, paused) = (ticks.clone(), paused.clone());
            async move {
                while paused.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                ticks.lock().await.tick().await;
                n
            }
        })
        .for_each_concurrent(64, |n| {
            let bus = bus.clone();
            let confirmed = confirmed.clone();
            let failed = failed.clone();
            async move {
                while let Err(e) = bus.emit("stock.item", &n).await {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("publish {n} failed, publishing again: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                confirmed.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await;
}

/// Waits until `counter` reaches `at_least`; panics, saying where it stopped, after 2 minutes.
async fn wait_until(counter: &AtomicU32, at_least: u32) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while counter.load(Ordering::Relaxed) < at_least {
        assert!(
            Instant::now() < deadline,
            "stuck at {} of {at_least} confirmed publishes for 2 minutes",
            counter.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 10,000 persistent messages to a durable (quorum) group, the publisher connected to one node
/// and the consumer to another; the consumer's node is killed at 1/3 (and started again), the
/// publisher's at 2/3. Every message arrives; both buses move to a live node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_consumers_node_then_the_publishers_loses_nothing() {
    const TOTAL: u32 = 10_000;
    let _serial = ONE_AT_A_TIME.lock().await;
    let _cluster = tokio::task::spawn_blocking(cluster::exclusive)
        .await
        .expect("the test cluster");
    let namespace = namespace("node-loss");
    let exchange = namespace.exchange().to_owned();
    let _restart = cluster::RestartOnDrop;

    let (consumer, consumer_node) = connect_avoiding(&exchange, None).await;
    let (publisher, publisher_node) = connect_avoiding(&exchange, Some(consumer_node)).await;
    println!("consumer on {consumer_node:?}, publisher on {publisher_node:?}");
    let (_sub, seen) = consume_group(&consumer, &format!("{exchange}-g")).await;

    let confirmed = Arc::new(AtomicU32::new(0));
    let failed = Arc::new(AtomicU32::new(0));
    let paused = Arc::new(AtomicBool::new(false));
    let publishing = tokio::spawn(publish_all(
        publisher.clone(),
        TOTAL,
        confirmed.clone(),
        failed.clone(),
        paused.clone(),
    ));

    wait_until(&confirmed, TOTAL / 3).await;
    let mut consumer_status = consumer.status();
    let killed_consumer_node = Instant::now();
    on_cluster(move || consumer_node.kill()).await;
    // The kill command returns once the node's VM is gone.
    let kill_took = killed_consumer_node.elapsed();
    seen.time_from_now();
    tokio::time::timeout(
        Duration::from_secs(30),
        consumer_status.wait_for(|s| s.is_connected() && *s != status_on(consumer_node)),
    )
    .await
    .expect("the consumer's bus moves to a live node")
    .expect("status");
    let consumer_moved = killed_consumer_node.elapsed();
    // Publishing waits while the node starts again (10-15 s): the publisher's node must die
    // mid-stream, and with two nodes down the quorum queue could not take publishes anyway.
    paused.store(true, Ordering::Relaxed);
    on_cluster(move || consumer_node.start()).await;
    paused.store(false, Ordering::Relaxed);
    let consumer_recovery = seen.recovery();

    wait_until(&confirmed, 2 * TOTAL / 3).await;
    let confirmed_before = confirmed.load(Ordering::Relaxed);
    assert!(
        confirmed_before < TOTAL - 1_000,
        "publishing ran ahead: {confirmed_before} of {TOTAL} confirmed before the publisher's \
         node was killed"
    );
    let killed_publisher_node = Instant::now();
    on_cluster(move || publisher_node.kill()).await;
    // Past the publishes that were in flight when the node died.
    wait_until(&confirmed, confirmed_before + 128).await;
    let publisher_recovery = killed_publisher_node.elapsed();
    assert_ne!(node_of(&publisher), publisher_node, "moved to a live node");
    tokio::time::timeout(Duration::from_secs(120), publishing)
        .await
        .expect("every publish finished")
        .expect("publisher task");
    on_cluster(move || publisher_node.start()).await;

    seen.wait_for_all(TOTAL, Duration::from_secs(60)).await;
    let missing = seen.missing(TOTAL);
    println!(
        "amqp091 node loss: sent {TOTAL}, received {} distinct, lost {}, duplicates {}, \
         publishes failed and sent again {}; the kill command took {:?}; from its start the \
         consumer was on a live node after {:?} and the publisher confirming again after {:?}; \
         the first message was handled {:?} after the consumer's node was gone",
        seen.distinct(),
        missing.len(),
        seen.duplicates(),
        failed.load(Ordering::Relaxed),
        kill_took,
        consumer_moved,
        publisher_recovery,
        consumer_recovery,
    );
    assert!(
        missing.is_empty(),
        "{} messages lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    publisher.shutdown().await.ok();
    consumer.shutdown().await.ok();
}

/// When a call started, how long it took, and how it ended.
type CallResult = (Instant, Duration, Result<(), ErrorKind>);

/// Calls in flight when the server's node dies get their reply or a clear error before their
/// timeout (none hangs), and calls made after the server moved to a live node succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_across_a_node_loss_end_in_time_and_work_after() {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let _serial = ONE_AT_A_TIME.lock().await;
    let _cluster = tokio::task::spawn_blocking(cluster::exclusive)
        .await
        .expect("the test cluster");
    let namespace = namespace("rpc-loss");
    let exchange = namespace.exchange().to_owned();
    let _restart = cluster::RestartOnDrop;

    let (server, server_node) = connect_avoiding(&exchange, None).await;
    let (client, client_node) = connect_avoiding(&exchange, Some(server_node)).await;
    println!("server on {server_node:?}, client on {client_node:?}");
    let name = format!("{exchange}.double");
    server
        .serve(&name, |n: u32| async move { Ok(n * 2) })
        .await
        .expect("serve");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let results: Arc<Mutex<Vec<CallResult>>> = Arc::default();
    let callers: Vec<_> = (0..8u32)
        .map(|caller| {
            let client = client.clone();
            let name = name.clone();
            let stop = stop.clone();
            let results = results.clone();
            tokio::spawn(async move {
                let mut n = caller * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let started = Instant::now();
                    let reply = tokio::time::timeout(
                        TIMEOUT + Duration::from_secs(5),
                        client.call::<u32, u32>(&name, &n).timeout(TIMEOUT),
                    )
                    .await
                    .expect("a call never outlives its timeout by 5 s");
                    let outcome = match reply {
                        Ok(doubled) => {
                            assert_eq!(doubled, n * 2, "the reply of another call");
                            Ok(())
                        }
                        Err(e) => Err(e.kind()),
                    };
                    results
                        .lock()
                        .unwrap()
                        .push((started, started.elapsed(), outcome));
                    if outcome.is_err() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    on_cluster(move || server_node.kill()).await;
    // The kill command returns once the node's VM is gone.
    let killed = Instant::now();
    // Calls succeed again once the server re-subscribed on a live node.
    let deadline = killed + Duration::from_secs(60);
    let recovered = loop {
        let back = results
            .lock()
            .unwrap()
            .iter()
            .find(|(started, _, outcome)| *started > killed && outcome.is_ok())
            .map(|(started, elapsed, _)| (*started + *elapsed) - killed);
        if let Some(back) = back {
            break back;
        }
        assert!(
            Instant::now() < deadline,
            "no call succeeded within 60 s of the node loss"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.expect("caller");
    }
    on_cluster(move || server_node.start()).await;

    let results = std::mem::take(&mut *results.lock().unwrap());
    let late: Vec<_> = results
        .iter()
        .filter(|(_, elapsed, _)| *elapsed > TIMEOUT + Duration::from_secs(1))
        .collect();
    let failed: HashMap<String, usize> =
        results
            .iter()
            .filter_map(|(_, _, o)| o.err())
            .fold(HashMap::new(), |mut m, kind| {
                *m.entry(format!("{kind:?}")).or_default() += 1;
                m
            });
    let after_recovery = results.iter().filter(|(s, _, _)| *s > after);
    let failed_after: Vec<_> = after_recovery
        .clone()
        .filter(|(_, _, o)| o.is_err())
        .collect();
    println!(
        "amqp091 calls across a node loss: {} calls, failed {failed:?}, first success {recovered:?} \
         after the kill, {} calls in the 2 s after that, {} of them failed",
        results.len(),
        after_recovery.count(),
        failed_after.len()
    );
    assert!(late.is_empty(), "calls outlived their timeout: {late:?}");
    assert!(
        failed_after.is_empty(),
        "calls failed after recovery: {failed_after:?}"
    );
    client.shutdown().await.ok();
    server.shutdown().await.ok();
}

/// A rolling restart of the three nodes, one at a time, while a group consumes: nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_loses_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let _cluster = tokio::task::spawn_blocking(cluster::exclusive)
        .await
        .expect("the test cluster");
    let namespace = namespace("rolling");
    let exchange = namespace.exchange().to_owned();
    let _restart = cluster::RestartOnDrop;

    let (consumer, _) = connect_avoiding(&exchange, None).await;
    let (publisher, _) = connect_avoiding(&exchange, None).await;
    let (_sub, seen) = consume_group(&consumer, &format!("{exchange}-g")).await;

    // Publishes a steady trickle (one every 5 ms) for as long as the restarts take.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed = Arc::new(AtomicU32::new(0));
    let publishing = tokio::spawn({
        let stop = stop.clone();
        let failed = failed.clone();
        async move {
            let mut sent = 0u32;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut in_flight = futures::stream::FuturesUnordered::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let bus = publisher.clone();
                let failed = failed.clone();
                let n = sent;
                in_flight.push(async move {
                    while bus.emit("stock.item", &n).await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
                sent += 1;
                while in_flight.len() > 256 {
                    in_flight.next().await;
                }
            }
            while in_flight.next().await.is_some() {}
            publisher.shutdown().await.ok();
            sent
        }
    });
    let started = Instant::now();
    for node in cluster::NODES {
        on_cluster(move || {
            node.stop();
            node.start();
        })
        .await;
    }
    let restarts = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent = tokio::time::timeout(Duration::from_secs(120), publishing)
        .await
        .expect("publishing ends")
        .expect("publisher");
    seen.wait_for_all(sent, Duration::from_secs(60)).await;
    let missing = seen.missing(sent);
    println!(
        "amqp091 rolling restart ({restarts:?}): sent {sent}, received {} distinct, lost {}, \
         duplicates {}, publishes failed and sent again {}",
        seen.distinct(),
        missing.len(),
        seen.duplicates(),
        failed.load(Ordering::Relaxed)
    );
    assert!(
        missing.is_empty(),
        "{} messages lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    consumer.shutdown().await.ok();
}

/// Attempts and dead letters stay tidings' policy on quorum queues: a handler that always
/// fails is tried exactly `max_attempts` times, below and above RabbitMQ 4's default delivery
/// limit of 20, then dead-lettered with tidings' reason. And a group whose queue exists as a
/// classic queue is refused with an error naming both types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_groups_keep_tidings_attempts_and_refuse_another_queue_type() {
    let _serial = ONE_AT_A_TIME.lock().await;
    tokio::task::spawn_blocking(cluster::require)
        .await
        .expect("the test cluster");
    let namespace = namespace("attempts");
    let exchange = namespace.exchange().to_owned();
    let bus = Bus::new(
        tidings_amqp091::connect(&cluster_url(&exchange))
            .await
            .expect("the cluster is reachable"),
    );
    for max_attempts in [3u32, 25] {
        let group = format!("{exchange}-g{max_attempts}");
        let tries = Arc::new(AtomicU32::new(0));
        let _sub = bus
            .subscribe::<u32>(&format!("fail.{max_attempts}"))
            .group(&group)
            .max_attempts(max_attempts)
            .retry_delay(Duration::ZERO)
            .handle({
                let tries = tries.clone();
                move |_| {
                    tries.fetch_add(1, Ordering::Relaxed);
                    async { Err::<(), _>("always fails".into()) }
                }
            })
            .await
            .expect("subscribe");
        bus.emit(&format!("fail.{max_attempts}"), &max_attempts)
            .await
            .expect("publish");
        let mut dead = bus.dead_letters(&group).await.expect("dead letters");
        let letter = tokio::time::timeout(Duration::from_secs(60), dead.next())
            .await
            .expect("dead-lettered within 60 s")
            .expect("a dead letter");
        println!(
            "quorum group, max_attempts {max_attempts}: tried {} times, dead letter after attempt {}: {:?}",
            tries.load(Ordering::Relaxed),
            letter.attempts(),
            letter.reason()
        );
        assert_eq!(tries.load(Ordering::Relaxed), max_attempts);
        assert_eq!(letter.attempts(), max_attempts);
        assert!(
            letter.reason().contains("always fails"),
            "{:?}",
            letter.reason()
        );
    }

    // A classic queue under the name a group's quorum queue would have.
    let management = Management::for_broker(&format!(
        "amqp://guest:guest@127.0.0.1:5682/%2f?management={}",
        cluster::NODES[0].management()
    ))
    .expect("management API");
    let queue = format!("{exchange}.group.{exchange}-classic");
    tokio::task::spawn_blocking({
        let queue = queue.clone();
        move || management.declare_queue(&queue)
    })
    .await
    .expect("declare")
    .expect("declare the classic queue");
    let refused = bus
        .subscribe::<u32>("x")
        .group(&format!("{exchange}-classic"))
        .handle(|_| async { Ok(()) })
        .await
        .expect_err("a quorum subscription to a classic queue is refused");
    let text = refused.to_string();
    assert!(
        text.contains("exists as a classic queue") && text.contains("declares quorum queues"),
        "{text}"
    );
    bus.shutdown().await.ok();
}

/// RPC across the loss of the caller's node (the shared scenario of
/// `tidings_conformance::node_loss`; the test above kills the server's): calls in flight end
/// by their timeout, calls after the move are answered while the dead node stays down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_work_after_the_callers_node_is_killed() {
    use tidings_conformance::node_loss::{calls_work_after_the_callers_node_is_killed, Driver};
    let _one = ONE_AT_A_TIME.lock().await;
    calls_work_after_the_callers_node_is_killed(Driver {
        url: |nodes, exchange| {
            format!(
                "amqp://guest:guest@{}/%2f?queue-type=quorum&exchange={exchange}",
                cluster::hosts_of(nodes, Node::amqp_port)
            )
        },
        connect: |url| Box::pin(async move { Ok(Bus::new(tidings_amqp091::connect(&url).await?)) }),
    })
    .await;
}
