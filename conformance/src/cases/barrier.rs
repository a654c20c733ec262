//! The start-up barrier: a waiter hears every participant, whether it announced before or
//! after the waiter came, and events emitted once the barrier passes reach every participant's
//! broadcast subscription; a participant that never comes is named in the timeout.

use std::sync::Arc;
use std::time::Duration;

use tidings_core::ErrorKind;

use super::Outcome;
use crate::ensure;
use crate::support::{collector, Ctx, Note, QUIET, SOON};

pub(super) async fn barrier_waits_for_every_participant_then_nobody_misses_an_event(
    ctx: Arc<Ctx>,
) -> Outcome {
    let barrier_name = ctx.name("start");
    let (sink, mut got) = collector::<(&'static str, u32)>();
    let app = ctx.bus().await?;
    let mut announcements = Vec::new();
    // Two participants ready before the application waits, one after it started waiting.
    for plugin in ["audit", "mailer"] {
        let bus = ctx.bus().await?;
        bus.subscribe::<Note>("app.started")
            .handle(sink.recorder(move |note: Note| (plugin, note.n)))
            .await?;
        announcements.push(bus.barrier(&barrier_name)?.announce(plugin).await?);
    }
    let late = ctx.bus().await?;
    let late_sink = sink.clone();
    let late_barrier = barrier_name.clone();
    let late_plugin = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        late.subscribe::<Note>("app.started")
            .handle(late_sink.recorder(|note: Note| ("search", note.n)))
            .await?;
        late.barrier(&late_barrier)?.announce("search").await
    });
    app.barrier(&barrier_name)?
        .wait_for(&["audit", "mailer", "search"], SOON)
        .await?;
    announcements.push(late_plugin.await.map_err(|e| e.to_string())??);
    app.emit("app.started", &Note::new(1)).await?;
    let mut heard = got.take(3, SOON).await?;
    got.nothing_more(QUIET).await?;
    heard.sort();
    ensure!(
        heard == vec![("audit", 1), ("mailer", 1), ("search", 1)],
        "the first event after the barrier reached {heard:?}, expected every participant once"
    );

    let e = app
        .barrier(&barrier_name)?
        .wait_for(&["audit", "ghost"], Duration::from_secs(1))
        .await
        .err()
        .ok_or("waiting for a participant that never comes succeeded")?;
    ensure!(
        e.kind() == ErrorKind::Timeout
            && e.to_string().contains("ghost")
            && !e.to_string().contains("audit"),
        "the timeout should name only the missing participant: {e}"
    );
    for announcement in announcements {
        announcement.withdraw().await;
    }
    Ok(())
}
