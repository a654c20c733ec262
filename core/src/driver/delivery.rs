//! One delivery's life in the driver contract: the [`Consumer`] that yields it, the
//! [`Delivery`] with its [`Settle`] handle, how it is settled ([`Outcome`]), the [`Completion`]
//! per-message operations return, and the connection's reply [`Inbox`].

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};

/// How a delivery is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Done: remove it.
    Ack,
    /// Give it back unchanged (same attempt), preferably to another consumer.
    Requeue,
    /// Deliver it again, to this or another consumer, with `attempt + 1`.
    Retry,
    /// The consumer declined it (an RPC server that cannot answer this request, see
    /// [`Decline`](crate::rpc::Decline)): give it back as [`Requeue`](Self::Requeue) does
    /// (same attempt, preferably to another consumer), with `headers` set on the message given
    /// back. A driver that gives a delivery back by publishing a copy sets them on the copy;
    /// the handler's next sight of the message must carry them.
    Decline {
        /// Headers to set (replacing any of the same name) on the message given back.
        headers: BTreeMap<String, String>,
    },
    /// Move it to the subscription's dead-letter queue, as made by
    /// [`Envelope::into_dead_letter`] with this reason.
    DeadLetter {
        /// Why it could not be handled.
        reason: String,
    },
}

impl Outcome {
    /// The error a driver gives for an outcome it does not know (outcomes may be added).
    pub fn unsupported(&self) -> Error {
        Error::new(
            ErrorKind::Unsupported,
            format!("this driver cannot settle a delivery with {self:?}"),
        )
    }
}

/// What the per-message operations of a driver (publish, next, settle) return: either a
/// result that is already there or a future.
///
/// The in-process driver finishes these operations synchronously, millions of times a second;
/// `ready` spares it the allocation an `async fn` in a trait object costs. A ready completion
/// still counts against tokio's cooperative budget, as tokio's own channels do, so a task
/// publishing in a tight loop yields now and then and lets the consumers it woke run.
/// Network drivers return `later(async move { ... })`.
#[must_use = "a completion does nothing until awaited"]
pub struct Completion<'a, T>(Step<'a, T>);

enum Step<'a, T> {
    /// Done; counts against the cooperative budget when `cooperative`.
    Ready {
        value: Option<T>,
        cooperative: bool,
    },
    Later(BoxFuture<'a, T>),
}

impl<'a, T> Completion<'a, T> {
    /// A completion that is done: `value` is its output. For operations that could have had to
    /// wait (a publish, the next delivery): awaiting it uses one unit of tokio's budget.
    pub fn ready(value: T) -> Self {
        Self(Step::Ready {
            value: Some(value),
            cooperative: true,
        })
    }

    /// A completion that is done and never had anything to wait for (an in-memory ack):
    /// awaiting it costs nothing.
    pub fn done(value: T) -> Self {
        Self(Step::Ready {
            value: Some(value),
            cooperative: false,
        })
    }

    /// A completion that `future` finishes.
    pub fn later(future: impl Future<Output = T> + Send + 'a) -> Self {
        Self(Step::Later(Box::pin(future)))
    }
}

// Never pinned structurally: the ready value is moved out, the future is boxed.
impl<T> Unpin for Completion<'_, T> {}

impl<T> Future for Completion<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.get_mut().0 {
            Step::Ready { value, cooperative } => {
                if *cooperative {
                    std::task::ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
                }
                Poll::Ready(value.take().expect("Completion polled after it finished"))
            }
            Step::Later(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for Completion<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Step::Ready { .. } => "Completion::Ready",
            Step::Later(_) => "Completion::Later",
        })
    }
}

/// Settles one delivery with the broker. Implemented by drivers.
pub trait Settle: Send + Sync + 'static {
    /// Applies `outcome`. Called at most once per delivery.
    fn settle(self: Box<Self>, outcome: Outcome) -> Completion<'static, Result<()>>;
}

/// A received message and the means to settle it.
///
/// The envelope is shared (`Arc`), so a driver that must keep a copy until the delivery is
/// settled — to redeliver it if the consumer dies — or that fans one message out to many
/// queues keeps a reference instead of cloning the message.
pub struct Delivery {
    envelope: Arc<Envelope>,
    settle: Box<dyn Settle>,
}

impl Delivery {
    /// A delivery that `settle` will settle.
    pub fn new(envelope: impl Into<Arc<Envelope>>, settle: Box<dyn Settle>) -> Self {
        Self {
            envelope: envelope.into(),
            settle,
        }
    }

    /// The message.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Settles the delivery with `outcome`.
    pub fn settle(self, outcome: Outcome) -> Completion<'static, Result<()>> {
        self.settle.settle(outcome)
    }

    /// Splits the delivery into its message and its settlement handle.
    pub fn into_parts(self) -> (Arc<Envelope>, Box<dyn Settle>) {
        (self.envelope, self.settle)
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("envelope", &self.envelope)
            .finish_non_exhaustive()
    }
}

/// A stream of deliveries from one subscription.
#[async_trait]
pub trait Consumer: Send + 'static {
    /// The next delivery; `None` once cancelled or closed. Must be cancel-safe: dropping the
    /// future loses no delivery.
    fn next(&mut self) -> Completion<'_, Option<Delivery>>;
    /// Stops receiving. Deliveries not yet settled go back to the queue.
    async fn cancel(self: Box<Self>) -> Result<()>;
}

/// A connection's reply inbox, as [`Provider::open_inbox`](super::Provider::open_inbox) opens it: the private address where
/// the replies to the connection's requests arrive.
///
/// # Examples
/// ```
/// # fn demo(consumer: Box<dyn tidings_core::driver::Consumer>) {
/// use tidings_core::driver::{Inbox, InboxAddress};
///
/// let address = InboxAddress::default();
/// address.set("inbox.1".into(), "memory").unwrap();
/// // A driver whose inbox is made anew on each connection says so: a call whose request went
/// // out before a renewal fails at once instead of waiting out its timeout.
/// let inbox = Inbox::new("inbox.1".into(), consumer).renewed_by(address.renewals());
/// # let _ = inbox; }
/// ```
#[non_exhaustive]
pub struct Inbox {
    /// The address [`Provider::request`](super::Provider::request) puts in `reply_to`, as far as the connection knows it
    /// (a broker may rewrite it on the way). The bus shows it to layers; it never sends to it.
    pub address: String,
    /// The replies. They need no settling.
    pub consumer: Box<dyn Consumer>,
    /// Counts the times the replies to every request sent before could no longer arrive (the
    /// connection was replaced and its inbox with it); `None`: never.
    pub renewals: Option<tokio::sync::watch::Receiver<u64>>,
}

impl Inbox {
    /// An inbox at `address` whose replies come from `consumer`, and whose replies to earlier
    /// requests never stop being able to arrive.
    pub fn new(address: String, consumer: Box<dyn Consumer>) -> Self {
        Self {
            address,
            consumer,
            renewals: None,
        }
    }

    /// This inbox, renewed whenever `renewals` counts up: a call waiting for the reply to a
    /// request confirmed before then fails at once with [`ErrorKind::Connection`].
    pub fn renewed_by(mut self, renewals: tokio::sync::watch::Receiver<u64>) -> Self {
        self.renewals = Some(renewals);
        self
    }
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn completions_give_their_value() {
        assert_eq!(Completion::ready(1).await, 1);
        assert_eq!(Completion::done(2).await, 2);
        assert_eq!(Completion::later(async { 3 }).await, 3);
    }

    /// A loop of ready completions (a task publishing to the in-process broker) yields now and
    /// then, so the task it feeds gets to run on a single-threaded runtime before it ends.
    #[tokio::test(flavor = "current_thread")]
    async fn a_loop_of_ready_completions_lets_other_tasks_run() {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
        let mut seen_before_the_end = false;
        for _ in 0..1_000 {
            Completion::ready(()).await;
            seen_before_the_end |= ran.load(Ordering::SeqCst);
        }
        assert!(seen_before_the_end, "the loop never yielded");
    }
}
