//! `Topology::apply` (and under it `SubscribeBuilder::declare`): an event emitted after the
//! topology is applied but before the component starts reaches the component when it starts —
//! on the embedded broker and on RabbitMQ.
#![cfg(feature = "system")]

use std::time::Duration;

use tidings::system::System;
use tidings::{Bus, ErrorKind};
use tokio::sync::mpsc;

const FILE: &str = r#"
[[component]]
name = "fetcher"
command = "fetcher"
replicas = 2

[[component.worker]]
group = "fetch"
patterns = ["fetch.#"]

[[component.fanout]]
patterns = ["config.changed"]
"#;

/// Starts replica `replica` of the fetcher: every intake subscribed, every event it gets sent
/// to the returned channel as `group key`.
async fn start_fetcher(bus: &Bus, replica: u32) -> mpsc::UnboundedReceiver<String> {
    let system = System::parse(FILE, "tidings.toml").unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    for intake in system.component("fetcher").unwrap().intakes_for(replica) {
        let group = intake.group.clone().unwrap_or_default();
        for builder in intake.subscribe::<String>(bus) {
            let (tx, group) = (tx.clone(), group.clone());
            builder
                .handle_message(move |m| {
                    let _ = tx.send(format!("{group} {}", m.routing_key()));
                    async { Ok(()) }
                })
                .await
                .unwrap();
        }
    }
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("open")
}

/// Applies twice (idempotent), emits, then starts both replicas: the job reaches one of them,
/// the fanout event each.
async fn events_sent_before_the_component_starts_are_kept(url: &str) {
    let system = System::parse(FILE, "tidings.toml").unwrap();
    let bus = tidings::connect(url).await.unwrap();
    system.topology().apply(&bus).await.unwrap();
    system.topology().apply(&bus).await.unwrap();
    bus.emit("fetch.page", &"a".to_owned()).await.unwrap();
    bus.emit("config.changed", &"b".to_owned()).await.unwrap();

    let component = tidings::connect(url).await.unwrap();
    let mut one = start_fetcher(&component, 1).await;
    let mut two = start_fetcher(&component, 2).await;
    let mut got = vec![
        next(&mut one).await,
        next(&mut one).await,
        next(&mut two).await,
    ];
    got.sort();
    assert_eq!(
        got,
        [
            "fetch fetch.page",
            "fetcher.1 config.changed",
            "fetcher.2 config.changed"
        ]
    );
    component.shutdown().await.unwrap();
    bus.shutdown().await.unwrap();
}

#[tokio::test]
async fn memory_keeps_what_is_sent_between_apply_and_start() {
    events_sent_before_the_component_starts_are_kept("memory://topology-apply").await;
}

#[tokio::test]
async fn only_durable_groups_can_be_declared() {
    let bus = tidings::connect("memory://topology-declare").await.unwrap();
    let e = bus
        .subscribe::<String>("log.#")
        .declare()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("broadcast subscription"), "{e}");
    let e = bus
        .subscribe::<String>("log.#")
        .group("tmp")
        .durable(false)
        .declare()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("durable(false)"), "{e}");
    let e = bus
        .subscribe::<String>("log..x")
        .group("g")
        .declare()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidPattern);
}

#[cfg(all(feature = "amqp091", feature = "cli"))]
mod rabbitmq {
    use tidings_conformance::rabbitmq::{Management, Namespace};

    #[tokio::test]
    async fn rabbitmq_keeps_what_is_sent_between_apply_and_start() {
        let ns = Namespace::on_amqp091_broker("topo-keep");
        super::events_sent_before_the_component_starts_are_kept(ns.url()).await;
        // The dead-letter queues exist too, before anything was dead-lettered.
        let url = ns.url().to_owned();
        let queues = tokio::task::spawn_blocking(move || Management::for_broker(&url)?.queues())
            .await
            .unwrap()
            .unwrap();
        let names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
        for suffix in [
            "group.fetch",
            "dead.fetch",
            "group.fetcher.1",
            "dead.fetcher.2",
        ] {
            let queue = format!("{}.{suffix}", ns.exchange());
            assert!(names.contains(&queue.as_str()), "{queue} in {names:?}");
        }
    }
}
