//! Middleware layers: code around every message a bus sends and every delivery it handles.
//!
//! Two layers: one that refuses to send anything without a `tenant` header (a layer can stop a
//! message), and one that reports how long each handler took and what became of the delivery
//! (a layer sees the outcome). The first layer added is the outermost.
//!
//!     cargo run --example layers

use std::time::{Duration, Instant};

use tidings::layer::{self, BoxFuture, Handled, Incoming, Layer, Next, Outgoing};

/// Stops every outgoing message that has no `tenant` header.
struct RequireTenant;

impl Layer for RequireTenant {
    fn send<'a>(
        &'a self,
        m: Outgoing,
        next: Next<'a, Outgoing>,
    ) -> BoxFuture<'a, tidings::Result<()>> {
        if m.envelope.headers.contains_key("tenant") {
            next.run(m)
        } else {
            let key = m.envelope.routing_key.clone();
            Box::pin(async move { Err(layer::stop(format!("{key}: no tenant header"))) })
        }
    }
}

/// Prints what became of each delivery, and how long the whole receive path took.
struct Report;

impl Layer for Report {
    fn receive<'a>(&'a self, m: Incoming, next: Next<'a, Incoming>) -> BoxFuture<'a, Handled> {
        Box::pin(async move {
            let started = Instant::now();
            let (key, attempt) = (m.envelope.routing_key.clone(), m.envelope.attempt);
            let handled = next.run(m).await;
            println!(
                "{key} attempt {attempt}: {:?} (handler {:?}, whole path {:?}){}",
                handled.outcome,
                handled.handler_time.unwrap_or_default(),
                started.elapsed(),
                handled
                    .error
                    .as_ref()
                    .map(|e| format!(", error: {e}"))
                    .unwrap_or_default()
            );
            handled
        })
    }
}

#[tokio::main]
async fn main() -> tidings::Result<()> {
    let bus = tidings::connect_from_env("memory://layers").await?;
    let strict = bus.with_layer(RequireTenant).with_layer(Report);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    strict
        .subscribe::<u32>("jobs.*")
        .max_attempts(2)
        .handle(move |n| {
            let tx = tx.clone();
            async move {
                if n % 2 == 1 {
                    return Err(format!("odd job {n}").into());
                }
                tx.send(n)?;
                Ok(())
            }
        })
        .await?;

    let refused = strict.emit("jobs.new", &1u32).await;
    println!("without a tenant header: {}", refused.unwrap_err());
    strict
        .emit("jobs.new", &2u32)
        .header("tenant", "acme")
        .await?;
    strict
        .emit("jobs.new", &3u32)
        .header("tenant", "acme")
        .await?;

    let done = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    println!("handled job {:?}", done.ok().flatten());
    // Job 3 fails twice and is dead-lettered; give the report a moment to print.
    tokio::time::sleep(Duration::from_millis(200)).await;
    bus.shutdown().await
}
