//! Middleware layers: each handle's layers see that handle's messages (RPC replies included,
//! whichever handle called first), the first layer added is the outermost, layers see what
//! became of each delivery, and a layer can stop a message.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings_core::interceptor::{on_receive, on_send};
use tidings_core::layer::{self, BoxFuture, Handled, Incoming, Layer, Next, Outgoing};
use tidings_core::{ErrorKind, Result};

use super::Outcome;
use crate::ensure;
use crate::support::{collector, Ctx, Note, QUIET, SOON};

/// Counts what one handle's interceptor saw, by direction.
#[derive(Debug, Default)]
struct Seen {
    sent: Mutex<Vec<String>>,
    received: Mutex<Vec<String>>,
}

pub(super) async fn layers_of_each_handle_see_its_own_requests_and_replies(
    ctx: Arc<Ctx>,
) -> Outcome {
    let name = ctx.name("echo");
    let server = ctx.bus().await?;
    server
        .serve(&name, |n: u32| async move { Ok(n + 1) })
        .await?;
    let caller = ctx.bus().await?;
    let mut handles = Vec::new();
    let mut seen = Vec::new();
    for tag in ["first", "second"] {
        let record = Arc::new(Seen::default());
        let (on_out, on_in) = (record.clone(), record.clone());
        let handle = caller
            .with_interceptor(on_send(move |env| {
                on_out.sent.lock().unwrap().push(env.routing_key.clone());
            }))
            .with_interceptor(on_receive(move |env| {
                let status = env
                    .headers
                    .get("tidings-status")
                    .cloned()
                    .unwrap_or_default();
                on_in.received.lock().unwrap().push(status);
            }));
        handles.push((tag, handle));
        seen.push(record);
    }
    // The first handle's call opens the connection's reply inbox; the second's reply comes
    // in through it too, and must still pass the second handle's layers only.
    for (round, (_, handle)) in handles.iter().enumerate() {
        let got: u32 = handle.call(&name, &(round as u32)).timeout(SOON).await?;
        ensure!(got == round as u32 + 1, "call {round} returned {got}");
    }
    for ((tag, _), record) in handles.iter().zip(&seen) {
        let sent = record.sent.lock().unwrap().clone();
        let received = record.received.lock().unwrap().clone();
        ensure!(
            sent == vec![name.clone()],
            "the {tag} handle's layers saw these requests go out: {sent:?}, expected its one"
        );
        ensure!(
            received == vec!["ok".to_owned()],
            "the {tag} handle's layers saw these replies come in: {received:?}, expected its one"
        );
    }
    Ok(())
}

/// Records the order layers run in and what they are told.
struct Tracer {
    tag: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Tracer {
    fn note(&self, what: String) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} {what}", self.tag));
    }
}

impl Layer for Tracer {
    fn send<'a>(
        &'a self,
        message: Outgoing,
        next: Next<'a, Outgoing>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.note(format!("send {:?} {}", message.kind, message.destination()));
            let result = next.run(message).await;
            self.note(format!("sent {}", result.is_ok()));
            result
        })
    }

    fn receive<'a>(
        &'a self,
        message: Incoming,
        next: Next<'a, Incoming>,
    ) -> BoxFuture<'a, Handled> {
        Box::pin(async move {
            self.note(format!(
                "receive {:?} attempt {}",
                message.kind, message.envelope.attempt
            ));
            let handled = next.run(message).await;
            self.note(format!(
                "handled {:?} timed {}",
                handled.outcome,
                handled.handler_time.is_some()
            ));
            handled
        })
    }
}

/// Stops every message whose note number is odd, both ways.
struct StopOdd;

impl StopOdd {
    fn odd(envelope: &tidings_core::Envelope) -> bool {
        envelope
            .headers
            .get("n")
            .is_some_and(|n| n.ends_with(['1', '3', '5', '7', '9']))
    }
}

impl Layer for StopOdd {
    fn send<'a>(
        &'a self,
        message: Outgoing,
        next: Next<'a, Outgoing>,
    ) -> BoxFuture<'a, Result<()>> {
        if message.envelope.headers.contains_key("refuse") {
            return Box::pin(async { Err(layer::stop("refused on the way out")) });
        }
        next.run(message)
    }

    fn receive<'a>(
        &'a self,
        message: Incoming,
        next: Next<'a, Incoming>,
    ) -> BoxFuture<'a, Handled> {
        if Self::odd(&message.envelope) {
            return Box::pin(async { Handled::stopped("odd notes are not wanted") });
        }
        next.run(message)
    }
}

pub(super) async fn layers_run_outermost_first_see_outcomes_and_can_stop(ctx: Arc<Ctx>) -> Outcome {
    let group = ctx.name("layered");
    let log = Arc::new(Mutex::new(Vec::new()));
    let tracer = |tag| Tracer {
        tag,
        log: log.clone(),
    };
    let worker = ctx
        .bus()
        .await?
        .with_layer(tracer("outer"))
        .with_layer(tracer("inner"))
        .with_layer(StopOdd);
    let (sink, mut got) = collector::<(u32, u32)>();
    let failed_once = Arc::new(Mutex::new(false));
    worker
        .subscribe::<Note>("layered")
        .group(&group)
        .max_attempts(2)
        .handle_message(move |m: tidings_core::Message<Note>| {
            let (sink, failed_once) = (sink.clone(), failed_once.clone());
            async move {
                let mut failed = failed_once.lock().unwrap();
                if !*failed {
                    *failed = true;
                    return Err("the first attempt fails".into());
                }
                sink.put((m.n, m.attempt()));
                Ok(())
            }
        })
        .await?;
    let publisher = ctx.bus().await?;
    publisher
        .emit("layered", &Note::new(2))
        .header("n", "2")
        .await?;
    let handled = got.take(1, SOON).await?;
    ensure!(
        handled == vec![(2, 2)],
        "handled {handled:?}, expected note 2 on attempt 2"
    );
    // Let the acknowledgement's report reach the layers.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let expected = [
        "outer receive Event attempt 1",
        "inner receive Event attempt 1",
        "inner handled Retry timed true",
        "outer handled Retry timed true",
        "outer receive Event attempt 2",
        "inner receive Event attempt 2",
        "inner handled Ack timed true",
        "outer handled Ack timed true",
    ];
    let seen = log.lock().unwrap().clone();
    ensure!(
        seen == expected,
        "layers ran as {seen:#?}, expected the first added outermost: {expected:#?}"
    );

    // A layer stops a delivery: dead-lettered with its reason, the handler never runs.
    publisher
        .emit("layered", &Note::new(3))
        .header("n", "3")
        .await?;
    let mut dead = publisher.dead_letters(&group).await?;
    let letter = tokio::time::timeout(SOON, dead.next())
        .await
        .map_err(|_| "the stopped delivery was not dead-lettered".to_string())?
        .ok_or("dead-letter reader closed")?;
    ensure!(
        letter.reason().contains("odd notes are not wanted"),
        "dead letter reason {:?} does not carry the layer's reason",
        letter.reason()
    );
    letter.purge().await?;
    got.nothing_more(QUIET).await?;

    // A layer stops a message on its way out: the send fails with its reason.
    log.lock().unwrap().clear();
    let refused = worker
        .emit("layered", &Note::new(4))
        .header("refuse", "yes")
        .await;
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::Stopped
                && e.to_string().contains("refused on the way out")),
        "a send the layer stopped gave {refused:?}"
    );
    let seen = log.lock().unwrap().clone();
    let expected = [
        "outer send Event layered".to_owned(),
        "inner send Event layered".to_owned(),
        "inner sent false".to_owned(),
        "outer sent false".to_owned(),
    ];
    ensure!(seen == expected, "on the way out layers ran as {seen:#?}");
    Ok(())
}
