//! Node loss on the local 3-node RabbitMQ test cluster (`scripts/cluster.sh`: tidings1..3 on
//! 127.0.0.1:5682–5684, management on 15682–15684; never the shared broker on 5672).
//!
//! A publisher and a consumer stream persistent messages through a durable group (a quorum
//! queue, the default for a host list); one of them is on the 3-host URL, the other on a
//! one-host URL of another node, and the node of the one on the 3-host URL is killed with
//! SIGKILL at a third of the stream (and started again after). Every message must arrive:
//! - the consumer's node: it moves to another node, re-declares and re-attaches, and what it
//!   had not settled comes back from the quorum queue;
//! - the publisher's node: it moves to another node and sends again what the dead node had
//!   not confirmed (or the publish fails to its caller; none may be silently lost).
//!
//! Duplicates and the time from the kill to the first message handled again are printed. The
//! tests run one at a time, and never beside another binary's that takes a node down: each
//! holds `cluster::exclusive`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidings_conformance::cluster::{self, Node, NODES};
use tidings_core::Bus;

/// The one-host URL of `node`, with its own management API. A one-host URL declares classic
/// queues unless told otherwise: on a cluster it says `queue-type=quorum`, as the 3-host URL
/// implies.
fn node_url(node: Node, query: &str) -> String {
    format!(
        "amqp10://guest:guest@127.0.0.1:{}/?management={}&queue-type=quorum&{query}",
        node.amqp_port(),
        node.management()
    )
}

/// The 3-host URL, with one management API per node.
fn cluster_url(query: &str) -> String {
    let apis: Vec<String> = NODES.iter().map(|n| n.management()).collect();
    format!(
        "amqp10://guest:guest@{}/?management={}&{query}",
        cluster::hosts(Node::amqp_port),
        apis.join(",")
    )
}

/// The type of queue `name` as `node`'s management API lists it.
fn queue_type(node: Node, name: &str) -> String {
    let url = format!("{}/api/queues/%2F/{name}?columns=type", node.management());
    let out = std::process::Command::new("curl")
        .args(["-fsS", "--max-time", "5", "-u", "guest:guest", &url])
        .output()
        .expect("curl runs");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    body["type"].as_str().unwrap_or("?").to_owned()
}

/// Which bus is on the 3-host URL, and so sees its node killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnCluster {
    Consumer,
    Publisher,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_moves_to_another_node_when_its_node_is_killed_and_loses_nothing() {
    node_loss(OnCluster::Consumer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_moves_to_another_node_when_its_node_is_killed_and_loses_nothing() {
    node_loss(OnCluster::Publisher).await;
}

async fn node_loss(on_cluster: OnCluster) {
    const N: u32 = 10_000;
    // Held to the end: no other test (of this binary or any other) takes a node down
    // meanwhile; it starts any node that is down.
    let _cluster = tokio::task::spawn_blocking(cluster::exclusive)
        .await
        .expect("the test cluster");
    let exchange = format!("tc-{}", tidings_core::envelope::new_id());
    let group = "workers";
    let query = format!("exchange={exchange}&publish_timeout_ms=60000");

    let moving = Bus::new(
        tidings_amqp10::connect(&cluster_url(&query))
            .await
            .expect("the cluster answers"),
    );
    let mut status = moving.status();
    let doomed = cluster::node_in(&status.borrow_and_update()).expect("the bus is connected");
    // The other bus on another node, which stays up.
    let survivor = Node(doomed.0 % 3 + 1);
    let _cleanup = cluster::DeleteOnDrop(exchange.clone());
    let staying = Bus::new(
        tidings_amqp10::connect(&node_url(survivor, &query))
            .await
            .expect("the other node answers"),
    );
    let (consumer, publisher) = match on_cluster {
        OnCluster::Consumer => (moving, staying),
        OnCluster::Publisher => (staying, moving),
    };
    println!(
        "{on_cluster:?} on {} (3-host url), the other on {}",
        doomed.name(),
        survivor.name()
    );

    // Handled messages: how many times each, and when the last one was handled.
    let seen: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let handled_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let (sink, times) = (seen.clone(), handled_at.clone());
    consumer
        .subscribe::<u32>("node.*")
        .group(group)
        .prefetch(200)
        .concurrency(8)
        .handle(move |n| {
            let (sink, times) = (sink.clone(), times.clone());
            async move {
                *sink.lock().unwrap().entry(n).or_default() += 1;
                times.lock().unwrap().push(Instant::now());
                Ok(())
            }
        })
        .await
        .expect("subscribe");
    let queue = format!("{exchange}.group.{group}");
    let kind = tokio::task::spawn_blocking({
        let queue = queue.clone();
        move || queue_type(survivor, &queue)
    })
    .await
    .unwrap();
    assert_eq!(kind, "quorum", "the durable group's queue {queue}");

    let started = Instant::now();
    let confirmed_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let confirms = confirmed_at.clone();
    let publishing = tokio::spawn(async move {
        let mut failed = Vec::new();
        for chunk in (0..N).collect::<Vec<_>>().chunks(250) {
            let sends = chunk.iter().map(|i| {
                let publisher = publisher.clone();
                let i = *i;
                async move { (i, publisher.emit("node.item", &i).await) }
            });
            for (i, r) in futures::future::join_all(sends).await {
                match r {
                    Ok(()) => confirms.lock().unwrap().push(Instant::now()),
                    Err(e) => failed.push((i, e.to_string())),
                }
            }
        }
        (publisher, failed)
    });

    let distinct = |seen: &Arc<Mutex<HashMap<u32, u32>>>| seen.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while distinct(&seen) < N as usize / 3 {
        assert!(
            Instant::now() < deadline,
            "the stream never reached a third"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restart = cluster::RestartOnDrop;
    let before_kill = distinct(&seen);
    let killed_at = Instant::now();
    tokio::task::spawn_blocking(move || doomed.kill())
        .await
        .unwrap();
    println!(
        "killed {} after {before_kill} distinct messages",
        doomed.name()
    );
    let moved = tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| cluster::node_in(s).is_some_and(|n| n != doomed)),
    )
    .await
    .expect("the bus on the 3-host url moves to another node within 60 s")
    .expect("status watch")
    .clone();
    let reconnected = killed_at.elapsed();
    // Start the killed node again while the stream goes on.
    let restarting = tokio::task::spawn_blocking(move || doomed.start());

    let deadline = Instant::now() + Duration::from_secs(180);
    while distinct(&seen) < N as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (publisher, failed) = publishing.await.expect("publisher task");
    // Late duplicates, if any, arrive within a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    restarting.await.unwrap();
    drop(restart);

    let seen = seen.lock().unwrap().clone();
    let deliveries: u64 = seen.values().map(|c| u64::from(*c)).sum();
    let missing: Vec<u32> = (0..N).filter(|n| !seen.contains_key(n)).collect();
    let duplicates = deliveries - seen.len() as u64;
    // The first message handled after the connection moved (the handlers may still be
    // finishing what they had taken before the kill).
    let moved_at = killed_at + reconnected;
    let first_after = |times: &Arc<Mutex<Vec<Instant>>>| {
        let mut times = times.lock().unwrap().clone();
        times.sort();
        times
            .into_iter()
            .find(|t| *t >= moved_at)
            .map(|t| t.duration_since(killed_at))
    };
    let first_again = first_after(&handled_at);
    let first_confirm = first_after(&confirmed_at);
    println!(
        "amqp10 node loss of the {on_cluster:?}'s node: sent {N} (failed publishes: {}), received {} distinct, {deliveries} \
         deliveries, {duplicates} duplicates, lost {}; reconnected to {moved:?} {reconnected:?} \
         after the kill, first message handled again {first_again:?} and first publish confirmed \
         again {first_confirm:?} after it; whole run {:?}",
        failed.len(),
        seen.len(),
        missing.len(),
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "publishes failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(
        missing.is_empty(),
        "{} messages lost across the kill of {}, e.g. {:?}",
        missing.len(),
        doomed.name(),
        &missing[..missing.len().min(10)]
    );
    let _ = publisher.shutdown().await;
    let _ = consumer.shutdown().await;
}

/// RPC across the loss of the caller's node (the shared scenario of
/// `tidings_conformance::node_loss`): calls in flight end by their timeout, calls after the
/// move are answered while the dead node stays down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_work_after_the_callers_node_is_killed() {
    use tidings_conformance::node_loss::{calls_work_after_the_callers_node_is_killed, Driver};
    calls_work_after_the_callers_node_is_killed(Driver {
        url: |nodes, exchange| {
            let apis: Vec<String> = nodes.iter().map(|n| n.management()).collect();
            format!(
                "amqp10://guest:guest@{}/?management={}&queue-type=quorum&exchange={exchange}",
                cluster::hosts_of(nodes, Node::amqp_port),
                apis.join(",")
            )
        },
        connect: |url| Box::pin(async move { Ok(Bus::new(tidings_amqp10::connect(&url).await?)) }),
    })
    .await;
}
