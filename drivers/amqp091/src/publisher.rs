//! Publishing with confirms, across outages: a publish waits for a live connection (up to
//! `publish_timeout_ms`), is sent, and returns only when the broker confirmed it. If the
//! connection dies before the confirm, the publish is sent again on the next connection (the
//! broker may then hold it twice: at-least-once), never reported as done.

use std::sync::Arc;

use lapin::types::ShortString;
use tidings_core::{Envelope, Error, ErrorKind, Result};

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

/// Where a message goes: names checked once, made into lapin's strings for each send (lapin
/// takes them by value, so a cached copy would be copied anyway).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    /// Through the default exchange straight to a queue.
    direct: bool,
}

impl<'a> Target<'a> {
    /// To the bus's topic exchange under the envelope's routing key.
    pub(crate) fn topic(exchange: &'a str, routing_key: &'a str) -> Result<Self> {
        fits("exchange name", exchange)?;
        fits("routing key", routing_key)?;
        Ok(Self {
            exchange,
            routing_key,
            direct: false,
        })
    }

    /// Straight to the queue `queue` (a retry, a dead letter, an RPC reply).
    pub(crate) fn queue(queue: &'a str) -> Result<Self> {
        fits("queue name", queue)?;
        Ok(Self {
            exchange: "",
            routing_key: queue,
            direct: true,
        })
    }

    /// The exchange and routing key as lapin takes them.
    fn names(&self) -> (ShortString, ShortString) {
        // Checked by the constructors.
        let name = |s: &str| ShortString::try_new(s).unwrap_or_default();
        (name(self.exchange), name(self.routing_key))
    }
}

/// Fails as `short` does when `name` is too long for an AMQP short string.
fn fits(what: &str, name: &str) -> Result<()> {
    if name.len() > u8::MAX as usize {
        short(what, name)?;
    }
    Ok(())
}

/// Publishes `envelope` to `target` and waits for the broker's confirm. `replies`: the message
/// is an RPC request (`Provider::request`) whose reply comes back through direct reply-to to
/// the channel that sends it, and this is the inbox's feed of such channels' reply consumers.
pub(crate) async fn publish(
    shared: &Arc<Shared>,
    target: &Target<'_>,
    envelope: &Envelope,
    mandatory: bool,
    replies: Option<&ReplyFeed>,
) -> Result<()> {
    if shared.closing.is_cancelled() {
        return Err(crate::connection::closed());
    }
    let mut properties = Some(wire::encode(envelope, target.direct)?);
    let _counted = shared.in_flight();
    let deadline = shared.deadlines.start();
    let mut after = 0;
    let mut channel_failures = 0;
    let mut nacks = 0;
    let mut nack_backoff = tidings_plumbing::Backoff::new();
    loop {
        let session = match shared.live_after(after)? {
            Some(session) => session,
            None => shared.session_after(after, deadline.at).await?,
        };
        let Some(passed) = deadline.passed() else {
            return Err(unconfirmed(shared, envelope));
        };
        let (exchange, routing_key) = target.names();
        let sent = tokio::select! {
            biased;
            sent = session.publish(
                exchange,
                routing_key,
                mandatory,
                replies,
                &envelope.body,
                // Encoded again only when a publish must be sent a second time.
                match properties.take() {
                    Some(p) => p,
                    None => wire::encode(envelope, target.direct)?,
                },
            ) => Some(sent),
            () = passed => None,
        };
        let error = match sent {
            None => return Err(unconfirmed(shared, envelope)),
            Some(Ok(Sent::Confirmed)) => return Ok(()),
            Some(Ok(Sent::Returned)) => {
                return Err(Error::new(
                    ErrorKind::NoResponders,
                    format!(
                        "no queue is bound to routing key {:?} on exchange {:?}: nobody subscribes to it",
                        envelope.routing_key, shared.config.exchange
                    ),
                ))
            }
            Some(Ok(Sent::Nacked)) if nacks < NACK_RETRIES => {
                // Again after a pause, on a fresh channel (the session dropped the one that
                // refused it: see `ConfirmChannel::discard`): a quorum queue refuses
                // publishes while it elects a leader, which takes about a second after the
                // leader's node is lost.
                nacks += 1;
                after = session.generation - 1;
                tokio::time::sleep(nack_backoff.next_delay()).await;
                continue;
            }
            Some(Ok(Sent::Nacked)) => {
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
            Some(Err(e)) => e,
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
            // The exchange was deleted under us: declare it again (boxed: rare, and this
            // future stays small).
            Box::pin(redeclare(&session.connection, &shared.config.exchange)).await;
        }
    }
}

/// The publish timed out waiting for its confirm.
fn unconfirmed(shared: &Shared, envelope: &Envelope) -> Error {
    Error::new(
        ErrorKind::Publish,
        format!(
            "RabbitMQ did not confirm message {} within {:?} (publish_timeout_ms); it may \
             or may not have been stored — the broker is overloaded or blocked \
             (check its memory and disk alarms)",
            envelope.id, shared.config.publish_timeout
        ),
    )
}

async fn redeclare(connection: &lapin::Connection, exchange: &str) {
    if let Ok(channel) = connection.create_channel().await {
        let _ = declare_exchange(&channel, exchange).await;
        let _ = channel.close(200, "declared".into()).await;
    }
}

fn describe(target: &Target<'_>) -> String {
    if target.direct {
        format!("queue {}", target.routing_key)
    } else {
        format!(
            "exchange {:?} under {:?}",
            target.exchange, target.routing_key
        )
    }
}
