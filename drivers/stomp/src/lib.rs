//! tidings driver for STOMP 1.2 brokers — RabbitMQ's STOMP plugin and Apache ActiveMQ 5 — on
//! [async-stomp](https://docs.rs/async-stomp), selected by
//! `stomp://user:pass@host:port[,host:port...][/vhost][?options]` URLs, or `stomp+ssl://` for
//! TLS (default port 61614; trust in the platform's certificate store plus the certificates of
//! `?ca=<pem file>`, the policy every tidings driver shares).
//!
//! A URL may list several nodes of one broker cluster (`stomp://u:p@h1:61613,h2:61613,h3/`):
//! the connection tries them in a shuffled order (so many daemons spread over the nodes), and
//! when its node is lost it moves to the next live one and restores everything there: every
//! subscription (the RPC inbox's too) is SUBSCRIBEd again, and every publish not yet receipted
//! is re-sent, or fails to its caller once `publish_timeout_ms` runs out — none is silently
//! lost. `Bus::status()` names the node in use.
//!
//! The broker is recognised from the CONNECTED frame's `server` header (or forced with
//! `?dialect=rabbitmq|activemq`); what differs between brokers lives in one small dialect per
//! broker (`src/dialect/`), documented in `docs/brokers/`. The wire format is in
//! `docs/wire-format-stomp.md`.
//!
//! URL options: `namespace` (one word, default `tidings`: the prefix of every destination, so
//! several buses can share a broker), `dialect`, `heartbeat_ms` (default 10000, 0 = off),
//! `publish_timeout_ms` (default 30000: how long a publish waits for its receipt, across
//! reconnects), `persistent` (default true), `queue-type` (RabbitMQ: `classic` or `quorum`,
//! the type of durable group queues; quorum by default on a URL of several nodes, see
//! `docs/brokers/rabbitmq-cluster.md`), `ca` (`stomp+ssl://` only).
//!
//! Every publish waits for the broker's RECEIPT. The driver reconnects on its own (the shared
//! supervisor of `tidings-plumbing`: backoff with jitter between rounds over the nodes),
//! re-subscribes, and re-sends publishes whose receipt the dropped connection lost
//! (at-least-once). Deliveries are `client-individual` acked.

mod config;
mod consumer;
mod dialect;
mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod link;
mod outbox;
mod provider;
mod wire;

use std::sync::Arc;

use tidings_core::driver::Provider;
use tidings_core::{Error, ErrorKind, Result};

pub use provider::StompProvider;

use crate::config::Config;
use crate::dialect::DialectKind;
use crate::link::Link;
use crate::outbox::Outbox;
use crate::wire::KeyedTopics;
use tidings_plumbing::QueueType;

/// Connects to the STOMP broker at `url`. Fails if the broker cannot be reached or refuses the
/// login, or if its kind is unknown and the URL does not say `?dialect=`.
///
/// # Examples
/// ```no_run
/// # #[tokio::main] async fn main() -> tidings_core::Result<()> {
/// let provider = tidings_stomp::connect("stomp://guest:guest@127.0.0.1:61613/").await?;
/// let bus = tidings_core::Bus::new(provider);
/// # let _ = bus; Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn Provider>> {
    Ok(Arc::new(StompProvider::connect(url).await?))
}

impl StompProvider {
    /// Connects to the STOMP broker at `url`; see [`connect`].
    ///
    /// # Examples
    /// ```no_run
    /// # #[tokio::main] async fn main() -> tidings_core::Result<()> {
    /// let provider = tidings_stomp::StompProvider::connect("stomp://guest:guest@127.0.0.1:61613/").await?;
    /// # let _ = provider; Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self> {
        open(url).await
    }
}

/// Opens the connection, learns the broker's dialect, and starts the link.
async fn open(url: &str) -> Result<StompProvider> {
    let config = Config::parse(url)?;
    let (link, server) = Link::start(config.clone()).await?;
    let server = server.unwrap_or_default();
    let kind = match config.dialect {
        Some(kind) => kind,
        None => match DialectKind::from_server(&server) {
            Some(kind) => kind,
            None => {
                link.abort();
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "the STOMP broker at {} says it is {server:?}, which the stomp driver \
                         does not know; add ?dialect=rabbitmq or ?dialect=activemq to the url if \
                         it behaves like one of them",
                        config.redacted
                    ),
                ));
            }
        },
    };
    if kind == DialectKind::ActiveMq && config.queue_type_given {
        link.abort();
        return Err(Error::new(
            ErrorKind::InvalidUrl,
            format!(
                "?queue-type= applies to RabbitMQ only; the STOMP broker at {} is {server:?}",
                config.redacted
            ),
        ));
    }
    link.nack_orphans(kind == DialectKind::RabbitMq);
    tracing::debug!(server = %server, dialect = ?kind, "stomp connected");
    let dialect = kind.dialect(config.queue_type == QueueType::Quorum);
    let topics = KeyedTopics {
        topic: dialect.publish_destination(&config.namespace, ""),
    };
    let outbox = Outbox {
        link,
        dialect,
        topics,
        namespace: config.namespace.clone(),
        persistent: config.persistent,
        timeout: config.publish_timeout,
    };
    Ok(StompProvider::new(outbox, kind, server))
}
