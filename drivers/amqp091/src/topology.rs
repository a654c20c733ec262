//! What the driver declares on the broker, and how it names it.
//!
//! One durable topic exchange per bus. Every queue name starts with the exchange name, so two
//! buses on different exchanges never share a queue:
//! - group `g`: `<exchange>.group.g` (durable, or auto-delete for `durable: false`);
//! - dead letters of `d`: `<exchange>.dead.d` (durable);
//! - durable groups and dead letters are quorum queues with `?queue-type=quorum` (the default
//!   for a URL of several nodes), classic queues otherwise;
//! - broadcast: a server-named exclusive auto-delete queue (`amq.gen-...`);
//! - no RPC inbox queue: replies use RabbitMQ's direct reply-to (see `inbox`).
//!
//! Declarations are idempotent. They run on the channel that will use the queue, so a
//! `PRECONDITION_FAILED` (the queue exists with other settings) closes only that channel and is
//! reported with the queue's name and the broker's description of the difference.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use tidings_core::{Error, ErrorKind, Result};

use crate::errors::transport;
use tidings_plumbing::queue_type::{QueueType, DELIVERY_LIMIT};

/// The kinds of queue the driver uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueueKind {
    /// Private to one subscription, gone with it.
    Broadcast,
    /// Shared by a group's members.
    Group {
        /// Kept while no member runs.
        durable: bool,
    },
    /// A dead-letter queue, always durable.
    DeadLetters,
}

impl QueueKind {
    fn options(&self) -> QueueDeclareOptions {
        match self {
            Self::Broadcast => QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            Self::Group { durable: true } | Self::DeadLetters => QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            Self::Group { durable: false } => QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
        }
    }

    /// Whether the queue outlives its subscribers, and so takes the URL's queue type.
    pub(crate) fn lasting(&self) -> bool {
        matches!(self, Self::Group { durable: true } | Self::DeadLetters)
    }

    /// The declaration's arguments: a lasting queue of a quorum URL is a quorum queue whose
    /// delivery limit is set explicitly out of reach. Attempts and dead letters are tidings'
    /// policy (a quorum queue's `x-delivery-count` counts as attempts, see `wire`); RabbitMQ's
    /// own limit (a default of 20 on RabbitMQ 4) would drop or dead-letter behind its back.
    fn arguments(&self, queue_type: QueueType) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self.lasting() && queue_type == QueueType::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(queue_type.name().into()),
            );
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(DELIVERY_LIMIT),
            );
        }
        arguments
    }

    fn describe(&self) -> &'static str {
        match self {
            Self::Broadcast => "exclusive, auto-delete",
            Self::Group { durable: true } => "durable (a durable group)",
            Self::DeadLetters => "durable (a dead-letter queue)",
            Self::Group { durable: false } => {
                "non-durable, auto-delete (a group with durable(false))"
            }
        }
    }
}

/// The queue of group `name`.
pub(crate) fn group_queue(exchange: &str, name: &str) -> String {
    format!("{exchange}.group.{name}")
}

/// The dead-letter queue `name`.
pub(crate) fn dead_queue(exchange: &str, name: &str) -> String {
    format!("{exchange}.dead.{name}")
}

/// A name as an AMQP short string, or a clear error when it is too long.
pub(crate) fn short(what: &str, name: &str) -> Result<ShortString> {
    ShortString::try_new(name).map_err(|_| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "the {what} {name:?} is {} bytes long; AMQP 0.9.1 allows 255 (shorten the exchange or group name)",
                name.len()
            ),
        )
    })
}

/// Declares the bus's durable topic exchange.
pub(crate) async fn declare_exchange(channel: &Channel, exchange: &str) -> Result<()> {
    channel
        .exchange_declare(
            short("exchange name", exchange)?,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            transport(
                ErrorKind::Connection,
                format!(
                    "cannot declare the topic exchange {exchange:?}: {e}; if it exists with another \
                     type or durability, delete it or choose another with ?exchange="
                ),
                e,
            )
        })
}

/// Declares a queue and returns its name (the server picks it for `name == ""`).
pub(crate) async fn declare_queue(
    channel: &Channel,
    name: &str,
    kind: &QueueKind,
    queue_type: QueueType,
) -> Result<String> {
    let queue = channel
        .queue_declare(
            short("queue name", name)?,
            kind.options(),
            kind.arguments(queue_type),
        )
        .await
        .map_err(|e| {
            let shown = if name.is_empty() { "(server-named)" } else { name };
            let wanted = if kind.lasting() {
                queue_type
            } else {
                QueueType::Classic
            };
            let hint = if let Some(mismatch) = wanted.mismatch(&e.to_string(), shown) {
                format!("; {mismatch} (rabbitmqctl delete_queue {shown})")
            } else if e.to_string().contains("PRECONDITION_FAILED") {
                format!(
                    "; the queue already exists with other settings than {}: delete it \
                     (rabbitmqctl delete_queue {shown}) or subscribe with the settings it was made with",
                    kind.describe()
                )
            } else if e.to_string().contains("RESOURCE_LOCKED") {
                "; another connection holds it exclusively".to_owned()
            } else {
                String::new()
            };
            transport(
                ErrorKind::Subscribe,
                format!("cannot declare queue {shown}: {e}{hint}"),
                e,
            )
        })?;
    Ok(queue.name().as_str().to_owned())
}

/// Binds `queue` to the exchange with a topic pattern (tidings patterns are AMQP topic patterns).
pub(crate) async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    pattern: &str,
) -> Result<()> {
    channel
        .queue_bind(
            short("queue name", queue)?,
            short("exchange name", exchange)?,
            short("pattern", pattern)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            transport(
                ErrorKind::Subscribe,
                format!("cannot bind queue {queue} to exchange {exchange:?} with {pattern:?}: {e}"),
                e,
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lasting_queues_of_a_quorum_url_are_quorum_queues() {
        let quorum = QueueKind::Group { durable: true }.arguments(QueueType::Quorum);
        assert_eq!(
            quorum.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            quorum.inner().get("x-delivery-limit"),
            Some(&AMQPValue::LongInt(i32::MAX))
        );
        assert!(QueueKind::DeadLetters
            .arguments(QueueType::Quorum)
            .inner()
            .contains_key("x-queue-type"));
        for kind in [QueueKind::Broadcast, QueueKind::Group { durable: false }] {
            assert!(kind.arguments(QueueType::Quorum).inner().is_empty());
        }
        assert!(QueueKind::Group { durable: true }
            .arguments(QueueType::Classic)
            .inner()
            .is_empty());
    }
}
