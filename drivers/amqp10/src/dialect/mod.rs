//! Broker dialects: the little that AMQP 1.0 leaves to each broker.
//!
//! AMQP 1.0 standardises connections, sessions, links, transfers and outcomes, but not how a
//! node (queue, topic) is named, created or bound to a pattern. The core of the driver speaks
//! pure AMQP 1.0 to the addresses a [`Dialect`] hands it, and asks the dialect to declare the
//! queues it needs beforehand. RabbitMQ is the first dialect; Artemis, Azure Service Bus, Qpid
//! or Solace would each be one more file here.

use std::fmt;

use async_trait::async_trait;
use fe2o3_amqp::types::messaging::Header;
use tidings_core::broker_url::Node;
use tidings_core::{Pattern, Result};

use crate::config::Config;

pub(crate) mod rabbitmq;

/// The queue a subscription consumes and how it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueSpec {
    /// The broker-side queue name.
    pub(crate) name: String,
    /// Survives broker restarts and keeps messages while nobody consumes.
    pub(crate) durable: bool,
    /// Deleted by the broker once its last consumer is gone.
    pub(crate) auto_delete: bool,
    /// Outlives its subscribers (a durable group's or dead letters): the URL's queue type
    /// applies to it (`?queue-type=`); other queues are the broker's plain kind.
    pub(crate) lasting: bool,
    /// The pattern it is bound with in the topic space, if any.
    pub(crate) binding: Option<Pattern>,
}

/// What a broker does differently. All methods may be called concurrently and again after
/// every reconnect (declarations must be idempotent).
#[async_trait]
pub(crate) trait Dialect: Send + Sync + fmt::Debug + 'static {
    /// The connection is now on `node` (one of the URL's): a dialect that talks to the broker
    /// beside AMQP (a management API) talks to that node from now on.
    fn use_node(&self, node: &Node) {
        let _ = node;
    }

    /// The `hostname` to put in the AMQP `open` frame (RabbitMQ selects the vhost with it).
    fn open_hostname(&self) -> Option<String>;

    /// The target address that publishes into the topic space; the routing key travels as the
    /// message subject.
    fn topic_address(&self) -> String;

    /// The address that sends straight into, or consumes from, queue `name`.
    fn queue_address(&self, name: &str) -> String;

    /// The queue name of a group, a dead-letter queue, a broadcast subscription and an inbox.
    fn group_queue(&self, group: &str) -> String;
    /// See [`group_queue`](Self::group_queue).
    fn dead_letter_queue(&self, name: &str) -> String;
    /// See [`group_queue`](Self::group_queue); `unique` is unique per process.
    fn private_queue(&self, kind: &str, unique: &str) -> String;

    /// Creates the topic space if missing.
    async fn declare_topic_space(&self) -> Result<()>;

    /// Creates `queue` (and its binding) if missing.
    async fn declare_queue(&self, queue: &QueueSpec) -> Result<()>;

    /// Whether the broker handed this message out before without it being settled (its
    /// consumer died). Pure AMQP 1.0 says so with `header.delivery-count > 0`.
    fn was_redelivered(&self, header: Option<&Header>) -> bool {
        header.is_some_and(|h| h.delivery_count > 0)
    }

    /// Whether any queue is bound to receive `routing_key`: `None` when the broker cannot tell.
    async fn is_routed(&self, routing_key: &str) -> Result<Option<bool>>;
}

/// The dialect the URL asks for.
pub(crate) fn for_config(config: &Config) -> Result<Box<dyn Dialect>> {
    match config.dialect.as_str() {
        "rabbitmq" => Ok(Box::new(rabbitmq::RabbitMq::new(config)?)),
        other => Err(tidings_core::Error::new(
            tidings_core::ErrorKind::InvalidUrl,
            format!(
                "unknown AMQP 1.0 dialect {other:?} in {}; known: rabbitmq",
                config.redacted
            ),
        )),
    }
}
