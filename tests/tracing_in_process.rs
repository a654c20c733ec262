//! One trace through three buses in one process (memory://): a call from A to a server on B
//! that emits an event handled by a group on C.

#[path = "support/otel.rs"]
mod support;

use std::future::IntoFuture;
use std::time::Duration;

use support::{Done, Work, Worked, EVENT, GROUP, SERVICE};
use tidings::observe::TracingLayer;
use tracing::Instrument;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_a_server_and_an_event_make_one_trace() -> tidings::Result<()> {
    let traces = support::install("tracing-in-process");
    let url = "memory://tracing-in-process";
    let layer = TracingLayer::new();
    let a = tidings::connect(url)
        .await?
        .as_participant("caller", "a")
        .with_layer(layer.clone());
    let b = tidings::connect(url)
        .await?
        .as_participant("server", "b")
        .with_layer(TracingLayer::new());
    let c = tidings::connect(url)
        .await?
        .as_participant("audit", "c")
        .with_layer(TracingLayer::new());

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    c.subscribe::<Done>(EVENT)
        .group(GROUP)
        .handle(move |done| {
            let tx = tx.clone();
            async move {
                tracing::info!(n = done.n, "audited");
                tx.send(done.n)?;
                Ok(())
            }
        })
        .await?;
    let emitter = b.clone();
    b.serve(SERVICE, move |work: Work| {
        let emitter = emitter.clone();
        async move {
            emitter.emit(EVENT, &Done { n: work.n }).await?;
            Ok(Worked { n: work.n * 2 })
        }
    })
    .await?;

    let worked: Worked = a
        .call(SERVICE, &Work { n: 21 })
        .timeout(Duration::from_secs(10))
        .await?;
    assert_eq!(worked.n, 42);
    let done = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    assert_eq!(done.expect("event handled in time"), Some(21));

    // A call inside an application span is its child.
    let root = tracing::info_span!("request from a user");
    let _: Worked = a
        .call(SERVICE, &Work { n: 1 })
        .timeout(Duration::from_secs(10))
        .into_future()
        .instrument(root)
        .await?;
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("second event");

    for bus in [&a, &b, &c] {
        bus.shutdown().await?;
    }
    let spans = support::finished(&traces, "in-process");
    // The first call had no span around it: its call span is the root of its trace.
    let root_call = spans
        .iter()
        .find(|s| s.name == format!("call {SERVICE}") && s.parent_span_id == "0000000000000000")
        .expect("a root call span");
    let first: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == root_call.trace_id)
        .cloned()
        .collect();
    support::assert_chain(&first, "tidings-memory");

    let user = spans
        .iter()
        .find(|s| s.name == "request from a user")
        .expect("the user's span");
    let second: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == user.trace_id && s.span_id != user.span_id)
        .cloned()
        .collect();
    let [call, ..] = support::assert_chain(&second, "tidings-memory");
    assert_eq!(
        call.parent_span_id, user.span_id,
        "the call is the user span's child"
    );
    Ok(())
}
