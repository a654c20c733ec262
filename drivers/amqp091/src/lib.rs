//! The tidings driver for RabbitMQ over AMQP 0.9.1 (with [lapin]), selected by `amqp://` and
//! `amqps://` URLs.
//!
//! ```text
//! amqp://user:password@host:5672/vhost?exchange=tidings&publish_timeout_ms=30000
//! ```
//!
//! - `exchange`: the durable topic exchange of this bus (default `tidings`); all queue names
//!   start with it, so buses on different exchanges are fully separate.
//! - `publish_timeout_ms`: how long a publish waits for a connection and its confirm while the
//!   broker is unreachable before it fails (default 30000).
//! - lapin's own parameters (`heartbeat`, `frame_max`, `channel_max`, `connection_timeout`,
//!   `auth_mechanism`) pass through.
//!
//! `amqps://` connects with TLS (rustls, checking the server against the system's trust store).
//!
//! Guarantees: publishes return after the broker's confirm; consumers ack manually with
//! `basic.qos` prefetch; the connection comes back by itself after a loss, with its exchange,
//! queues, bindings and consumers. See `docs/brokers/rabbitmq.md` for the topology and
//! `docs/wire-format-amqp091.md` for how envelopes map onto AMQP messages.

mod config;
mod connection;
mod consumer;
mod deadline;
mod errors;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod inbox;
mod provider;
mod publisher;
mod session;
mod settle;
mod topology;
mod wire;

use std::sync::Arc;

use tidings_core::driver::Provider;
use tidings_core::Result;

pub use provider::AmqpProvider;

/// Connects to the RabbitMQ broker at `url` (`amqp://` or `amqps://`). Fails at once if the
/// broker cannot be reached; once connected, reconnects by itself. Error messages and logs
/// never show the password.
///
/// # Examples
/// ```no_run
/// # #[tokio::main] async fn main() -> tidings_core::Result<()> {
/// let provider = tidings_amqp091::connect("amqp://guest:guest@127.0.0.1:5672/%2f?exchange=shop").await?;
/// let bus = tidings_core::Bus::new(provider);
/// # let _ = bus; Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn Provider>> {
    Ok(Arc::new(AmqpProvider::connect(url).await?))
}
