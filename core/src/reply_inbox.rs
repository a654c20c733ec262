//! The caller's side of RPC transport: one reply inbox per connection, shared by every call of
//! every bus over it. It lives in the provider's [`ReplySlot`](crate::driver::ReplySlot), so
//! two `Bus::new` over one provider find the same inbox (see the driver contract's RPC
//! section).
//!
//! No task reads the inbox. A waiting call takes the inbox and reads replies for every call
//! until its own arrives, then hands the inbox to the next waiting call. A caller making one
//! call at a time so reads its reply itself, without a hop through another task. Replies nobody
//! waits for any more (they came after a timeout) are dropped quietly.
//!
//! The inbox hands each call its reply as it arrived; the call runs its own handle's layers on
//! it (see [`Call`](crate::Call)), so every handle's layers see the replies to its calls.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, watch};

use crate::driver::delivery::{Consumer, Inbox, Outcome};
use crate::envelope::Envelope;
use crate::error::Result;

/// Where the bus keeps a connection's reply inbox and the calls waiting on it.
///
/// A driver holds one per connection, made with `ReplySlot::default()`, returns it from
/// [`Provider::reply_slot`](crate::driver::Provider::reply_slot) and never looks inside. The slot is the provider's rather than a
/// bus's because the inbox belongs to the connection: every bus over one provider finds the
/// same inbox there, and it goes away with the connection. (A registry in the bus keyed by
/// provider would need a process-wide map, keys that outlive their providers, and would split
/// the inbox of a provider wrapped by another one that delegates to it; a slot the provider
/// holds has none of that.)
#[derive(Default)]
pub struct ReplySlot(tokio::sync::OnceCell<ReplyInbox>);

impl fmt::Debug for ReplySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ReplySlot").field(&self.0.get()).finish()
    }
}

type Waiters = Mutex<HashMap<String, oneshot::Sender<Arc<Envelope>>>>;

/// The reply inbox of one connection and the calls waiting on it.
pub(crate) struct ReplyInbox {
    address: String,
    /// See [`Inbox::renewals`].
    renewals: Option<watch::Receiver<u64>>,
    waiters: Waiters,
    inbox: tokio::sync::Mutex<Box<dyn Consumer>>,
}

impl ReplyInbox {
    /// The connection's inbox from its `slot`, opened with `open` by the first call over the
    /// connection (again after a failure to open it).
    pub(crate) async fn of<F>(slot: &ReplySlot, open: F) -> Result<&Self>
    where
        F: std::future::Future<Output = Result<Inbox>>,
    {
        slot.0
            .get_or_try_init(|| async {
                let inbox = open.await?;
                Ok(Self {
                    address: inbox.address,
                    renewals: inbox.renewals,
                    waiters: Mutex::default(),
                    inbox: tokio::sync::Mutex::new(inbox.consumer),
                })
            })
            .await
    }

    /// The address the connection's requests carry as `reply_to` (the driver sets it).
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// Resolves once the replies to every request confirmed before this was called can no
    /// longer arrive (the connection's inbox was renewed); never, for an inbox that is not.
    pub(crate) fn renewed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut renewals = self.renewals.clone();
        if let Some(r) = renewals.as_mut() {
            r.borrow_and_update();
        }
        async move {
            if let Some(mut r) = renewals {
                if r.changed().await.is_ok() {
                    return;
                }
            }
            // Not renewed, or never again (a closed watch: the connection is gone).
            std::future::pending().await
        }
    }

    /// Registers a call; its reply will arrive on the returned receiver.
    pub(crate) fn expect(&self, correlation_id: &str) -> oneshot::Receiver<Arc<Envelope>> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("poisoned")
            .insert(correlation_id.to_owned(), tx);
        rx
    }

    /// Gives up on a call (it failed or timed out); a late reply is then dropped.
    pub(crate) fn forget(&self, correlation_id: &str) {
        self.waiters
            .lock()
            .expect("poisoned")
            .remove(correlation_id);
    }

    /// Waits for the reply `rx` announces, reading the inbox for everybody while no other call
    /// does. `None`: the connection closed.
    pub(crate) async fn reply(
        &self,
        rx: oneshot::Receiver<Arc<Envelope>>,
    ) -> Option<Arc<Envelope>> {
        tokio::pin!(rx);
        let mut inbox = tokio::select! {
            biased;
            reply = &mut rx => return reply.ok(),
            inbox = self.inbox.lock() => inbox,
        };
        loop {
            // Ours may have been read by the call that held the inbox before.
            if let Ok(reply) = rx.try_recv() {
                return Some(reply);
            }
            let delivery = inbox.next().await?;
            let (envelope, settle) = delivery.into_parts();
            let _ = settle.settle(Outcome::Ack).await;
            let waiter = envelope
                .correlation_id
                .as_ref()
                .and_then(|id| self.waiters.lock().expect("poisoned").remove(id));
            match waiter {
                Some(tx) => {
                    let _ = tx.send(envelope);
                }
                None => tracing::debug!(
                    correlation_id = ?envelope.correlation_id,
                    "dropping a reply nobody waits for (late, after a timeout)"
                ),
            }
        }
    }
}

impl fmt::Debug for ReplyInbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyInbox")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}
