//! The metrics layer counts what actually flowed: publishes, deliveries by outcome (with
//! retries and dead letters), handler and call durations, calls by outcome (ok, remote error,
//! no responders, timeout) and deliveries in flight — read back through `metrics-util`'s
//! debugging recorder; on the embedded broker and (with the amqp091 driver) on RabbitMQ.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use tidings::observe::metrics::names;
use tidings::observe::MetricsLayer;
use tidings::ErrorKind;

/// A metric's name and sorted labels.
type Series = (String, Vec<(String, String)>);

/// Everything recorded so far. The debugging recorder drains on every snapshot, so counters and
/// gauges are summed over snapshots (a gauge's changes add up to its value) and histogram
/// samples collected.
struct Recorded {
    snapshotter: Snapshotter,
    /// Only series of this messaging system count (each broker's run has its own).
    system: &'static str,
    values: HashMap<Series, f64>,
    samples: HashMap<Series, Vec<f64>>,
}

impl Recorded {
    fn take(&mut self) {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let (kind, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let id = (key.name().to_owned(), labels);
            match (kind, value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => {
                    *self.values.entry(id).or_default() += n as f64
                }
                (MetricKind::Gauge, DebugValue::Gauge(g)) => {
                    *self.values.entry(id).or_default() += g.into_inner()
                }
                (MetricKind::Histogram, DebugValue::Histogram(h)) => self
                    .samples
                    .entry(id)
                    .or_default()
                    .extend(h.into_iter().map(|v| v.into_inner())),
                _ => {}
            }
        }
    }

    /// The sum of metric `name` over the series whose labels include `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.values
            .iter()
            .filter(|((n, labels), _)| n == name && self.ours(labels, with))
            .map(|(_, v)| v)
            .sum()
    }

    /// The samples of histogram `name` over the series whose labels include `with`.
    fn samples(&self, name: &str, with: &[(&str, &str)]) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|((n, labels), _)| n == name && self.ours(labels, with))
            .flat_map(|(_, v)| v.iter().copied())
            .collect()
    }

    /// Whether a series of this run's system has the labels `with`.
    fn ours(&self, labels: &[(String, String)], with: &[(&str, &str)]) -> bool {
        matches(labels, &[("system", self.system)]) && matches(labels, with)
    }

    /// Takes snapshots until `done` holds (the layers count just after a handler returns).
    async fn until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.take();
            if done(self) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {:#?}", self.values);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn matches(labels: &[(String, String)], with: &[(&str, &str)]) -> bool {
    with.iter()
        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
}

/// The same flow on each broker, one after the other: the recorder is the process's, and each
/// run reads only the series of its own messaging system.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_the_messages_that_flowed() -> tidings::Result<()> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder");
    let mut recorded = Recorded {
        snapshotter,
        system: "",
        values: HashMap::new(),
        samples: HashMap::new(),
    };
    counters_match_on(&mut recorded, "memory://metrics-test").await?;
    #[cfg(feature = "amqp091")]
    {
        let namespace = tidings_conformance::rabbitmq::Namespace::on_amqp091_broker("metrics");
        counters_match_on(&mut recorded, namespace.url()).await?;
    }
    Ok(())
}

async fn counters_match_on(recorded: &mut Recorded, url: &str) -> tidings::Result<()> {
    let plain = tidings::connect(url).await?;
    let bus = plain.with_layer(MetricsLayer::new().destination_words(2));
    let system = bus.provider().system();
    recorded.system = system;

    // Succeeds on the third attempt: two retries.
    let tries = Arc::new(AtomicU32::new(0));
    let counted = tries.clone();
    bus.subscribe::<u32>("jobs.flaky")
        .group("flaky")
        .max_attempts(5)
        .handle_message(move |m| {
            counted.fetch_add(1, Ordering::SeqCst);
            let attempt = m.attempt();
            async move {
                if attempt < 3 {
                    Err("not yet".into())
                } else {
                    Ok(())
                }
            }
        })
        .await?;
    // Always fails: a retry, then a dead letter.
    bus.subscribe::<u32>("jobs.broken")
        .group("broken")
        .max_attempts(2)
        .handle(|_| async { Err("broken".into()) })
        .await?;
    // Broadcast, fine: every event acked.
    bus.subscribe::<u32>("log.#")
        .handle(|_| async { Ok(()) })
        .await?;
    bus.serve("math.double", |n: u32| async move {
        if n == 0 {
            Err("zero".into())
        } else {
            Ok(n * 2)
        }
    })
    .await?;
    bus.serve("math.slow", |n: u32| async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(n)
    })
    .await?;

    bus.emit("jobs.flaky", &1u32).await?;
    bus.emit("jobs.broken", &2u32).await?;
    for n in 0..5u32 {
        bus.emit(&format!("log.host{n}.worker.{n}.info"), &n)
            .await?;
    }
    for n in 1..=3u32 {
        let r: u32 = bus.call("math.double", &n).await?;
        assert_eq!(r, n * 2);
    }
    let e = bus.call::<_, u32>("math.double", &0u32).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Remote);
    let e = bus.call::<_, u32>("math.nobody", &1u32).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoResponders);
    let e = bus
        .call::<_, u32>("math.slow", &1u32)
        .timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);

    recorded
        .until("all deliveries handled", |r| {
            r.sum(names::HANDLED, &[("subscription", "jobs.flaky")]) == 3.0
                && r.sum(names::HANDLED, &[("subscription", "jobs.broken")]) == 2.0
                && r.sum(names::HANDLED, &[("subscription", "log.#")]) == 5.0
                && r.sum(names::HANDLED, &[("subscription", "math.double")]) == 4.0
        })
        .await;
    assert_eq!(tries.load(Ordering::SeqCst), 3);

    // Published, by kind and destination (cut to two words).
    let published = |kind: &str, destination: &str| {
        recorded.sum(
            names::PUBLISHED,
            &[
                ("kind", kind),
                ("destination", destination),
                ("system", system),
            ],
        )
    };
    assert_eq!(published("event", "jobs.flaky"), 1.0);
    assert_eq!(published("event", "jobs.broken"), 1.0);
    for n in 0..5 {
        assert_eq!(published("event", &format!("log.host{n}.#")), 1.0);
    }
    assert_eq!(published("request", "math.double"), 4.0);
    assert_eq!(published("reply", "math.double"), 4.0);
    assert_eq!(published("request", "math.slow"), 1.0);
    assert_eq!(
        recorded.sum(
            names::PUBLISHED,
            &[
                ("kind", "request"),
                ("destination", "math.nobody"),
                ("outcome", "error")
            ]
        ),
        1.0
    );
    assert_eq!(recorded.sum(names::PUBLISHED, &[("kind", "event")]), 7.0);

    // Handled, retried, dead-lettered.
    let handled = |subscription, outcome| {
        recorded.sum(
            names::HANDLED,
            &[("subscription", subscription), ("outcome", outcome)],
        )
    };
    assert_eq!(handled("jobs.flaky", "retry"), 2.0);
    assert_eq!(handled("jobs.flaky", "ack"), 1.0);
    assert_eq!(handled("jobs.broken", "retry"), 1.0);
    assert_eq!(handled("jobs.broken", "dead_letter"), 1.0);
    assert_eq!(handled("log.#", "ack"), 5.0);
    assert_eq!(handled("math.double", "ack"), 4.0);
    assert_eq!(
        recorded.sum(
            names::RETRIED,
            &[("subscription", "jobs.flaky"), ("group", "flaky")]
        ),
        2.0
    );
    assert_eq!(
        recorded.sum(names::RETRIED, &[("subscription", "jobs.broken")]),
        1.0
    );
    assert_eq!(recorded.sum(names::RETRIED, &[]), 3.0);
    assert_eq!(
        recorded.sum(
            names::DEAD_LETTERED,
            &[("subscription", "jobs.broken"), ("group", "broken")]
        ),
        1.0
    );
    assert_eq!(recorded.sum(names::DEAD_LETTERED, &[]), 1.0);
    assert_eq!(
        recorded
            .samples(names::HANDLER_DURATION, &[("subscription", "jobs.flaky")])
            .len(),
        3
    );

    // Calls: three answered, one remote error, one without responders.
    let calls = |service, outcome| {
        recorded.sum(names::CALLS, &[("service", service), ("outcome", outcome)])
    };
    assert_eq!(calls("math.double", "ok"), 3.0);
    assert_eq!(calls("math.double", "error"), 1.0);
    assert_eq!(calls("math.nobody", "error"), 1.0);
    let latencies = recorded.samples(names::CALL_DURATION, &[("service", "math.double")]);
    assert_eq!(latencies.len(), 4);
    assert!(
        latencies.iter().all(|&s| s > 0.0 && s < 5.0),
        "{latencies:?}"
    );

    // The timed-out call is counted by a call made after its deadline (timeout + 1 s grace).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let _: u32 = bus.call("math.double", &5u32).await?;
    recorded.take();
    assert_eq!(
        recorded.sum(
            names::CALLS,
            &[("service", "math.slow"), ("outcome", "timeout")]
        ),
        1.0
    );

    // In flight: one delivery held in its handler, then none.
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let hold = release.clone();
    bus.subscribe::<u32>("jobs.held")
        .handle(move |_| {
            let started_tx = started_tx.clone();
            let hold = hold.clone();
            async move {
                started_tx.send(())?;
                hold.notified().await;
                Ok(())
            }
        })
        .await?;
    bus.emit("jobs.held", &1u32).await?;
    started.recv().await.expect("handler started");
    recorded.take();
    assert_eq!(
        recorded.sum(names::IN_FLIGHT, &[("subscription", "jobs.held")]),
        1.0
    );
    release.notify_one();
    recorded
        .until("the held delivery handled", |r| {
            r.sum(names::HANDLED, &[("subscription", "jobs.held")]) == 1.0
        })
        .await;
    assert_eq!(
        recorded.sum(names::IN_FLIGHT, &[("subscription", "jobs.held")]),
        0.0
    );

    // A handle without the layer records nothing.
    plain.emit("jobs.unseen", &1u32).await?;
    recorded.take();
    assert_eq!(
        recorded.sum(names::PUBLISHED, &[("destination", "jobs.unseen")]),
        0.0
    );

    // Shutdown waits for the slow server's handler: then nothing is in flight.
    bus.shutdown().await?;
    recorded.take();
    assert_eq!(recorded.sum(names::IN_FLIGHT, &[]), 0.0);
    println!("{system}: every metric matched what flowed");
    Ok(())
}

#[tokio::test]
async fn connection_status_is_watched() {
    // The recorder is global to the test binary and installed by the other test; this one only
    // checks that the watcher ends when the bus closes.
    let bus = tidings::connect("memory://metrics-status")
        .await
        .expect("bus");
    let watcher = tidings::observe::metrics::watch_status(&bus);
    bus.shutdown().await.expect("shutdown");
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the watcher ends when the connection closes")
        .expect("no panic");
}
