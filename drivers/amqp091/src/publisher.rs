//! Publishing with confirms, across outages: a publish waits for a live connection (up to
//! `publish_timeout_ms`), is sent, and returns only when the broker confirmed it. If the
//! connection dies before the confirm, the publish is sent again on the next connection (the
//! broker may then hold it twice: at-least-once), never reported as done.

use std::sync::Arc;

use lapin::types::ShortString;
use tidings_core::{Envelope, Error, ErrorKind, Result};
use tokio::time::Instant;

use crate::connection::Shared;
use crate::errors::{is_connection_error, transport};
use crate::inbox::ReplyFeed;
use crate::session::Sent;
use crate::topology::{declare_exchange, short};
use crate::wire;

/// How often a publish is re-sent after its channel (not its connection) failed.
const CHANNEL_RETRIES: u32 = 3;
/// How many times a publish the broker refused (`basic.nack`) is sent again, with backoff
/// (about 1.5 s in all), before the refusal is the caller's error.
const NACK_RETRIES: u32 = 4;

/// Where a message goes.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    exchange: ShortString,
    routing_key: ShortString,
    /// Through the default exchange straight to a queue.
    direct: bool,
}

impl Target {
    /// To the bus's topic exchange under the envelope's routing key.
    pub(crate) fn topic(exchange: &str, routing_key: &str) -> Result<Self> {
        Ok(Self {
            exchange: short("exchange name", exchange)?,
            routing_key: short("routing key", routing_key)?,
            direct: false,
        })
    }

    /// Straight to the queue `queue` (a retry, a dead letter, an RPC reply).
    pub(crate) fn queue(queue: &str) -> Result<Self> {
        Ok(Self {
            exchange: ShortString::default(),
            routing_key: short("queue name", queue)?,
            direct: true,
        })
    }
}

/// Publishes `envelope` to `target` and waits for the broker's confirm. `replies`: the message
/// is an RPC request (`Provider::request`) whose reply comes back through direct reply-to to
/// the channel that sends it, and this is the inbox's feed of such channels' reply consumers.
pub(crate) async fn publish(
    shared: &Arc<Shared>,
    target: &Target,
    envelope: &Envelope,
    mandatory: bool,
    replies: Option<&ReplyFeed>,
) -> Result<()> {
    if shared.closing.is_cancelled() {
        return Err(crate::connection::closed());
    }
    let mut properties = Some(wire::encode(envelope, target.direct)?);
    let _counted = shared.in_flight();
    let deadline = Instant::now() + shared.config.publish_timeout;
    let mut after = 0;
    let mut channel_failures = 0;
    let mut nacks = 0;
    let mut nack_backoff = tidings_plumbing::Backoff::new();
    loop {
        let session = shared.session_after(after, deadline).await?;
        let sent = tokio::time::timeout_at(
            deadline,
            session.publish(
                &target.exchange,
                &target.routing_key,
                mandatory,
                replies,
                &envelope.body,
                // Encoded again only when a publish must be sent a second time.
                match properties.take() {
                    Some(p) => p,
                    None => wire::encode(envelope, target.direct)?,
                },
            ),
        )
        .await;
        let error = match sent {
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Publish,
                    format!(
                        "RabbitMQ did not confirm message {} within {:?} (publish_timeout_ms); it may \
                         or may not have been stored — the broker is overloaded or blocked \
                         (check its memory and disk alarms)",
                        envelope.id, shared.config.publish_timeout
                    ),
                ))
            }
            Ok(Ok(Sent::Confirmed)) => return Ok(()),
            Ok(Ok(Sent::Returned)) => {
                return Err(Error::new(
                    ErrorKind::NoResponders,
                    format!(
                        "no queue is bound to routing key {:?} on exchange {:?}: nobody subscribes to it",
                        envelope.routing_key, shared.config.exchange
                    ),
                ))
            }
            Ok(Ok(Sent::Nacked)) if nacks < NACK_RETRIES => {
                // Again after a pause, on a fresh channel (the session dropped the one that
                // refused it: see `ConfirmChannel::discard`): a quorum queue refuses
                // publishes while it elects a leader, which takes about a second after the
                // leader's node is lost.
                nacks += 1;
                after = session.generation - 1;
                tokio::time::sleep(nack_backoff.next_delay()).await;
                continue;
            }
            Ok(Ok(Sent::Nacked)) => {
                return Err(Error::new(
                    ErrorKind::Publish,
                    format!(
                        "RabbitMQ refused message {} {} times (basic.nack): an internal error, a \
                         quorum queue without a leader (a majority of its nodes down) or a queue \
                         length limit with overflow=reject-publish; it was not stored",
                        envelope.id,
                        NACK_RETRIES + 1
                    ),
                ))
            }
            Ok(Err(e)) => e,
        };
        if is_connection_error(&error) || !session.is_connected() {
            tracing::debug!(error = %error, id = %envelope.id, "connection lost before the confirm; publishing again after reconnect");
            shared.report_lost();
            after = session.generation;
            continue;
        }
        channel_failures += 1;
        if channel_failures >= CHANNEL_RETRIES {
            return Err(transport(
                ErrorKind::Publish,
                format!(
                    "RabbitMQ refused message {} to {}: {error}",
                    envelope.id,
                    describe(target)
                ),
                error,
            ));
        }
        tracing::debug!(error = %error, "publish channel closed by the broker; retrying");
        if !target.direct && error.to_string().contains("NOT_FOUND") {
            // The exchange was deleted under us: declare it again.
            if let Ok(channel) = session.connection.create_channel().await {
                let _ = declare_exchange(&channel, &shared.config.exchange).await;
                let _ = channel.close(200, "declared".into()).await;
            }
        }
    }
}

fn describe(target: &Target) -> String {
    if target.direct {
        format!("queue {}", target.routing_key)
    } else {
        format!(
            "exchange {:?} under {:?}",
            target.exchange.as_str(),
            target.routing_key.as_str()
        )
    }
}
