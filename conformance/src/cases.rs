//! The cases. Each asserts exact outcomes: what arrived, how often, in which order, with which
//! reason — never only "something happened".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings_core::codec::POSTCARD;
use tidings_core::driver::PublishOptions;
use tidings_core::interceptor::{on_receive, on_send};
use tidings_core::{Bus, Bytes, Capabilities, Envelope, ErrorKind, Message};

use crate::ensure;
use crate::support::{collector, Ctx, Note, QUIET, SOON};
use crate::BoxFuture;

mod barrier;
mod decline;
mod layers;
use barrier::barrier_waits_for_every_participant_then_nobody_misses_an_event;
use decline::rpc_declined_requests_go_to_the_server_that_holds_them;
mod membership;
mod rpc_contract;
use layers::{
    layers_of_each_handle_see_its_own_requests_and_replies,
    layers_run_outermost_first_see_outcomes_and_can_stop,
};
use membership::{
    guard_toggling_while_messages_flow_strands_nothing,
    member_leaving_while_messages_flow_strands_nothing,
};
use rpc_contract::{
    publish_carries_a_given_reply_to_unchanged,
    rpc_two_buses_over_one_connection_each_get_their_own_replies,
};

/// What a case returns: any error fails it, with its text as the reason (driver errors and
/// the suite's own messages alike, through `?`).
type Outcome = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// One conformance case.
#[derive(Debug)]
pub struct Case {
    /// The test name.
    pub name: &'static str,
    /// The missing capability that makes the case unsupported, if any.
    pub requires: fn(&Capabilities) -> Option<&'static str>,
    /// The longest the case may take.
    pub timeout: Duration,
    /// The case itself.
    pub run: fn(Arc<Ctx>) -> BoxFuture<'static, Outcome>,
}

fn always(_: &Capabilities) -> Option<&'static str> {
    None
}
fn ttl(c: &Capabilities) -> Option<&'static str> {
    (!c.ttl).then_some("ttl").or_else(|| durable(c))
}
fn durable(c: &Capabilities) -> Option<&'static str> {
    (!c.durable_groups).then_some("durable_groups")
}
fn redelivery(c: &Capabilities) -> Option<&'static str> {
    (!c.redelivery)
        .then_some("redelivery")
        .or_else(|| durable(c))
}
fn mandatory(c: &Capabilities) -> Option<&'static str> {
    (!c.mandatory).then_some("mandatory")
}
fn big_body(c: &Capabilities) -> Option<&'static str> {
    (c.max_body < 1024 * 1024 + 4096).then_some("max_body")
}

macro_rules! cases {
    ($($name:ident, $requires:ident, $secs:literal;)*) => {
        /// Every case, in the order they are listed.
        pub static CASES: &[Case] = &[$(
            Case {
                name: stringify!($name),
                requires: $requires,
                timeout: Duration::from_secs($secs),
                run: |ctx| Box::pin(async move {
                    let outcome = $name(ctx.clone()).await;
                    ctx.finish().await;
                    outcome
                }),
            },
        )*];
    };
}

cases! {
    broadcast_reaches_every_subscriber_once, always, 30;
    star_and_hash_patterns_match_exactly, always, 30;
    group_delivers_each_message_to_one_member_and_spreads_load, always, 60;
    failed_message_is_retried_by_another_member, always, 30;
    unacked_messages_of_a_dead_consumer_are_redelivered, redelivery, 30;
    handler_error_is_retried_then_dead_lettered_with_reason, always, 30;
    dead_letter_can_be_replayed, always, 30;
    undecodable_payload_is_dead_lettered_without_retry, always, 30;
    expired_message_is_not_delivered, ttl, 30;
    headers_and_interceptors_round_trip, always, 30;
    layers_of_each_handle_see_its_own_requests_and_replies, always, 30;
    layers_run_outermost_first_see_outcomes_and_can_stop, always, 30;
    emitter_identity_is_visible_and_filterable, always, 30;
    rpc_call_returns_the_reply, always, 30;
    rpc_remote_error_reaches_the_caller, always, 30;
    rpc_call_times_out, always, 30;
    rpc_late_reply_is_ignored, always, 30;
    rpc_reply_to_a_caller_that_left_does_not_stall_the_server, always, 30;
    rpc_concurrent_calls_share_one_inbox, always, 30;
    rpc_calls_from_many_tasks_survive_one_timing_out, always, 30;
    rpc_two_buses_over_one_connection_each_get_their_own_replies, always, 30;
    publish_carries_a_given_reply_to_unchanged, always, 30;
    rpc_call_without_server_fails_fast, mandatory, 30;
    rpc_declined_requests_go_to_the_server_that_holds_them, always, 60;
    cast_reaches_one_server_and_every_broadcast_subscriber, always, 30;
    order_is_kept_from_one_publisher_to_one_consumer, always, 60;
    one_mebibyte_payload_round_trips, big_body, 60;
    ten_thousand_messages_none_lost_or_duplicated, always, 180;
    graceful_shutdown_finishes_in_flight_handlers, always, 30;
    active_when_guard_sends_work_to_other_members, always, 30;
    member_leaving_while_messages_flow_strands_nothing, always, 90;
    guard_toggling_while_messages_flow_strands_nothing, always, 90;
    invalid_keys_patterns_and_names_are_clear_errors, always, 30;
    barrier_waits_for_every_participant_then_nobody_misses_an_event, always, 30;
}

async fn broadcast_reaches_every_subscriber_once(ctx: Arc<Ctx>) -> Outcome {
    let publisher = ctx.bus().await?;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let bus = ctx.bus().await?;
        let (sink, got) = collector();
        bus.subscribe::<Note>("orders.#")
            .handle(sink.recorder(|note: Note| note.n))
            .await?;
        seen.push(got);
    }
    for n in 0..5 {
        publisher.emit("orders.created", &Note::new(n)).await?;
    }
    for (i, got) in seen.iter_mut().enumerate() {
        let mut ns = got
            .take(5, SOON)
            .await
            .map_err(|e| format!("subscriber {i}: {e}"))?;
        ns.sort();
        ensure!(
            ns == vec![0, 1, 2, 3, 4],
            "subscriber {i} got {ns:?}, expected 0..5 once each"
        );
        got.nothing_more(QUIET)
            .await
            .map_err(|e| format!("subscriber {i}: {e}"))?;
    }
    Ok(())
}

async fn star_and_hash_patterns_match_exactly(ctx: Arc<Ctx>) -> Outcome {
    let bus = ctx.bus().await?;
    let patterns = ["a.*.c", "a.#", "a.#.z", "#.z", "*", "a.*.#"];
    let keys = ["a.b.c", "a.c", "a.b.b.c", "a", "a.z", "a.b.c.z", "b.z", "x"];
    let mut readers = Vec::new();
    for pattern in patterns {
        let (sink, got) = collector::<String>();
        bus.subscribe::<Note>(pattern)
            .handle_message(sink.recorder(|m: Message<Note>| m.routing_key().to_owned()))
            .await?;
        readers.push((pattern, got));
    }
    for (n, key) in keys.iter().enumerate() {
        bus.emit(key, &Note::new(n as u32)).await?;
    }
    let expected: BTreeMap<&str, Vec<&str>> = [
        ("a.*.c", vec!["a.b.c"]),
        (
            "a.#",
            vec!["a.b.c", "a.c", "a.b.b.c", "a", "a.z", "a.b.c.z"],
        ),
        ("a.#.z", vec!["a.z", "a.b.c.z"]),
        ("#.z", vec!["a.z", "a.b.c.z", "b.z"]),
        ("*", vec!["a", "x"]),
        ("a.*.#", vec!["a.b.c", "a.c", "a.b.b.c", "a.z", "a.b.c.z"]),
    ]
    .into_iter()
    .collect();
    for (pattern, mut got) in readers {
        let want = &expected[pattern];
        let mut keys = got
            .take(want.len(), SOON)
            .await
            .map_err(|e| format!("{pattern}: {e}"))?;
        keys.extend(got.drain_for(QUIET).await);
        let mut want_sorted = want.clone();
        want_sorted.sort();
        keys.sort();
        ensure!(
            keys == want_sorted,
            "pattern {pattern:?} received {keys:?}, expected exactly {want_sorted:?}"
        );
    }
    Ok(())
}

async fn group_delivers_each_message_to_one_member_and_spreads_load(ctx: Arc<Ctx>) -> Outcome {
    let group = ctx.name("workers");
    let (sink, mut got) = collector::<(usize, u32)>();
    let (keys, mut keys_got) = collector::<String>();
    for member in 0..3 {
        let bus = ctx.bus().await?;
        let (sink, keys) = (sink.clone(), keys.clone());
        bus.subscribe::<Note>("jobs.*")
            .group(&group)
            .prefetch(1)
            .handle_message(move |message: Message<Note>| {
                let (sink, keys) = (sink.clone(), keys.clone());
                async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    keys.put(message.routing_key().to_owned());
                    sink.put((member, message.event().n));
                    Ok(())
                }
            })
            .await?;
    }
    let publisher = ctx.bus().await?;
    for n in 0..300 {
        publisher.emit("jobs.resize", &Note::new(n)).await?;
    }
    let mut all = got.take(300, SOON * 3).await?;
    all.extend(got.drain_for(QUIET).await);
    let ns: BTreeSet<u32> = all.iter().map(|(_, n)| *n).collect();
    ensure!(
        all.len() == 300 && ns.len() == 300,
        "expected 300 distinct deliveries, got {} ({} distinct)",
        all.len(),
        ns.len()
    );
    let keys = keys_got.drain_for(Duration::ZERO).await;
    ensure!(
        keys.len() == 300 && keys.iter().all(|k| k == "jobs.resize"),
        "members must see the routing key published with, saw {:?}",
        keys.iter().collect::<BTreeSet<_>>()
    );
    for member in 0..3 {
        let count = all.iter().filter(|(m, _)| *m == member).count();
        ensure!(
            count >= 30,
            "member {member} handled only {count} of 300: load is not spread"
        );
    }
    Ok(())
}

async fn failed_message_is_retried_by_another_member(ctx: Arc<Ctx>) -> Outcome {
    let group = ctx.name("flaky");
    let (sink, mut got) = collector::<(u32, String)>();
    let failing = ctx.bus().await?;
    failing
        .subscribe::<Note>("work")
        .group(&group)
        .prefetch(1)
        .max_attempts(1000)
        .handle(|_| async {
            // Slow to fail, so the healthy member is usually free when the message comes back.
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err("this member always fails".into())
        })
        .await?;
    let healthy = ctx.bus().await?;
    healthy
        .subscribe::<Note>("work")
        .group(&group)
        .prefetch(1)
        .max_attempts(1000)
        .handle_message(sink.recorder(|m: Message<Note>| (m.event().n, m.routing_key().to_owned())))
        .await?;
    for n in 0..20 {
        healthy.emit("work", &Note::new(n)).await?;
    }
    let mut seen = got.take(20, SOON).await?;
    got.nothing_more(QUIET).await?;
    seen.sort();
    let ns: Vec<u32> = seen.iter().map(|(n, _)| *n).collect();
    ensure!(
        ns == (0..20).collect::<Vec<_>>(),
        "healthy member got {ns:?}, expected 0..20 once each"
    );
    // A retry is a copy sent back to the group's queue: it keeps the key.
    ensure!(
        seen.iter().all(|(_, key)| key == "work"),
        "retried messages must keep their routing key: {seen:?}"
    );
    Ok(())
}

async fn unacked_messages_of_a_dead_consumer_are_redelivered(ctx: Arc<Ctx>) -> Outcome {
    let group = ctx.name("crashy");
    let doomed = ctx.bus().await?;
    let (started, mut started_seen) = collector::<u32>();
    doomed
        .subscribe::<Note>("work")
        .group(&group)
        .prefetch(5)
        .handle(move |note| {
            let started = started.clone();
            async move {
                started.put(note.n);
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .await?;
    let publisher = ctx.bus().await?;
    for n in 0..5 {
        publisher.emit("work", &Note::new(n)).await?;
    }
    started_seen
        .take(1, SOON)
        .await
        .map_err(|e| format!("the doomed consumer never started: {e}"))?;
    doomed.abort().await;
    let survivor = ctx.bus().await?;
    let (sink, mut got) = collector::<(u32, u32)>();
    survivor
        .subscribe::<Note>("work")
        .group(&group)
        .handle_message(sink.recorder(|m: Message<Note>| (m.n, m.attempt())))
        .await?;
    let mut all = got.take(5, SOON).await?;
    got.nothing_more(QUIET).await?;
    all.sort();
    let ns: Vec<u32> = all.iter().map(|(n, _)| *n).collect();
    ensure!(
        ns == vec![0, 1, 2, 3, 4],
        "survivor got {ns:?}, expected 0..5 once each"
    );
    ensure!(
        all[0].1 >= 2,
        "the message the dead consumer was handling should count as attempt 2, got {}",
        all[0].1
    );
    Ok(())
}

async fn handler_error_is_retried_then_dead_lettered_with_reason(ctx: Arc<Ctx>) -> Outcome {
    let group = ctx.name("doomed");
    let bus = ctx.bus().await?;
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    bus.subscribe::<Note>("work.#")
        .group(&group)
        .max_attempts(3)
        .handle(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Err("disk on fire".into()) }
        })
        .await?;
    bus.emit("work.burn", &Note::new(7)).await?;
    let mut dead = bus.dead_letters(&group).await?;
    let letter = tokio::time::timeout(SOON, dead.next())
        .await
        .map_err(|_| "no dead letter arrived".to_string())?
        .ok_or("dead-letter reader closed")?;
    ensure!(
        letter.reason().contains("disk on fire"),
        "reason {:?} lacks the handler's error",
        letter.reason()
    );
    ensure!(
        letter.attempts() == 3,
        "dead letter records {} attempts, expected 3",
        letter.attempts()
    );
    ensure!(
        letter.routing_key() == "work.burn",
        "original key {:?} not kept",
        letter.routing_key()
    );
    ensure!(
        letter.from_subscription() == group,
        "dead letter says it came from {:?}",
        letter.from_subscription()
    );
    ensure!(letter.dead_at_ms().is_some(), "dead letter has no time");
    let note: Note =
        tidings_core::Codec::decode(&letter.envelope().content_type, &letter.envelope().body)
            .map_err(|e| format!("dead letter payload unreadable: {e}"))?;
    ensure!(
        note == Note::new(7),
        "dead letter payload changed: {note:?}"
    );
    letter.purge().await?;
    ensure!(
        calls.load(Ordering::SeqCst) == 3,
        "handler ran {} times, expected exactly 3",
        calls.load(Ordering::SeqCst)
    );
    Ok(())
}

async fn dead_letter_can_be_replayed(ctx: Arc<Ctx>) -> Outcome {
    let group = ctx.name("replay");
    let bus = ctx.bus().await?;
    let healthy = Arc::new(AtomicBool::new(false));
    let (sink, mut got) = collector::<u32>();
    let flag = healthy.clone();
    bus.subscribe::<Note>("work")
        .group(&group)
        .max_attempts(1)
        .handle(move |note| {
            let ok = flag.load(Ordering::SeqCst);
            let sink = sink.clone();
            async move {
                if !ok {
                    return Err("not yet".into());
                }
                sink.put(note.n);
                Ok(())
            }
        })
        .await?;
    bus.emit("work", &Note::new(3)).await?;
    let mut dead = bus.dead_letters(&group).await?;
    let letter = tokio::time::timeout(SOON, dead.next())
        .await
        .map_err(|_| "no dead letter arrived".to_string())?
        .ok_or("dead-letter reader closed")?;
    ensure!(
        letter.attempts() == 1,
        "max_attempts(1) should dead-letter on attempt 1, got {}",
        letter.attempts()
    );
    healthy.store(true, Ordering::SeqCst);
    letter.replay().await?;
    let ns = got
        .take(1, SOON)
        .await
        .map_err(|e| format!("replayed message: {e}"))?;
    ensure!(ns == vec![3], "replay delivered {ns:?}");
    let again = tokio::time::timeout(QUIET, dead.next()).await;
    ensure!(
        again.is_err(),
        "the replayed dead letter is still in the dead-letter queue"
    );
    Ok(())
}

async fn undecodable_payload_is_dead_lettered_without_retry(ctx: Arc<Ctx>) -> Outcome {
    let group = ctx.name("strict");
    let bus = ctx.bus().await?;
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    bus.subscribe::<Note>("input")
        .group(&group)
        .max_attempts(5)
        .handle(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
        .await?;
    let mut garbage = Envelope::new(
        "input",
        POSTCARD,
        Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff]),
    );
    garbage.event = "conformance_note".into();
    bus.publish_envelope(garbage, &PublishOptions::default())
        .await?;
    let wrong_type = Envelope::new("input", "text/csv", Bytes::from_static(b"1,2,3"));
    bus.publish_envelope(wrong_type, &PublishOptions::default())
        .await?;
    // JSON under the postcard content type: postcard alone reads a prefix of it as a valid
    // note (n = 123, the `{`) and ignores the rest.
    let mislabelled_json = Note {
        n: 1,
        text: "x".repeat(40),
    };
    let mut mislabelled = Envelope::new(
        "input",
        POSTCARD,
        Bytes::from(serde_json::to_vec(&mislabelled_json)?),
    );
    mislabelled.event = "conformance_note".into();
    bus.publish_envelope(mislabelled, &PublishOptions::default())
        .await?;
    let mut dead = bus.dead_letters(&group).await?;
    let mut reasons = Vec::new();
    for _ in 0..3 {
        let letter = tokio::time::timeout(SOON, dead.next())
            .await
            .map_err(|_| {
                format!(
                    "only {} of 3 undecodable messages were dead-lettered",
                    reasons.len()
                )
            })?
            .ok_or("dead-letter reader closed")?;
        ensure!(
            letter.attempts() == 1,
            "an undecodable message was retried: {} attempts",
            letter.attempts()
        );
        reasons.push(letter.reason().to_owned());
        letter.purge().await?;
    }
    reasons.sort();
    ensure!(
        reasons
            .iter()
            .any(|r| r.contains("cannot decode") && r.contains("postcard")),
        "reasons {reasons:?} do not name the postcard decode error"
    );
    ensure!(
        reasons
            .iter()
            .any(|r| r.contains("unknown content type \"text/csv\"")),
        "reasons {reasons:?} do not name the content type"
    );
    ensure!(
        reasons.iter().any(|r| r.contains("left over")),
        "reasons {reasons:?} do not say the mislabelled JSON body was not read whole"
    );
    ensure!(
        calls.load(Ordering::SeqCst) == 0,
        "the handler was called with an undecodable payload"
    );
    Ok(())
}

async fn expired_message_is_not_delivered(ctx: Arc<Ctx>) -> Outcome {
    let group = ctx.name("slow");
    let bus = ctx.bus().await?;
    // Create the durable group queue, then leave it without consumers.
    bus.subscribe::<Note>("news")
        .group(&group)
        .handle(|_| async { Ok(()) })
        .await?
        .unsubscribe()
        .await;
    bus.emit("news", &Note::new(1))
        .ttl(Duration::from_millis(300))
        .await?;
    bus.emit("news", &Note::new(2)).await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (sink, mut got) = collector::<u32>();
    bus.subscribe::<Note>("news")
        .group(&group)
        .handle(sink.recorder(|note: Note| note.n))
        .await?;
    let ns = got.take(1, SOON).await?;
    got.nothing_more(QUIET)
        .await
        .map_err(|e| format!("the expired message was delivered: {e}"))?;
    ensure!(
        ns == vec![2],
        "got {ns:?}, expected only the message without TTL"
    );
    Ok(())
}

async fn headers_and_interceptors_round_trip(ctx: Arc<Ctx>) -> Outcome {
    let sender = ctx.bus().await?.with_interceptor(on_send(|env| {
        env.headers.insert("trace-id".into(), "trace-42".into());
    }));
    let receiver = ctx.bus().await?.with_interceptor(on_receive(|env| {
        let trace = env.headers.get("trace-id").cloned().unwrap_or_default();
        env.headers.insert("seen-trace".into(), trace);
    }));
    let (sink, mut got) = collector::<BTreeMap<String, String>>();
    receiver
        .subscribe::<Note>("h.*")
        .handle_message(sink.recorder(|m: Message<Note>| m.envelope().headers.clone()))
        .await?;
    let tricky = "a:b\nc\\d\re, ünï ✓";
    sender
        .emit("h.x", &Note::new(1))
        .header("tenant", "acme")
        .header("tricky", tricky)
        .await?;
    let headers = got.take(1, SOON).await?.remove(0);
    ensure!(
        headers.get("tenant").map(String::as_str) == Some("acme"),
        "tenant header lost: {headers:?}"
    );
    ensure!(
        headers.get("tricky").map(String::as_str) == Some(tricky),
        "header with special characters changed: {:?}",
        headers.get("tricky")
    );
    ensure!(
        headers.get("trace-id").map(String::as_str) == Some("trace-42"),
        "send interceptor header lost: {headers:?}"
    );
    ensure!(
        headers.get("seen-trace").map(String::as_str) == Some("trace-42"),
        "receive interceptor did not run or could not read: {headers:?}"
    );
    let reserved = sender
        .emit("h.x", &Note::new(2))
        .header("tidings-attempt", "9")
        .await;
    ensure!(
        reserved
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::InvalidConfig),
        "a reserved header name was accepted: {reserved:?}"
    );
    Ok(())
}

async fn emitter_identity_is_visible_and_filterable(ctx: Arc<Ctx>) -> Outcome {
    let worker = ctx.bus().await?.with_identity("host1.worker.1")?;
    let monitor = ctx.bus().await?.with_identity("host2.monitor.7")?;
    let receiver = ctx.bus().await?;
    let (all_sink, mut all) = collector::<String>();
    receiver
        .subscribe::<Note>("log.#")
        .handle_message(all_sink.recorder(|m: Message<Note>| m.emitter().to_owned()))
        .await?;
    let (worker_sink, mut workers) = collector::<String>();
    receiver
        .subscribe::<Note>("log.#")
        .from("*.worker.*")
        .handle_message(worker_sink.recorder(|m: Message<Note>| m.emitter().to_owned()))
        .await?;
    worker.emit("log.info", &Note::new(1)).await?;
    monitor.emit("log.info", &Note::new(2)).await?;
    let mut emitters = all.take(2, SOON).await?;
    emitters.sort();
    ensure!(
        emitters == vec!["host1.worker.1", "host2.monitor.7"],
        "emitters seen: {emitters:?}"
    );
    let filtered = workers.take(1, SOON).await?;
    workers
        .nothing_more(QUIET)
        .await
        .map_err(|e| format!("the emitter filter let a monitor through: {e}"))?;
    ensure!(
        filtered == vec!["host1.worker.1"],
        "filtered subscription saw {filtered:?}"
    );
    Ok(())
}

async fn rpc_call_returns_the_reply(ctx: Arc<Ctx>) -> Outcome {
    let name = ctx.name("add");
    let server = ctx.bus().await?;
    server
        .serve(&name, |pair: Vec<u8>| async move {
            Ok(pair.iter().map(|x| *x as u64).sum::<u64>())
        })
        .await?;
    let client = ctx.bus().await?;
    let sum: u64 = client.call(&name, &vec![2u8, 40]).timeout(SOON).await?;
    ensure!(sum == 42, "call returned {sum}, expected 42");
    Ok(())
}

async fn rpc_remote_error_reaches_the_caller(ctx: Arc<Ctx>) -> Outcome {
    let name = ctx.name("divide");
    let server = ctx.bus().await?;
    server
        .serve(&name, |_: u64| async move {
            Err::<u64, _>("division by zero".into())
        })
        .await?;
    let client = ctx.bus().await?;
    let started = Instant::now();
    let result: tidings_core::Result<u64> = client.call(&name, &0u64).timeout(SOON).await;
    let err = result.err().ok_or("a failing server returned a value")?;
    ensure!(
        err.kind() == ErrorKind::Remote,
        "expected a Remote error, got {err}"
    );
    ensure!(
        err.to_string().contains("division by zero"),
        "remote error text lost: {err}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "the remote error came back only after {:?}",
        started.elapsed()
    );
    Ok(())
}

async fn rpc_call_times_out(ctx: Arc<Ctx>) -> Outcome {
    let name = ctx.name("sleepy");
    let server = ctx.bus().await?;
    server
        .serve(&name, |n: u64| async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(n)
        })
        .await?;
    let client = ctx.bus().await?;
    let started = Instant::now();
    let result: tidings_core::Result<u64> = client
        .call(&name, &1u64)
        .timeout(Duration::from_millis(300))
        .await;
    let err = result
        .err()
        .ok_or("a call to a sleeping server did not time out")?;
    ensure!(
        err.kind() == ErrorKind::Timeout,
        "expected Timeout, got {err}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "timeout took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Serves `name` on a new bus as `n * 10`, taking `slow` to answer request 1.
async fn serve_slow_first(
    ctx: &Ctx,
    name: &str,
    slow: Duration,
    concurrency: usize,
) -> Result<Bus, Box<dyn std::error::Error + Send + Sync>> {
    let server = ctx.bus().await?;
    server
        .serve(name, move |n: u64| async move {
            if n == 1 {
                tokio::time::sleep(slow).await;
            }
            Ok(n * 10)
        })
        .concurrency(concurrency)
        .await?;
    Ok(server)
}

/// Calls `name` with request 1, which must time out after `timeout`.
async fn call_first_times_out(bus: &Bus, name: &str, timeout: Duration) -> Outcome {
    let first: tidings_core::Result<u64> = bus.call(name, &1u64).timeout(timeout).await;
    ensure!(
        first
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::Timeout),
        "first call should time out: {first:?}"
    );
    Ok(())
}

async fn rpc_late_reply_is_ignored(ctx: Arc<Ctx>) -> Outcome {
    let name = ctx.name("echo");
    let _server = serve_slow_first(&ctx, &name, Duration::from_millis(700), 4).await?;
    let client = ctx.bus().await?;
    call_first_times_out(&client, &name, Duration::from_millis(200)).await?;
    let second: u64 = client.call(&name, &2u64).timeout(SOON).await?;
    ensure!(second == 20, "second call got {second}, expected 20");
    tokio::time::sleep(Duration::from_millis(900)).await; // the late reply to call 1 arrives now
    let third: u64 = client.call(&name, &3u64).timeout(SOON).await?;
    ensure!(
        third == 30,
        "after a late reply, the third call got {third}, expected 30"
    );
    Ok(())
}

/// A caller that gave up and closed its bus before the reply: the server's reply goes nowhere,
/// and the server goes on serving at once (its reply must not wait for a confirm that never
/// comes).
async fn rpc_reply_to_a_caller_that_left_does_not_stall_the_server(ctx: Arc<Ctx>) -> Outcome {
    let name = ctx.name("echo");
    let _server = serve_slow_first(&ctx, &name, Duration::from_millis(500), 1).await?;
    let leaving = ctx.bus().await?;
    call_first_times_out(&leaving, &name, Duration::from_millis(100)).await?;
    leaving.shutdown().await?;
    tokio::time::sleep(Duration::from_millis(600)).await; // the server replies to nobody now
    let staying = ctx.bus().await?;
    let started = Instant::now();
    let second: u64 = staying.call(&name, &2u64).timeout(SOON).await?;
    ensure!(second == 20, "second call got {second}, expected 20");
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "the server took {:?} to answer after replying to a caller that left",
        started.elapsed()
    );
    Ok(())
}

async fn rpc_concurrent_calls_share_one_inbox(ctx: Arc<Ctx>) -> Outcome {
    let name = ctx.name("square");
    let server = ctx.bus().await?;
    server
        .serve(&name, |n: u64| async move { Ok(n * n) })
        .concurrency(8)
        .await?;
    let client = ctx.bus().await?;
    let calls = (0..100u64).map(|n| {
        let client = client.clone();
        let name = name.clone();
        async move {
            let r: tidings_core::Result<u64> = client.call(&name, &n).timeout(SOON).await;
            (n, r)
        }
    });
    for (n, r) in futures::future::join_all(calls).await {
        let got = r.map_err(|e| format!("call {n}: {e}"))?;
        ensure!(got == n * n, "call {n} got {got}, another call's reply");
    }
    Ok(())
}

/// Calls from separate tasks share the inbox too; the call reading it for the others may time
/// out and leave, and the rest still get their own replies.
async fn rpc_calls_from_many_tasks_survive_one_timing_out(ctx: Arc<Ctx>) -> Outcome {
    let name = ctx.name("maybe-slow");
    let server = ctx.bus().await?;
    server
        .serve(&name, |n: u64| async move {
            if n == 0 {
                tokio::time::sleep(Duration::from_millis(800)).await;
            }
            Ok(n + 1000)
        })
        .concurrency(8)
        .await?;
    let client = ctx.bus().await?;
    let slow = {
        let (client, name) = (client.clone(), name.clone());
        tokio::spawn(async move {
            client
                .call::<u64, u64>(&name, &0)
                .timeout(Duration::from_millis(300))
                .await
        })
    };
    let fast: Vec<_> = (1..=40u64)
        .map(|n| {
            let (client, name) = (client.clone(), name.clone());
            tokio::spawn(async move {
                // Spread over the slow call's lifetime and beyond.
                tokio::time::sleep(Duration::from_millis(n * 15)).await;
                (n, client.call::<u64, u64>(&name, &n).timeout(SOON).await)
            })
        })
        .collect();
    for task in fast {
        let (n, result) = task.await?;
        let got = result.map_err(|e| format!("call {n}: {e}"))?;
        ensure!(got == n + 1000, "call {n} got {got}, another call's reply");
    }
    let slow = slow.await?;
    ensure!(
        slow.as_ref().is_err_and(|e| e.kind() == ErrorKind::Timeout),
        "the slow call should have timed out: {slow:?}"
    );
    Ok(())
}

async fn rpc_call_without_server_fails_fast(ctx: Arc<Ctx>) -> Outcome {
    let client = ctx.bus().await?;
    let started = Instant::now();
    let result: tidings_core::Result<u64> =
        client.call(&ctx.name("nobody"), &1u64).timeout(SOON).await;
    let err = result
        .err()
        .ok_or("a call nobody serves returned a value")?;
    ensure!(
        err.kind() == ErrorKind::NoResponders,
        "expected NoResponders, got {err}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "NoResponders took {:?}",
        started.elapsed()
    );
    let cast = client.cast(&ctx.name("nobody"), &1u64).await;
    ensure!(
        cast.as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::NoResponders),
        "a cast nobody serves succeeded: {cast:?}"
    );
    Ok(())
}

async fn cast_reaches_one_server_and_every_broadcast_subscriber(ctx: Arc<Ctx>) -> Outcome {
    let name = ctx.name("encrypt");
    let (sink, mut got) = collector::<(usize, u64)>();
    for worker in 0..2 {
        let bus = ctx.bus().await?;
        let sink = sink.clone();
        bus.serve(&name, move |n: u64| {
            let sink = sink.clone();
            async move {
                sink.put((worker, n));
                Ok(())
            }
        })
        .await?;
    }
    // A broadcast subscription whose pattern matches the service's key: as the docs of
    // `cast` say, it gets its own copy of every cast, beside the one server that handles it.
    let (watch_sink, mut watched) = collector::<u64>();
    let watcher = ctx.bus().await?;
    watcher
        .subscribe::<u64>(&name)
        .handle(watch_sink.recorder(|n: u64| n))
        .await?;
    let client = ctx.bus().await?;
    for n in 0..10u64 {
        client.cast(&name, &n).await?;
    }
    let mut all = got.take(10, SOON).await?;
    got.nothing_more(QUIET).await?;
    all.sort_by_key(|(_, n)| *n);
    let ns: Vec<u64> = all.iter().map(|(_, n)| *n).collect();
    ensure!(
        ns == (0..10).collect::<Vec<_>>(),
        "casts handled: {ns:?}, expected each of 0..10 once"
    );
    let mut copies = watched.take(10, SOON).await?;
    watched.nothing_more(QUIET).await?;
    copies.sort();
    ensure!(
        copies == (0..10).collect::<Vec<_>>(),
        "a broadcast subscriber of the key saw {copies:?}, expected a copy of each cast"
    );
    Ok(())
}

async fn order_is_kept_from_one_publisher_to_one_consumer(ctx: Arc<Ctx>) -> Outcome {
    let bus = ctx.bus().await?;
    let (sink, mut got) = collector::<u32>();
    bus.subscribe::<Note>("seq")
        .group(&ctx.name("ordered"))
        .handle(sink.recorder(|note: Note| note.n))
        .await?;
    let publisher = ctx.bus().await?;
    for n in 0..500 {
        publisher.emit("seq", &Note::new(n)).await?;
    }
    let ns = got.take(500, SOON * 3).await?;
    if let Some(i) = (1..ns.len()).find(|&i| ns[i] != ns[i - 1] + 1) {
        return Err(format!(
            "out of order at position {i}: {} after {}",
            ns[i],
            ns[i - 1]
        )
        .into());
    }
    ensure!(ns[0] == 0, "first message was {}", ns[0]);
    Ok(())
}

async fn one_mebibyte_payload_round_trips(ctx: Arc<Ctx>) -> Outcome {
    let bus = ctx.bus().await?;
    let (sink, mut got) = collector::<Vec<u8>>();
    bus.subscribe::<Vec<u8>>("blob")
        .handle(sink.recorder(|bytes: Vec<u8>| bytes))
        .await?;
    let payload: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    bus.emit("blob", &payload).await?;
    let back = got.take(1, SOON * 2).await?.remove(0);
    ensure!(
        back.len() == payload.len(),
        "got {} bytes, sent {}",
        back.len(),
        payload.len()
    );
    ensure!(back == payload, "the payload's bytes changed in transit");
    Ok(())
}

async fn ten_thousand_messages_none_lost_or_duplicated(ctx: Arc<Ctx>) -> Outcome {
    const N: u32 = 10_000;
    let group = ctx.name("bulk");
    let (sink, mut got) = collector::<u32>();
    for _ in 0..2 {
        let bus = ctx.bus().await?;
        let sink = sink.clone();
        bus.subscribe::<Note>("bulk.*")
            .group(&group)
            .prefetch(100)
            .concurrency(4)
            .handle(sink.recorder(|note: Note| note.n))
            .await?;
    }
    let publisher = ctx.bus().await?;
    for chunk in (0..N).collect::<Vec<_>>().chunks(200) {
        let sends = chunk.iter().map(|n| {
            let publisher = publisher.clone();
            let n = *n;
            async move { publisher.emit("bulk.item", &Note::new(n)).await }
        });
        for r in futures::future::join_all(sends).await {
            r?;
        }
    }
    let mut all = got.take(N as usize, Duration::from_secs(120)).await?;
    all.extend(got.drain_for(QUIET).await);
    let distinct: BTreeSet<u32> = all.iter().copied().collect();
    ensure!(
        distinct.len() == N as usize,
        "{} of {N} messages arrived",
        distinct.len()
    );
    ensure!(
        all.len() == N as usize,
        "{} duplicate deliveries",
        all.len() - N as usize
    );
    Ok(())
}

async fn graceful_shutdown_finishes_in_flight_handlers(ctx: Arc<Ctx>) -> Outcome {
    let group = ctx.name("graceful");
    let bus = ctx.bus().await?;
    let finished = Arc::new(AtomicBool::new(false));
    let (started, mut started_seen) = collector::<u32>();
    let done = finished.clone();
    bus.subscribe::<Note>("job")
        .group(&group)
        .handle(move |note| {
            let started = started.clone();
            let done = done.clone();
            async move {
                started.put(note.n);
                tokio::time::sleep(Duration::from_millis(500)).await;
                done.store(true, Ordering::SeqCst);
                Ok(())
            }
        })
        .await?;
    bus.emit("job", &Note::new(1)).await?;
    started_seen.take(1, SOON).await?;
    bus.shutdown()
        .await
        .map_err(|e| format!("shutdown failed: {e}"))?;
    ensure!(
        finished.load(Ordering::SeqCst),
        "shutdown returned before the in-flight handler finished"
    );
    // The finished message was acked: a new member of the group must not get it again.
    let other = ctx.bus().await?;
    let (sink, mut got) = collector::<u32>();
    other
        .subscribe::<Note>("job")
        .group(&group)
        .handle(sink.recorder(|note: Note| note.n))
        .await?;
    got.nothing_more(QUIET)
        .await
        .map_err(|e| format!("a message finished before shutdown was redelivered: {e}"))?;
    let after = bus.emit("job", &Note::new(2)).await;
    ensure!(after.is_err(), "emit after shutdown succeeded");
    Ok(())
}

async fn active_when_guard_sends_work_to_other_members(ctx: Arc<Ctx>) -> Outcome {
    let group = ctx.name("uploads");
    let disk_ok = Arc::new(AtomicBool::new(false));
    let (sink, mut got) = collector::<(&'static str, u32)>();
    let guarded = ctx.bus().await?;
    let flag = disk_ok.clone();
    let guarded_sink = sink.clone();
    guarded
        .subscribe::<Note>("file.put")
        .group(&group)
        .prefetch(1)
        .active_when(move || flag.load(Ordering::SeqCst))
        .handle(guarded_sink.recorder(|note: Note| ("guarded", note.n)))
        .await?;
    let other = ctx.bus().await?;
    let other_sink = sink.clone();
    let other_sub = other
        .subscribe::<Note>("file.put")
        .group(&group)
        .prefetch(1)
        .handle(other_sink.recorder(|note: Note| ("other", note.n)))
        .await?;
    for n in 0..20 {
        other.emit("file.put", &Note::new(n)).await?;
    }
    let first = got.take(20, SOON).await?;
    ensure!(
        first.iter().all(|(who, _)| *who == "other"),
        "the inactive worker took messages: {first:?}"
    );
    other_sub.unsubscribe().await;
    disk_ok.store(true, Ordering::SeqCst);
    for n in 20..25 {
        other.emit("file.put", &Note::new(n)).await?;
    }
    let mut second = got.take(5, SOON).await?;
    got.nothing_more(QUIET).await?;
    second.sort();
    ensure!(
        second == (20..25).map(|n| ("guarded", n)).collect::<Vec<_>>(),
        "after the guard turned true: {second:?}"
    );
    Ok(())
}

async fn invalid_keys_patterns_and_names_are_clear_errors(ctx: Arc<Ctx>) -> Outcome {
    let bus = ctx.bus().await?;
    let e = bus
        .emit("bad..key", &Note::new(1))
        .await
        .err()
        .ok_or("emit accepted `bad..key`")?;
    ensure!(
        e.kind() == ErrorKind::InvalidRoutingKey && e.to_string().contains("empty word"),
        "bad key error unclear: {e}"
    );
    let e = bus
        .emit("log.#", &Note::new(1))
        .await
        .err()
        .ok_or("emit accepted a wildcard key")?;
    ensure!(
        e.kind() == ErrorKind::InvalidRoutingKey,
        "wildcard key error: {e}"
    );
    let e = bus
        .subscribe::<Note>("log.err*")
        .handle(|_| async { Ok(()) })
        .await
        .err()
        .ok_or("subscribe accepted `log.err*`")?;
    ensure!(
        e.kind() == ErrorKind::InvalidPattern && e.to_string().contains("whole word"),
        "bad pattern error unclear: {e}"
    );
    let e = bus
        .subscribe::<Note>("log.#")
        .group("has space")
        .handle(|_| async { Ok(()) })
        .await
        .err()
        .ok_or("subscribe accepted group `has space`")?;
    ensure!(
        e.kind() == ErrorKind::InvalidConfig && e.to_string().contains("group name"),
        "bad group error unclear: {e}"
    );
    let e = bus
        .with_identity("just.two")
        .err()
        .ok_or("identity `just.two` accepted")?;
    ensure!(
        e.to_string().contains("three words"),
        "bad identity error unclear: {e}"
    );
    Ok(())
}
