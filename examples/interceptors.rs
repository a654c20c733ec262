//! Interceptors: propagate a trace id from sender to receiver through message headers, the way a
//! tracing or session plugin would.
//!
//!     cargo run --example interceptors

use std::time::Duration;

use tidings::interceptor::{on_receive, on_send};

tokio::task_local! {
    static TRACE_ID: String;
}

#[tokio::main]
async fn main() -> tidings::Result<()> {
    let bus = tidings::connect_from_env("memory://interceptors").await?;

    // On send: copy the current task's trace id into a header.
    let sender = bus.with_interceptor(on_send(|env| {
        if let Ok(id) = TRACE_ID.try_with(Clone::clone) {
            env.headers.insert("trace-id".into(), id);
        }
    }));
    // On receive: log it (a real plugin would open a span).
    let receiver = bus.with_interceptor(on_receive(|env| {
        println!(
            "received {} with trace-id {}",
            env.routing_key,
            env.headers.get("trace-id").map_or("-", String::as_str)
        );
    }));

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    receiver
        .subscribe::<String>("orders.*")
        .handle_message(move |m| {
            let tx = tx.clone();
            async move {
                tx.send(format!("handler sees trace-id {:?}", m.header("trace-id")))?;
                Ok(())
            }
        })
        .await?;

    TRACE_ID
        .scope("req-7f3a".to_owned(), async {
            sender.emit("orders.created", &"order 42".to_string()).await
        })
        .await?;
    println!(
        "{}",
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    );
    bus.shutdown().await
}
