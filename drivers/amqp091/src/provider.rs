//! [`AmqpProvider`]: the tidings `Provider` on RabbitMQ.

use std::sync::Arc;

use tidings_core::driver::Status;
use tidings_core::driver::{
    Completion, Consumer, Inbox, Provider, PublishOptions, ReplySlot, SubscribeSpec,
};
use tidings_core::{async_trait, Capabilities, Envelope, Error, ErrorKind, Result};
use tokio::sync::watch;

use crate::config::Config;
use crate::connection::{closed, Shared};
use crate::consumer::{self, SubSpec};
use crate::inbox::{ReplyInbox, DIRECT_REPLY_TO};
use crate::publisher::{publish, Target};
use crate::settle::DeadTarget;
use crate::topology::{dead_queue, group_queue, QueueKind};

/// How many dead letters a reader may hold unsettled.
const DEAD_LETTER_PREFETCH: u16 = 64;

/// A connection to RabbitMQ over AMQP 0.9.1. Made by [`connect`](crate::connect).
pub struct AmqpProvider {
    shared: Arc<Shared>,
    /// Where the bus keeps this connection's reply inbox (see `inbox`).
    replies: ReplySlot,
}

impl std::fmt::Debug for AmqpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpProvider")
            .field("url", &self.shared.config.redacted)
            .field("exchange", &self.shared.config.exchange)
            .finish()
    }
}

impl AmqpProvider {
    /// Connects to `url` (`amqp://user:pass@host:5672/vhost?exchange=…`, see the crate docs);
    /// fails at once when the broker cannot be reached.
    ///
    /// # Examples
    /// ```no_run
    /// # #[tokio::main] async fn main() -> tidings_core::Result<()> {
    /// let provider = tidings_amqp091::AmqpProvider::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
    /// # let _ = provider; Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self> {
        Self::open(Config::parse(url)?).await
    }

    async fn open(config: Config) -> Result<Self> {
        Ok(Self {
            shared: Shared::connect(config).await?,
            replies: ReplySlot::default(),
        })
    }

    fn check_open(&self) -> Result<()> {
        if self.shared.closing.is_cancelled() {
            return Err(closed());
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for AmqpProvider {
    fn system(&self) -> &'static str {
        "rabbitmq"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn publish<'a>(
        &'a self,
        envelope: Envelope,
        options: &'a PublishOptions,
    ) -> Completion<'a, Result<()>> {
        Completion::later(async move {
            self.check_open()?;
            let target = Target::topic(&self.shared.config.exchange, &envelope.routing_key)?;
            publish(&self.shared, &target, &envelope, options.mandatory, None).await
        })
    }

    fn request<'a>(
        &'a self,
        mut envelope: Envelope,
        options: &'a PublishOptions,
    ) -> Completion<'a, Result<()>> {
        Completion::later(async move {
            self.check_open()?;
            // The reply comes back through direct reply-to, to the channel that sends the
            // request; the inbox reads the reply consumers of all such channels.
            let replies = self.shared.reply_feed().ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    "a request needs this amqp:// connection's reply inbox, which is not open; \
                     Bus::call opens it",
                )
            })?;
            envelope.reply_to = Some(DIRECT_REPLY_TO.to_owned());
            let target = Target::topic(&self.shared.config.exchange, &envelope.routing_key)?;
            publish(
                &self.shared,
                &target,
                &envelope,
                options.mandatory,
                Some(&replies),
            )
            .await
        })
    }

    async fn subscribe(&self, spec: SubscribeSpec) -> Result<Box<dyn Consumer>> {
        self.check_open()?;
        let exchange = &self.shared.config.exchange;
        let (kind, queue) = match spec.mode.group() {
            None => (QueueKind::Broadcast, String::new()),
            Some((name, durable)) => (QueueKind::Group { durable }, group_queue(exchange, name)),
        };
        let from = spec.mode.subscription_name().to_owned();
        let dead = DeadTarget {
            queue: dead_queue(exchange, &spec.dead_letter_queue),
            from,
        };
        consumer::open(
            &self.shared,
            SubSpec {
                kind,
                queue,
                pattern: Some(spec.pattern.to_string()),
                prefetch: spec.prefetch,
                dead: Some(Arc::new(dead)),
            },
        )
        .await
    }

    async fn open_inbox(&self) -> Result<Inbox> {
        self.check_open()?;
        let consumer = Box::new(ReplyInbox::new(self.shared.open_replies()?));
        Ok(Inbox::new(DIRECT_REPLY_TO.to_owned(), consumer)
            .renewed_by(self.shared.renewals.clone()))
    }

    fn reply_slot(&self) -> &ReplySlot {
        &self.replies
    }

    async fn reply(&self, address: &str, envelope: Envelope) -> Result<()> {
        self.check_open()?;
        publish(
            &self.shared,
            &Target::queue(address)?,
            &envelope,
            false,
            None,
        )
        .await
    }

    async fn dead_letters(&self, name: &str) -> Result<Box<dyn Consumer>> {
        self.check_open()?;
        let queue = dead_queue(&self.shared.config.exchange, name);
        consumer::open(
            &self.shared,
            SubSpec {
                kind: QueueKind::DeadLetters,
                queue: queue.clone(),
                pattern: None,
                prefetch: DEAD_LETTER_PREFETCH,
                dead: Some(Arc::new(DeadTarget {
                    queue,
                    from: name.to_owned(),
                })),
            },
        )
        .await
    }

    fn status(&self) -> watch::Receiver<Status> {
        self.shared.status()
    }

    async fn close(&self) -> Result<()> {
        if self.shared.closing.is_cancelled() {
            return Ok(());
        }
        self.shared.flush(self.shared.config.publish_timeout).await;
        self.shared.shut(false).await;
        Ok(())
    }

    async fn abort(&self) {
        self.shared.shut(true).await;
    }
}

impl Drop for AmqpProvider {
    fn drop(&mut self) {
        // Stops the supervisor and the subscriptions; lapin closes the socket when the last
        // handle goes.
        self.shared.closing.cancel();
        self.shared.stop_supervising();
    }
}
