//! tidings driver for AMQP 1.0 brokers, on [fe2o3-amqp](https://docs.rs/fe2o3-amqp).
//!
//! URL: `amqp10://user:pass@host[:port][,host[:port]…][/vhost][?exchange=X&management=http://host:15672]`
//! (`amqp10s://` for TLS, default port 5671: rustls with the platform's trust store, plus the
//! CA certificates of `?ca=<pem file>`). Without a user the driver authenticates with SASL
//! ANONYMOUS. Several hosts name the nodes of one cluster: the connection tries them in a
//! shuffled order and moves to the next live one when its node is lost, re-attaching every
//! link there (see `docs/brokers/rabbitmq-cluster.md`).
//! Query parameters: `exchange` (the topic space, default `tidings`), `management` (the
//! RabbitMQ management API, default `http://<node's host>:15672`; for a cluster one per node,
//! comma-separated, in the nodes' order), `dialect` (default `rabbitmq`), `queue-type`
//! (`quorum` or `classic`: what durable groups and dead letters are declared as; default
//! `quorum` for several hosts, `classic` for one), `ca` (see above), `publish_timeout_ms` (how
//! long a publish waits for a lost connection, default 30000).
//!
//! The core of the driver is plain AMQP 1.0: one connection and session, one sender link per
//! target address shared by all publishers, with pipelined unsettled transfers (a publish
//! returns on `accepted`), one receiver link per subscription with the prefetch as link
//! credit, settled with `accepted`. Broker specifics (how queues are named, declared and
//! bound) live in small dialect modules (`src/dialect/`).
//! See `docs/wire-format-amqp10.md` for the message mapping and `docs/brokers/rabbitmq.md`
//! for RabbitMQ.

use std::sync::Arc;

use tidings_core::driver::Provider;
use tidings_core::Result;

mod config;
mod connection;
mod dialect;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod provider;
mod receiver;
mod sender;
mod wire;

pub use provider::Amqp10Provider;

/// Connects to the broker at `url`; see [`Amqp10Provider::connect`].
///
/// # Examples
/// ```no_run
/// # #[tokio::main] async fn main() -> tidings_core::Result<()> {
/// let bus = tidings_core::Bus::new(tidings_amqp10::connect("amqp10://guest:guest@127.0.0.1:5672").await?);
/// # let _ = bus; Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn Provider>> {
    Ok(Arc::new(Amqp10Provider::connect(url).await?))
}
