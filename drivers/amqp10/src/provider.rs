//! [`Amqp10Provider`]: the tidings `Provider` on one AMQP 1.0 connection.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tidings_core::driver::{
    Completion, Consumer, Inbox, InboxAddress, Provider, PublishOptions, ReplySlot, SubscribeSpec,
};
use tidings_core::{Capabilities, Envelope, Error, ErrorKind, Result, Status};
use tokio::sync::watch;

use crate::config::Config;
use crate::connection::Shared;
use crate::dialect::{self, QueueSpec};
use crate::receiver::{AmqpConsumer, ReceiverSpec, Renew};
use crate::sender::{SenderLink, SenderPool};
use crate::wire;

/// Link credit of the reply inbox: replies are small and need no flow control of their own.
const INBOX_CREDIT: u32 = 256;
/// Link credit of a dead-letter reader.
const DEAD_LETTER_CREDIT: u32 = 64;

/// One connection to an AMQP 1.0 broker, reconnecting on its own.
pub struct Amqp10Provider {
    shared: Arc<Shared>,
    pool: Arc<SenderPool>,
    /// The link every publish goes through (to the topic space), kept here rather than looked
    /// up per message.
    topic: Arc<SenderLink>,
    /// The address of this connection's reply inbox once open: what its requests carry as
    /// `reply-to`. The inbox is a queue of its own on each connection (see [`Renew`]).
    inbox: Arc<InboxAddress>,
    /// Where the bus keeps the inbox.
    replies: ReplySlot,
}

impl fmt::Debug for Amqp10Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Amqp10Provider")
            .field("url", &self.shared.config.redacted)
            .field("status", &*self.shared.status().borrow())
            .finish()
    }
}

impl Amqp10Provider {
    /// Connects to `url` (`amqp10://user:pass@host:5672`, see the crate docs for its form).
    ///
    /// # Examples
    /// ```no_run
    /// # #[tokio::main] async fn main() -> tidings_core::Result<()> {
    /// let provider = tidings_amqp10::Amqp10Provider::connect("amqp10://guest:guest@127.0.0.1:5672").await?;
    /// # let _ = provider; Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self> {
        let config = Config::parse(url)?;
        let dialect = dialect::for_config(&config)?;
        let shared = Shared::start(config, dialect).await?;
        if let Err(e) = shared.dialect.declare_topic_space().await {
            shared.close().await;
            return Err(e);
        }
        let pool = Arc::new(SenderPool::new(shared.clone()));
        let topic = pool.link(&shared.dialect.topic_address());
        Ok(Self {
            shared,
            pool,
            topic,
            inbox: Arc::default(),
            replies: ReplySlot::default(),
        })
    }

    fn check_open(&self) -> Result<()> {
        if self.shared.shutdown.is_cancelled() {
            return Err(Error::new(
                ErrorKind::Closed,
                "this amqp10:// connection is closed",
            ));
        }
        Ok(())
    }

    async fn consume(&self, spec: ReceiverSpec) -> Result<Box<dyn Consumer>> {
        self.check_open()?;
        Ok(Box::new(
            AmqpConsumer::start(self.shared.clone(), self.pool.clone(), spec).await?,
        ))
    }

    /// Publishes to the topic space; a mandatory publish first asks whether anything is bound.
    fn send_topic<'a>(
        &'a self,
        envelope: Envelope,
        options: &'a PublishOptions,
    ) -> Completion<'a, Result<()>> {
        if let Err(e) = self.check_open() {
            return Completion::ready(Err(e));
        }
        if !options.mandatory {
            // The send itself is the boxed future: no wrapper around it, which would be
            // allocated and moved per message too.
            return Completion::later(self.topic.send(wire::encode(envelope, true)));
        }
        Completion::later(async move {
            if self.shared.dialect.is_routed(&envelope.routing_key).await? == Some(false) {
                return Err(Error::new(
                    ErrorKind::NoResponders,
                    format!(
                        "no subscription is bound to routing key {:?}",
                        envelope.routing_key
                    ),
                ));
            }
            self.topic.send(wire::encode(envelope, true)).await
        })
    }

    fn dead_letter_spec(&self, name: &str) -> QueueSpec {
        QueueSpec {
            name: self.shared.dialect.dead_letter_queue(name),
            durable: true,
            auto_delete: false,
            lasting: true,
            binding: None,
        }
    }
}

#[async_trait]
impl Provider for Amqp10Provider {
    fn system(&self) -> &'static str {
        // The only dialect so far.
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
        self.send_topic(envelope, options)
    }

    fn request<'a>(
        &'a self,
        mut envelope: Envelope,
        options: &'a PublishOptions,
    ) -> Completion<'a, Result<()>> {
        if let Err(e) = self.inbox.stamp(&mut envelope, "amqp10") {
            return Completion::ready(Err(e));
        }
        self.send_topic(envelope, options)
    }

    async fn subscribe(&self, spec: SubscribeSpec) -> Result<Box<dyn Consumer>> {
        let dialect = &self.shared.dialect;
        let queue = match spec.mode.group() {
            None => QueueSpec {
                name: dialect.private_queue("broadcast", &tidings_core::envelope::new_id()),
                durable: false,
                auto_delete: true,
                lasting: false,
                binding: Some(spec.pattern.clone()),
            },
            Some((name, durable)) => QueueSpec {
                name: dialect.group_queue(name),
                durable,
                auto_delete: !durable,
                lasting: durable,
                binding: Some(spec.pattern.clone()),
            },
        };
        let from = spec.mode.subscription_name().to_owned();
        let dead = self.dead_letter_spec(&spec.dead_letter_queue);
        let receiver = ReceiverSpec {
            address: dialect.queue_address(&queue.name),
            queue_address: dialect.queue_address(&queue.name),
            durable: queue.durable,
            dead_letter_address: dialect.queue_address(&dead.name),
            declare: vec![queue, dead],
            credit: u32::from(spec.prefetch.max(1)),
            from,
            count_redelivery: true,
            renew: None,
        };
        self.consume(receiver).await
    }

    async fn open_inbox(&self) -> Result<Inbox> {
        let id = tidings_core::envelope::new_id();
        let dead_letter_address = self
            .shared
            .dialect
            .queue_address(&self.dead_letter_spec("inbox").name);
        let (dialect, inbox) = (self.shared.dialect.clone(), self.inbox.clone());
        // The inbox of the connection of `generation` (0: the first), its address announced.
        let spec_for = move |generation: u64| {
            let name = match generation {
                0 => dialect.private_queue("inbox", &id),
                n => dialect.private_queue("inbox", &format!("{id}-{n}")),
            };
            let address = dialect.queue_address(&name);
            let queue = QueueSpec {
                name,
                durable: false,
                auto_delete: true,
                lasting: false,
                binding: None,
            };
            ReceiverSpec {
                address: address.clone(),
                queue_address: address,
                durable: false,
                dead_letter_address: dead_letter_address.clone(),
                declare: vec![queue],
                credit: INBOX_CREDIT,
                from: "inbox".to_owned(),
                count_redelivery: false,
                renew: None,
            }
        };
        let first = spec_for(0);
        let address = first.address.clone();
        let renew = Renew(Arc::new(move |generation| {
            let spec = spec_for(generation);
            inbox.renew(spec.address.clone());
            spec
        }));
        let consumer = self
            .consume(ReceiverSpec {
                renew: Some(renew),
                ..first
            })
            .await?;
        if let Err(e) = self.inbox.set(address.clone(), "amqp10") {
            let _ = consumer.cancel().await;
            return Err(e);
        }
        Ok(Inbox::new(address, consumer).renewed_by(self.inbox.renewals()))
    }

    fn reply_slot(&self) -> &ReplySlot {
        &self.replies
    }

    async fn reply(&self, address: &str, envelope: Envelope) -> Result<()> {
        self.check_open()?;
        match self.pool.send(address, wire::encode(envelope, false)).await {
            Err(e) if e.kind() == ErrorKind::Publish && e.message().contains("cannot send to") => {
                // The inbox is gone (its caller left): like a reply nobody waits for.
                tracing::debug!(address, error = %e, "reply to a gone inbox dropped");
                Ok(())
            }
            other => other,
        }
    }

    async fn dead_letters(&self, name: &str) -> Result<Box<dyn Consumer>> {
        let dead = self.dead_letter_spec(name);
        let address = self.shared.dialect.queue_address(&dead.name);
        let receiver = ReceiverSpec {
            address: address.clone(),
            queue_address: address.clone(),
            durable: true,
            dead_letter_address: address,
            declare: vec![dead],
            credit: DEAD_LETTER_CREDIT,
            from: name.to_owned(),
            count_redelivery: false,
            renew: None,
        };
        self.consume(receiver).await
    }

    fn status(&self) -> watch::Receiver<Status> {
        self.shared.status()
    }

    async fn close(&self) -> Result<()> {
        self.shared.close().await;
        Ok(())
    }

    async fn abort(&self) {
        self.shared.abort();
    }
}
