//! The connection to the broker, as the rest of the driver sees it: a [`Link`] handle that
//! sends frames, waits for their receipts and keeps subscriptions, over whichever of the URL's
//! nodes is up.
//!
//! - [`queue`]: the one way out, a queue of encoded frames that whoever queues also writes
//!   when the socket takes it at once;
//! - [`receipts`]: matching RECEIPT and ERROR frames to the frames that asked;
//! - [`subscriptions`]: what is SUBSCRIBEd again on every new connection, and where MESSAGE
//!   frames go;
//! - [`session`]: one connection's handshake, reading, writing and heart-beats;
//! - [`connector`]: what the shared reconnect supervisor (`tidings-plumbing`) calls to open
//!   and keep a connection.
//!
//! Nothing races a reconnect: queueing a frame, and clearing the queue when a connection ends,
//! happen under one lock together with registering and failing receipts. Locks nest in one
//! order: `out`, then `subs`, then `receipts`.

mod connector;
mod queue;
mod receipts;
mod session;
mod subscriptions;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_stomp::{Message, ToServer};
use tidings_core::{Error, ErrorKind, Result, Status};
use tidings_plumbing::{Settings, Supervisor};
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::frame::Outgoing;
use connector::StompConnector;
use queue::{Left, WriteQueue};
use receipts::{Failure, ReceiptTx, Receipts, Waiter};
use subscriptions::Subscriptions;
pub(crate) use subscriptions::{Incoming, Renew, SubEntry};

/// How long opening a connection to one node may take, all steps together (TCP, TLS,
/// CONNECTED: each bounded on its own too) before the next node is tried.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a clean close waits for DISCONNECT's receipt.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handles and the connection's task share.
pub(super) struct Shared {
    out: Mutex<WriteQueue>,
    subs: Mutex<Subscriptions>,
    receipts: Mutex<Receipts>,
    /// Wakes the connection's writer: queued bytes the socket did not take at once.
    kick: Notify,
    /// NACK messages that arrive for a subscription that is gone (RabbitMQ keeps them unacked
    /// until the connection closes otherwise; ActiveMQ takes them back itself).
    nack_orphans: AtomicBool,
    /// Cancelled by [`Link::close`]: the connection says DISCONNECT.
    closing: CancellationToken,
    /// Set once DISCONNECT was answered (or the connection ended after it).
    said_bye: watch::Sender<bool>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            out: Mutex::default(),
            subs: Mutex::default(),
            receipts: Mutex::default(),
            kick: Notify::new(),
            nack_orphans: AtomicBool::new(false),
            closing: CancellationToken::new(),
            said_bye: watch::Sender::new(false),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Queues `frame` and writes what the socket takes now; the rest is left to the
    /// connection's task.
    fn push(&self, out: &mut WriteQueue, frame: Outgoing) {
        out.push(frame);
        self.write_now(out);
    }

    /// Writes what the socket takes now; wakes the connection's task for the rest.
    fn write_now(&self, out: &mut WriteQueue) {
        if out.write_now() == Left::ForTheTask {
            self.kick.notify_one();
        }
    }

    /// Queues a settling frame (ACK, NACK) for the connection of `generation` only; dropped
    /// when that connection is gone. While `held` is set it is only queued.
    fn settle_on(&self, generation: u64, frame: Outgoing, held: Option<&AtomicBool>) {
        let mut out = lock(&self.out);
        if out.is_on(generation) {
            // Read under the lock, so a concurrent release cannot miss this frame.
            if held.is_some_and(|h| h.load(Ordering::Acquire)) {
                out.push(frame);
            } else {
                self.push(&mut out, frame);
            }
        }
    }

    /// Forgets the connection that ended: what it did not write is dropped, and every receipt
    /// still awaited fails with `fail` (a SEND is then re-sent by its caller).
    fn end_session(&self, fail: &Failure) {
        let mut out = lock(&self.out);
        out.detach();
        lock(&self.receipts).fail_all(fail);
    }

    /// The link is closed for good: nothing more is queued, every waiter fails, every
    /// consumer's stream ends.
    fn close(&self) {
        let mut out = lock(&self.out);
        out.close();
        lock(&self.subs).close();
        lock(&self.receipts).fail_all(&Failure::Closed);
    }
}

/// Writes the queue when dropped: the caller that armed it is done waiting, or was cancelled.
struct Flush<'a>(&'a Shared);

impl Drop for Flush<'_> {
    fn drop(&mut self) {
        let mut out = lock(&self.0.out);
        out.armed = false;
        self.0.write_now(&mut out);
    }
}

/// The handle every part of the driver uses to reach the broker. Cheap to clone; the
/// connection ends with the last clone (or [`Link::close`], [`Link::abort`]).
#[derive(Clone)]
pub(crate) struct Link {
    shared: Arc<Shared>,
    supervisor: Arc<Supervisor<StompConnector>>,
    /// What the link connects with (another link to the same broker is opened with it).
    config: Arc<Config>,
    /// Whether [`Link::request`] re-sends a frame whose connection dropped before its receipt.
    resend_lost: bool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("supervisor", &self.supervisor)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Connects to one of the URL's nodes (in a shuffled order; the error names every node's
    /// failure when none answers) and keeps the connection from then on, moving to the next
    /// live node when its node is lost. Returns the link and the broker's `server` header.
    pub(crate) async fn start(config: Config) -> Result<(Self, Option<String>)> {
        // A bad CA file is the url's fault, whatever the network does: say so before trying.
        if let Some(tls) = &config.tls {
            tls.client_config()?;
        }
        let shared = Arc::new(Shared::default());
        let settings = Settings {
            broker: "the STOMP broker",
            redacted: config.redacted.clone(),
            open_timeout: OPEN_TIMEOUT,
        };
        let connector = StompConnector {
            config: config.clone(),
            shared: shared.clone(),
        };
        let supervisor = Supervisor::start(connector, &config.nodes, settings).await?;
        let server = match supervisor.current() {
            Some(current) => current.live.clone(),
            // Lost at once: the next connection says it.
            None => supervisor
                .current_after(0, Some(Instant::now() + OPEN_TIMEOUT))
                .await
                .ok()
                .and_then(|c| c.live.clone()),
        };
        let link = Self {
            shared,
            supervisor,
            config: Arc::new(config),
            resend_lost: true,
        };
        Ok((link, server))
    }

    /// Has messages of subscriptions that are gone NACKed (RabbitMQ; see [`Shared`]).
    pub(crate) fn nack_orphans(&self, nack: bool) {
        self.shared.nack_orphans.store(nack, Ordering::Release);
    }

    /// The configuration this link connects with.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// This link, with [`Link::request`] failing (rather than re-sending) a frame whose
    /// connection dropped before its receipt. For frames sent one at a time, so that an ERROR
    /// without a `receipt-id` (RabbitMQ never names one) that ends the connection can only be
    /// about the frame in flight: re-sending it would only end the next connection too.
    pub(crate) fn without_resend(mut self) -> Self {
        self.resend_lost = false;
        self
    }

    /// Writes a settling frame (ACK, NACK) on connection `generation` only; dropped when that
    /// connection is gone. While `held` is set the frame is only queued: the consumer that set
    /// it writes it with the others of its batch ([`Link::release`]). Anything else written on
    /// the connection meanwhile takes it along, and so does the connection's periodic check.
    pub(crate) fn settle_on(&self, generation: u64, frame: Outgoing, held: &AtomicBool) {
        self.shared.settle_on(generation, frame, Some(held));
    }

    /// Clears `held` and writes what is queued.
    pub(crate) fn release(&self, held: &AtomicBool) {
        let mut out = lock(&self.shared.out);
        held.store(false, Ordering::Release);
        self.shared.write_now(&mut out);
    }

    /// Sends `frame` asking for a receipt that `tx` gets; false once the link is closed.
    ///
    /// Publishes tend to come in bursts (a batch of receipts frees a window of them), so the
    /// first caller of a burst yields once before writing: the others — futures of the same
    /// task, tasks queued on the same thread — add their frames meanwhile, and one write sends
    /// them all. Neither the caller nor the connection's task is woken for it.
    async fn send_confirmed(&self, mut frame: Outgoing, tx: ReceiptTx) -> bool {
        let flush = {
            let shared = &*self.shared;
            let mut out = lock(&shared.out);
            if out.is_closed() {
                return false;
            }
            {
                let mut receipts = lock(&shared.receipts);
                let id = receipts.next_id();
                frame.set_receipt(id.clone());
                receipts.expect(id, Waiter::of(tx));
            }
            out.push(frame);
            if out.armed || !out.writable() {
                // Someone writes it: the caller that armed, or the connection's task (now, or
                // on the next connection).
                None
            } else {
                out.armed = true;
                Some(Flush(shared))
            }
        };
        if let Some(flush) = flush {
            tokio::task::yield_now().await;
            drop(flush);
        }
        true
    }

    /// Writes a frame built by `make` and waits for the broker's receipt, re-sending it on the
    /// next connection (on whichever node) when the connection dropped first, until `timeout`.
    /// At-least-once: a frame whose receipt was lost may be processed twice; none is silently
    /// lost — the caller gets the receipt or an error. `what` names the frame in errors. A link
    /// made [`without_resend`](Link::without_resend) fails instead of re-sending.
    pub(crate) async fn request(
        &self,
        what: impl Fn() -> String,
        timeout: Duration,
        make: impl Fn() -> Outgoing,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let (tx, rx) = oneshot::channel();
            if !self.send_confirmed(make(), tx).await {
                return Err(closed());
            }
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(()))) => return Ok(()),
                // Queued again at once: the queue keeps it for the next connection.
                Ok(Ok(Err(Failure::Lost(_)))) if self.resend_lost => continue,
                Ok(Ok(Err(Failure::Lost(why)))) => {
                    return Err(Error::new(
                        ErrorKind::Publish,
                        format!(
                            "the connection ended before the broker confirmed {}: {why}",
                            what()
                        ),
                    ))
                }
                Ok(Ok(Err(Failure::Broker(message)))) => {
                    return Err(Error::new(
                        ErrorKind::Publish,
                        format!("the broker refused {}: {message}", what()),
                    ))
                }
                Ok(Ok(Err(Failure::Closed))) | Ok(Err(_)) => return Err(closed()),
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Publish,
                        format!(
                            "no receipt for {} within {timeout:?}; the broker ({}) is unreachable \
                             or overloaded (raise publish_timeout_ms in the url to wait longer)",
                            what(),
                            self.config.redacted,
                        ),
                    ))
                }
            }
        }
    }

    /// Subscribes and waits for the broker to confirm. The subscription is then re-made on
    /// every new connection (on whichever node) until [`Link::unsubscribe`].
    pub(crate) async fn subscribe(
        &self,
        id: String,
        mut entry: SubEntry,
        timeout: Duration,
    ) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let destination = entry.destination.clone();
        {
            let shared = &*self.shared;
            let mut out = lock(&shared.out);
            if out.is_closed() {
                return Err(closed());
            }
            if out.is_connected() {
                let mut subs = lock(&shared.subs);
                let receipt = {
                    let mut receipts = lock(&shared.receipts);
                    let receipt = receipts.next_id();
                    receipts.expect(
                        receipt.clone(),
                        Waiter {
                            tx: Some(tx),
                            subscription: Some(id.clone()),
                        },
                    );
                    receipt
                };
                let frame = entry.frame(&id, &receipt);
                entry.made = true;
                subs.add(id, entry);
                drop(subs);
                shared.push(&mut out, frame);
            } else {
                // The next connection subscribes it, and answers.
                lock(&shared.subs).add_pending(id, entry, tx);
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            // Recorded before the connection dropped: the next connection re-subscribes it.
            Ok(Ok(Err(Failure::Lost(_)))) => Ok(()),
            Ok(Ok(Err(Failure::Broker(message)))) => Err(Error::new(
                ErrorKind::Subscribe,
                format!("the broker refused the subscription to {destination:?}: {message}"),
            )),
            Ok(Ok(Err(Failure::Closed))) | Ok(Err(_)) => Err(closed()),
            Err(_) => Err(Error::new(
                ErrorKind::Subscribe,
                format!("the broker did not confirm the subscription to {destination:?} within {timeout:?}"),
            )),
        }
    }

    /// Stops a subscription (and stops re-making it).
    pub(crate) fn unsubscribe(&self, id: &str) {
        let shared = &*self.shared;
        let mut out = lock(&shared.out);
        lock(&shared.subs).remove(id);
        if out.is_connected() {
            let frame: Message<ToServer> = ToServer::Unsubscribe { id: id.to_owned() }.into();
            shared.push(&mut out, Outgoing::Stomp(frame));
        }
    }

    /// The status watch; `Connected` names the node.
    pub(crate) fn status(&self) -> watch::Receiver<Status> {
        self.supervisor.status()
    }

    /// Writes what is queued, disconnects cleanly (DISCONNECT, and its receipt awaited), stops.
    pub(crate) async fn close(&self) {
        self.shared.closing.cancel();
        // No connection: nobody to say goodbye to.
        let connected = self.supervisor.current().is_some();
        if connected {
            let mut bye = self.shared.said_bye.subscribe();
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, bye.wait_for(|done| *done)).await;
        }
        self.abort();
    }

    /// Drops the connection at once, as a crash would.
    pub(crate) fn abort(&self) {
        self.supervisor.shutdown();
        self.shared.close();
    }
}

fn closed() -> Error {
    Error::new(ErrorKind::Closed, "this stomp:// connection is closed")
}

#[cfg(test)]
mod tests {
    use async_stomp::AckMode;
    use tokio::sync::mpsc;

    use super::*;
    use crate::frame;

    fn ack(id: &str) -> Outgoing {
        Outgoing::Raw(frame::settle("ACK", id), None)
    }

    #[test]
    fn the_end_of_a_connection_fails_its_receipts_and_drops_its_writes() {
        let shared = Shared::default();
        lock(&shared.out).attach(Box::new(tokio::io::sink()), 1, Vec::new());
        let (tx, mut rx) = oneshot::channel();
        lock(&shared.receipts).expect("r1".into(), Waiter::of(tx));
        lock(&shared.out).push(ack("a"));
        shared.end_session(&Failure::Lost("node down".into()));
        assert_eq!(
            rx.try_recv().unwrap(),
            Err(Failure::Lost("node down".into()))
        );
        let out = lock(&shared.out);
        assert!(out.is_empty() && !out.is_connected() && !out.is_closed());
    }

    #[test]
    fn acks_are_held_while_a_batch_runs_and_dropped_on_another_connection() {
        let shared = Shared::default();
        lock(&shared.out).attach(Box::new(tokio::io::sink()), 3, Vec::new());
        // Written by the connection's task first (attach leaves it to it): drain it.
        let flushed = lock(&shared.out)
            .poll_flush(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        assert!(flushed.is_ready());
        let held = AtomicBool::new(true);
        shared.settle_on(3, ack("a"), Some(&held));
        assert!(!lock(&shared.out).is_empty(), "held back");
        shared.settle_on(2, ack("old"), Some(&held));
        held.store(false, Ordering::Release);
        shared.write_now(&mut lock(&shared.out));
        assert!(lock(&shared.out).is_empty(), "written at the batch's end");
    }

    #[test]
    fn closing_fails_everyone_and_ends_every_consumer() {
        let shared = Shared::default();
        let (deliver, mut consumer) = mpsc::unbounded_channel();
        let (tx, mut pending) = oneshot::channel();
        lock(&shared.subs).add_pending(
            "s1".into(),
            SubEntry {
                destination: "/queue/x".into(),
                headers: Vec::new(),
                ack: AckMode::Auto,
                deliver,
                renew: None,
                made: false,
            },
            tx,
        );
        let (tx, mut send) = oneshot::channel();
        lock(&shared.receipts).expect("r1".into(), Waiter::of(tx));
        shared.close();
        assert_eq!(pending.try_recv().unwrap(), Err(Failure::Closed));
        assert_eq!(send.try_recv().unwrap(), Err(Failure::Closed));
        assert!(matches!(
            consumer.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        lock(&shared.out).push(ack("late"));
        assert!(
            lock(&shared.out).is_empty(),
            "nothing is queued once closed"
        );
    }
}
