//! RPC across the loss of the caller's node, on the 3-node test cluster ([`crate::cluster`]):
//! one scenario that every network driver runs the same way, each test saying only how its
//! driver connects.
//!
//! The caller's URL lists the three nodes; the server is on another node. The caller's node is
//! SIGKILLed while calls are in flight and stays down: each call in flight gets its reply or,
//! once the caller knows the reply can no longer arrive, a connection error well before its
//! timeout (none hangs, none waits out its timeout), and calls made after the caller moved to
//! another node are answered — whatever the driver's inbox was on the dead node, it takes
//! replies again on the live one.

use std::time::{Duration, Instant};

use tidings_core::{Bus, Result};

use crate::cluster::{self, node_in, DeleteOnDrop, Node, NODES};
use crate::BoxFuture;

/// How a driver's test reaches the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Driver {
    /// Its URL of `nodes` (in that order) in the namespace `exchange`.
    pub url: fn(nodes: &[Node], exchange: &str) -> String,
    /// Connects a bus to `url`.
    pub connect: fn(url: String) -> BoxFuture<'static, Result<Bus>>,
}

/// How long each call may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How many calls are in flight when the node dies.
const IN_FLIGHT: u64 = 20;
/// How long the caller may take to move and be answered again.
const RECOVERY: Duration = Duration::from_secs(60);

/// What the scenario saw.
#[derive(Debug)]
pub struct CallsAcrossTheLoss {
    /// The node that was killed (started again before this returns).
    pub killed: Node,
    /// Calls in flight that got their reply.
    pub answered: usize,
    /// Calls in flight that failed, with their errors.
    pub failed: Vec<String>,
    /// The longest a call in flight took to fail, from the kill.
    pub failed_within: Duration,
    /// From the kill to the first call answered again.
    pub recovered: Duration,
}

/// Runs the scenario (see the module's doc) and asserts on it; panics on any failure. Holds
/// the cluster ([`cluster::exclusive`]) throughout, and starts the killed node again at the end
/// (or when it panics).
pub async fn calls_work_after_the_callers_node_is_killed(driver: Driver) -> CallsAcrossTheLoss {
    let _cluster = tokio::task::spawn_blocking(cluster::exclusive)
        .await
        .expect("the test cluster");
    let restart = cluster::RestartOnDrop;
    let exchange = format!("fault-rpc-{}", crate::support::unique_tag());
    let cleanup = DeleteOnDrop(exchange.clone());
    let client = (driver.connect)((driver.url)(&NODES, &exchange))
        .await
        .expect("connect the caller to the cluster");
    let mut status = client.status();
    let victim = node_in(&status.borrow_and_update()).expect("the caller is connected");
    let stays = if victim == Node(1) { Node(2) } else { Node(1) };
    let server = (driver.connect)((driver.url)(&[stays], &exchange))
        .await
        .expect("connect the server");
    let _serving = server
        .serve("math.double", |n: u64| async move { Ok(n * 2) })
        .await
        .expect("serve");
    // Slow enough that the calls below are still in flight when the caller's node dies.
    let _serving_slowly = server
        .serve("math.slow", |n: u64| async move {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            Ok(n * 2)
        })
        .await
        .expect("serve");
    let got: u64 = client.call("math.double", &21u64).await.expect("call");
    assert_eq!(got, 42);

    let in_flight: Vec<_> = (0..IN_FLIGHT)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                let r = client
                    .call::<u64, u64>("math.slow", &n)
                    .timeout(TIMEOUT)
                    .await
                    .map_err(|e| e.to_string());
                (r, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    tokio::task::spawn_blocking(move || victim.kill())
        .await
        .expect("kill");
    tokio::time::timeout(
        RECOVERY,
        status.wait_for(|s| node_in(s).is_some_and(|n| n != victim)),
    )
    .await
    .expect("the caller moved to another node within 60 s")
    .expect("status watch");
    // The dead node stays down: whatever the caller's inbox was there must not matter.
    let again = loop {
        match client
            .call::<u64, u64>("math.double", &50u64)
            .timeout(Duration::from_secs(2))
            .await
        {
            Ok(n) => break n,
            Err(e) if killed_at.elapsed() < RECOVERY => println!("not yet: {e}"),
            Err(e) => panic!("no call was answered within {RECOVERY:?} of the kill: {e}"),
        }
    };
    let recovered = killed_at.elapsed();
    assert_eq!(again, 100);
    let (mut answered, mut failed, mut failed_within) = (0, Vec::new(), Duration::ZERO);
    for call in in_flight {
        let (r, ended_at) = call.await.expect("call task");
        match r {
            Ok(_) => answered += 1,
            Err(e) => {
                assert!(
                    e.contains("connection was lost"),
                    "a call in flight at the kill failed with {e:?}, not a connection error"
                );
                failed_within = failed_within.max(ended_at.saturating_duration_since(killed_at));
                failed.push(e);
            }
        }
        assert!(
            ended_at.saturating_duration_since(killed_at) < TIMEOUT / 2,
            "a call in flight at the kill ended only {:?} after it",
            ended_at.saturating_duration_since(killed_at)
        );
    }
    for n in 0..20u64 {
        let got: u64 = client
            .call("math.double", &n)
            .await
            .expect("call after the move");
        assert_eq!(got, n * 2);
    }
    println!(
        "rpc across the kill of node {}: of {IN_FLIGHT} calls in flight {answered} answered, {} \
         failed within {failed_within:?} of the kill (e.g. {:?}); the first call after the kill \
         was answered {recovered:?} after it, with the node still down",
        victim.0,
        failed.len(),
        failed.first()
    );
    let _ = client.shutdown().await;
    let _ = server.shutdown().await;
    tokio::task::spawn_blocking(move || {
        drop(restart);
        drop(cleanup);
    })
    .await
    .expect("restart and cleanup");
    CallsAcrossTheLoss {
        killed: victim,
        answered,
        failed,
        failed_within,
        recovered,
    }
}
