//! What the driver's tests share: the broker URL and removing what a test declared.

#![allow(dead_code, unreachable_pub)]

use tidings_conformance::rabbitmq::Management;

/// The broker the tests use: `TIDINGS_AMQP091_URL`, or the local RabbitMQ.
pub fn broker_url() -> String {
    std::env::var("TIDINGS_AMQP091_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// `broker_url()` with the driver options added to its query.
pub fn url_with(params: &str) -> String {
    let base = broker_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{params}")
}

/// Deletes the exchange `exchange` and every queue whose name starts with `exchange.`, through
/// the RabbitMQ management API (`tidings_conformance::rabbitmq`). Never fails a test: what
/// cannot be deleted is reported on stderr.
pub async fn cleanup(exchange: &str) {
    let name = exchange.to_owned();
    let outcome = tokio::task::spawn_blocking(move || {
        Management::for_broker(&broker_url())?.delete_namespace(&name)
    })
    .await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("cleanup of {exchange}: {e}"),
        Err(e) => eprintln!("cleanup of {exchange} did not finish: {e}"),
    }
}
