//! Members that come and go while a group's messages flow: whatever a member holds but has not
//! handled when it leaves or pauses goes back to the group at once, so nothing is stranded with
//! a member that no longer takes work, and nothing is handled twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidings_core::Bus;

use super::Outcome;
use crate::ensure;
use crate::support::{collector, Ctx, Note, Sink, QUIET, SOON};

/// How a member stops taking work for a while.
#[derive(Debug, Clone, Copy)]
enum Pause {
    /// `unsubscribe`, then subscribe again.
    Unsubscribe,
    /// Its `active_when` guard turns false, then true again.
    Guard,
}

/// How many times the changing member leaves and comes back.
const CYCLES: u32 = 20;

pub(super) async fn member_leaving_while_messages_flow_strands_nothing(ctx: Arc<Ctx>) -> Outcome {
    churn(ctx, Pause::Unsubscribe).await
}

pub(super) async fn guard_toggling_while_messages_flow_strands_nothing(ctx: Arc<Ctx>) -> Outcome {
    churn(ctx, Pause::Guard).await
}

/// A handler like a real worker's: 1 ms of work per message, four at a time.
async fn subscribe_worker(
    bus: &Bus,
    group: &str,
    sink: &Sink<u32>,
    guard: Option<Arc<AtomicBool>>,
) -> tidings_core::Result<tidings_core::Subscription> {
    let sink = sink.clone();
    let builder = bus.subscribe::<Note>("churn").group(group).concurrency(4);
    let builder = match guard {
        Some(flag) => builder.active_when(move || flag.load(Ordering::SeqCst)),
        None => builder,
    };
    builder
        .handle(move |note: Note| {
            let sink = sink.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                sink.put(note.n);
                Ok(())
            }
        })
        .await
}

/// One stable member and one that pauses [`CYCLES`] times (each time up for 50–250 ms) while
/// a publisher keeps sending; then every message must arrive, once.
async fn churn(ctx: Arc<Ctx>, pause: Pause) -> Outcome {
    let group = ctx.name("churn");
    let (sink, mut got) = collector::<u32>();
    let stable = ctx.bus().await?;
    subscribe_worker(&stable, &group, &sink, None).await?;
    let changing = ctx.bus().await?;
    let publisher = ctx.bus().await?;

    let done = Arc::new(AtomicBool::new(false));
    let sending = {
        let (publisher, done) = (publisher.clone(), done.clone());
        tokio::spawn(async move {
            let mut sent = 0u32;
            while !done.load(Ordering::SeqCst) {
                for _ in 0..20 {
                    publisher.emit("churn", &Note::new(sent)).await?;
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<u32, tidings_core::Error>(sent)
        })
    };

    let mut jitter = fastrand::Rng::new();
    let guard = Arc::new(AtomicBool::new(true));
    let mut guarded = match pause {
        Pause::Guard => {
            Some(subscribe_worker(&changing, &group, &sink, Some(guard.clone())).await?)
        }
        Pause::Unsubscribe => None,
    };
    for _ in 0..CYCLES {
        let up = Duration::from_millis(50 + jitter.u64(..200));
        match pause {
            Pause::Unsubscribe => {
                let member = subscribe_worker(&changing, &group, &sink, None).await?;
                tokio::time::sleep(up).await;
                member.unsubscribe().await;
            }
            Pause::Guard => {
                guard.store(true, Ordering::SeqCst);
                tokio::time::sleep(up).await;
                guard.store(false, Ordering::SeqCst);
            }
        }
        tokio::time::sleep(Duration::from_millis(20 + jitter.u64(..60))).await;
    }
    done.store(true, Ordering::SeqCst);
    let sent = sending
        .await
        .map_err(|e| format!("publisher task: {e}"))??;

    // Everything the paused member held went back at once: the stable member gets it soon,
    // although the paused member's connection stays open.
    let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + SOON;
    while counts.len() < sent as usize {
        match tokio::time::timeout_at(deadline, got.take(1, SOON)).await {
            Ok(Ok(n)) => *counts.entry(n[0]).or_default() += 1,
            _ => break,
        }
    }
    for n in got.drain_for(QUIET).await {
        *counts.entry(n).or_default() += 1;
    }
    let lost = (0..sent).filter(|n| !counts.contains_key(n)).count();
    let duplicates: u32 = counts.values().map(|c| c - 1).sum();
    eprintln!("{pause:?} x{CYCLES}: sent {sent}, lost {lost}, duplicates {duplicates}");
    if let Some(member) = guarded.take() {
        member.unsubscribe().await;
    }
    ensure!(
        lost == 0,
        "{lost} of {sent} messages never arrived within {SOON:?} after the last pause \
         ({pause:?}, {CYCLES} times); first: {:?}",
        (0..sent)
            .filter(|n| !counts.contains_key(n))
            .take(5)
            .collect::<Vec<_>>()
    );
    ensure!(
        duplicates == 0,
        "{duplicates} duplicate deliveries of {sent} messages ({pause:?}, {CYCLES} times)"
    );
    Ok(())
}
