//! [`StompProvider`]: the tidings `Provider` over one STOMP connection.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_stomp::AckMode;
use tidings_core::driver::Status;
use tidings_core::driver::{
    Completion, Consumer, Inbox, InboxAddress, Provider, PublishOptions, ReplySlot, SubscribeSpec,
};
use tidings_core::{async_trait, Capabilities, Envelope, Error, ErrorKind, Pattern, Result};
use tokio::sync::{mpsc, watch, OnceCell};

use crate::consumer::{StompConsumer, SubContext};
use crate::dialect::{check_address, DialectKind, Plan};
use crate::link::{Renew, SubEntry};
use crate::outbox::Outbox;
use crate::wire::KeyedTopics;

/// How long a SUBSCRIBE waits for the broker's receipt.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// One connection to a STOMP broker (RabbitMQ or ActiveMQ), reconnecting on its own.
pub struct StompProvider {
    outbox: Arc<Outbox>,
    kind: DialectKind,
    server: String,
    /// Makes subscription ids and private queue names unique.
    prefix: String,
    next: AtomicU64,
    closed: AtomicBool,
    /// The connection for replies to addresses that are not tidings inboxes (plain STOMP
    /// callers'), opened on the first such reply; see [`StompProvider::reply_elsewhere`].
    foreign: OnceCell<Outbox>,
    /// Those replies go one at a time.
    foreign_turn: tokio::sync::Mutex<()>,
    /// The destination of this connection's reply inbox once open: what its requests carry as
    /// `reply-to`. The inbox is a queue of its own on each connection (see [`Renew`]).
    inbox: Arc<InboxAddress>,
    /// Where the bus keeps the inbox.
    replies: ReplySlot,
}

impl fmt::Debug for StompProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StompProvider")
            .field("server", &self.server)
            .field("dialect", &self.kind)
            .field("namespace", &self.outbox.namespace)
            .finish_non_exhaustive()
    }
}

impl StompProvider {
    pub(crate) fn new(outbox: Outbox, kind: DialectKind, server: String) -> Self {
        let prefix = tidings_core::envelope::new_id();
        Self {
            outbox: Arc::new(outbox),
            kind,
            server,
            prefix,
            next: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            foreign: OnceCell::new(),
            foreign_turn: tokio::sync::Mutex::new(()),
            inbox: Arc::default(),
            replies: ReplySlot::default(),
        }
    }

    /// Sends a reply to `address`, a destination that is not a tidings inbox (a plain STOMP
    /// caller's `/queue/..`, `/reply-queue/..`, `/remote-temp-queue/..`, ...), checked by the
    /// dialect, over a second connection of its own, one reply at a time.
    ///
    /// A broker that refuses a SEND answers with an ERROR frame and ends the connection
    /// (RabbitMQ: `/exchange/` of a missing exchange; ActiveMQ: a temporary queue whose
    /// caller is gone). On the connection that serves, that would drop every delivery in
    /// flight, the request being answered too, and the broker would hand them out again. So
    /// such replies never go there: an ERROR costs the second connection only (it reconnects),
    /// and the reply fails with the broker's words, which the bus logs. RabbitMQ's ERROR frames
    /// name no receipt; with one reply in flight at a time the ERROR is about that reply, so it
    /// is not re-sent either.
    async fn reply_elsewhere(&self, address: &str, envelope: &Envelope) -> Result<()> {
        let _turn = self.foreign_turn.lock().await;
        self.check_open()?;
        let outbox = self
            .foreign
            .get_or_try_init(|| async {
                let config = self.outbox.link.config().clone();
                let (link, _) = crate::link::Link::start(config).await?;
                let link = link.without_resend();
                // Only replies go out there: no group is ever subscribed.
                let dialect = self.kind.dialect(false);
                let topics = KeyedTopics {
                    topic: dialect.publish_destination(&self.outbox.namespace, ""),
                };
                Ok::<_, Error>(Outbox {
                    link,
                    dialect,
                    topics,
                    namespace: self.outbox.namespace.clone(),
                    persistent: self.outbox.persistent,
                    timeout: self.outbox.timeout,
                })
            })
            .await?;
        if self.closed.load(Ordering::Acquire) {
            // Closed while the connection was opening: it would outlive the provider's close.
            outbox.link.abort();
            return self.check_open();
        }
        outbox.send(address, envelope, false).await
    }

    fn unique(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::Closed,
                "this stomp:// connection is closed",
            ));
        }
        Ok(())
    }

    fn dialect(&self) -> &dyn crate::dialect::Dialect {
        &*self.outbox.dialect
    }

    /// Subscribes along `plan` and wraps the result as a consumer.
    async fn consume(&self, plan: Plan, taking: Taking) -> Result<Box<dyn Consumer>> {
        let Taking {
            filter,
            prefetch,
            acks,
            dead_letters,
            from,
            renew,
        } = taking;
        self.check_open()?;
        let id = self.unique();
        let mut headers = plan.headers;
        if let Some(prefetch) = prefetch {
            headers.push((
                self.dialect().prefetch_header().to_owned(),
                prefetch.max(1).to_string(),
            ));
        }
        let (deliver, wire) = mpsc::unbounded_channel();
        let (local_tx, local) = mpsc::unbounded_channel();
        let entry = SubEntry {
            destination: plan.destination,
            headers,
            ack: if acks {
                AckMode::ClientIndividual
            } else {
                AckMode::Auto
            },
            deliver,
            renew,
            made: false,
        };
        let ctx = Arc::new(SubContext {
            id: id.clone(),
            outbox: self.outbox.clone(),
            filter: plan.filter.then_some(filter).flatten(),
            retry: plan.retry,
            requeue: plan.requeue,
            dead_letters,
            from,
            local: local_tx,
            outstanding: (acks && self.kind == DialectKind::RabbitMq)
                .then(|| Mutex::new(HashSet::new())),
            cancelled: AtomicBool::new(false),
            held: AtomicBool::new(false),
        });
        self.outbox
            .link
            .subscribe(id, entry, SUBSCRIBE_TIMEOUT)
            .await?;
        Ok(Box::new(StompConsumer {
            ctx,
            wire,
            local,
            acks,
            done: false,
            batch: Default::default(),
        }))
    }
}

/// What one subscription takes beside its [`Plan`].
struct Taking {
    /// The tidings pattern, for a plan that filters deliveries by it.
    filter: Option<Pattern>,
    prefetch: Option<u16>,
    /// Whether deliveries are acknowledged (not for the inbox: `auto` mode).
    acks: bool,
    /// Where its dead letters go.
    dead_letters: String,
    /// What dead letters name as the subscription they came from.
    from: String,
    /// The destination anew on each connection (the inbox).
    renew: Option<Renew>,
}

#[async_trait]
impl Provider for StompProvider {
    fn system(&self) -> &'static str {
        match self.kind {
            DialectKind::RabbitMq => "rabbitmq",
            DialectKind::ActiveMq => "activemq",
        }
    }

    fn capabilities(&self) -> Capabilities {
        self.dialect().capabilities()
    }

    fn publish<'a>(
        &'a self,
        envelope: Envelope,
        _options: &'a PublishOptions,
    ) -> Completion<'a, Result<()>> {
        Completion::later(async move {
            self.check_open()?;
            let destination = self
                .dialect()
                .publish_destination(&self.outbox.namespace, &envelope.routing_key);
            self.outbox.send(&destination, &envelope, true).await
        })
    }

    fn request<'a>(
        &'a self,
        mut envelope: Envelope,
        options: &'a PublishOptions,
    ) -> Completion<'a, Result<()>> {
        if let Err(e) = self.inbox.stamp(&mut envelope, "stomp") {
            return Completion::ready(Err(e));
        }
        self.publish(envelope, options)
    }

    async fn subscribe(&self, spec: SubscribeSpec) -> Result<Box<dyn Consumer>> {
        let ns = &self.outbox.namespace;
        let plan = self
            .dialect()
            .subscription(ns, &spec.pattern, &spec.mode, &self.unique());
        let from = spec.mode.subscription_name().to_owned();
        let dead_letters = self
            .dialect()
            .dead_letters(ns, &spec.dead_letter_queue)
            .destination;
        let taking = Taking {
            filter: Some(spec.pattern),
            prefetch: Some(spec.prefetch),
            acks: true,
            dead_letters,
            from,
            renew: None,
        };
        self.consume(plan, taking).await
    }

    async fn open_inbox(&self) -> Result<Inbox> {
        let namespace = &self.outbox.namespace;
        let unique = self.unique();
        let (plan, address) = self.dialect().inbox(namespace, &unique);
        let renew = {
            let (dialect, namespace) = (self.kind.dialect(false), namespace.clone());
            let inbox = self.inbox.clone();
            Renew(Box::new(move |generation| {
                let (plan, address) = dialect.inbox(&namespace, &format!("{unique}-{generation}"));
                inbox.renew(address);
                plan.destination
            }))
        };
        let taking = Taking {
            filter: None,
            prefetch: None,
            acks: false,
            dead_letters: self.dialect().dead_letters(namespace, "inbox").destination,
            from: address.clone(),
            renew: Some(renew),
        };
        let consumer = self.consume(plan, taking).await?;
        if let Err(e) = self.inbox.set(address.clone(), "stomp") {
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
        // Replies are short-lived: no need to write them to disk.
        if self
            .dialect()
            .is_inbox_address(&self.outbox.namespace, address)
        {
            return self.outbox.send(address, &envelope, false).await;
        }
        if let Err(why) =
            check_address(address).and_then(|()| self.dialect().check_reply_address(address))
        {
            return Err(Error::new(
                ErrorKind::Publish,
                format!("cannot reply to {address:?}: {why}"),
            ));
        }
        self.reply_elsewhere(address, &envelope).await
    }

    async fn dead_letters(&self, name: &str) -> Result<Box<dyn Consumer>> {
        let plan = self.dialect().dead_letters(&self.outbox.namespace, name);
        let taking = Taking {
            filter: None,
            prefetch: Some(64),
            acks: true,
            dead_letters: plan.destination.clone(),
            from: name.to_owned(),
            renew: None,
        };
        self.consume(plan, taking).await
    }

    fn status(&self) -> watch::Receiver<Status> {
        self.outbox.link.status()
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        if let Some(foreign) = self.foreign.get() {
            foreign.link.close().await;
        }
        self.outbox.link.close().await;
        Ok(())
    }

    async fn abort(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(foreign) = self.foreign.get() {
            foreign.link.abort();
        }
        self.outbox.link.abort();
    }
}
