//! Keeping a connection: the current session, the status watch, and the supervisor that
//! reconnects with backoff when the broker goes away.
//!
//! The supervisor only re-opens the connection (and with it the exchange and the publishing
//! channel). Every subscription follows the sessions on its own (see `consumer`): when a new
//! session appears it re-declares its queue and binding and consumes again, so topology and
//! consumers come back without a central list to replay.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings_core::driver::Status;
use tidings_core::{Error, ErrorKind, Result};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::inbox::ReplyFeed;
use crate::session::Session;

/// The first reconnect delay; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the supervisor looks at the connection when nobody reported a problem.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// State shared by the provider, its consumers and its supervisor.
pub(crate) struct Shared {
    pub(crate) config: Config,
    session: watch::Sender<Option<Arc<Session>>>,
    status: watch::Sender<Status>,
    /// Cancelled by `close` and `abort`.
    pub(crate) closing: CancellationToken,
    /// Set by `abort`: settlements are refused, as if the process had died.
    pub(crate) aborted: AtomicBool,
    /// Wakes the supervisor when someone saw the connection fail.
    lost: Notify,
    generation: AtomicU64,
    in_flight: AtomicUsize,
    flushed: Notify,
    /// Where request channels hand their reply consumers, once the inbox is open.
    replies: Mutex<Option<ReplyFeed>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Connects for the first time; fails at once if the broker cannot be reached.
    pub(crate) async fn connect(config: Config) -> Result<Arc<Self>> {
        let first = Session::open(&config, 1).await?;
        tracing::info!(url = %config.redacted, exchange = %config.exchange, "connected to RabbitMQ");
        let shared = Arc::new(Self {
            config,
            session: watch::Sender::new(Some(first.clone())),
            status: watch::Sender::new(Status::Connected),
            closing: CancellationToken::new(),
            aborted: AtomicBool::new(false),
            lost: Notify::new(),
            generation: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            flushed: Notify::new(),
            replies: Mutex::new(None),
        });
        tokio::spawn(supervise(Arc::downgrade(&shared), first));
        Ok(shared)
    }

    /// The status watch.
    pub(crate) fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Tells the supervisor the connection looks broken (it checks and reconnects).
    pub(crate) fn report_lost(&self) {
        self.lost.notify_one();
    }

    /// Waits for a live session newer than generation `after` until `deadline`.
    pub(crate) async fn session_after(
        &self,
        after: u64,
        deadline: Instant,
    ) -> Result<Arc<Session>> {
        let mut rx = self.session.subscribe();
        loop {
            if self.closing.is_cancelled() {
                return Err(closed());
            }
            let candidate = rx.borrow_and_update().clone();
            if let Some(session) = candidate {
                if session.generation > after {
                    if session.is_connected() {
                        return Ok(session);
                    }
                    self.report_lost();
                }
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = self.closing.cancelled() => return Err(closed()),
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::new(
                        ErrorKind::Connection,
                        format!(
                            "no connection to {} for {:?} (publish_timeout_ms={}); the broker is \
                             unreachable or restarting, nothing was sent",
                            self.config.redacted,
                            self.config.publish_timeout,
                            self.config.publish_timeout.as_millis()
                        ),
                    ))
                }
            }
        }
    }

    /// Opens the RPC inbox: the receiving end of the feed of reply consumers. One per
    /// connection, as the driver contract says: direct reply-to allows one reply consumer per
    /// channel, and the request channels belong to the connection. The bus opens it once and
    /// shares it between every bus over the provider.
    pub(crate) fn open_replies(&self) -> Result<mpsc::UnboundedReceiver<lapin::Consumer>> {
        let mut current = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|feed| !feed.is_closed()) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "this amqp:// connection's reply inbox is already open; the bus opens it once \
                 per connection and every Bus over the provider shares it",
            ));
        }
        let (feed, replies) = mpsc::unbounded_channel();
        *current = Some(feed);
        Ok(replies)
    }

    /// The feed of the open inbox, if any.
    pub(crate) fn reply_feed(&self) -> Option<ReplyFeed> {
        self.replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts a publish in flight until the guard drops, so `close` can wait for it.
    pub(crate) fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Waits until no publish is in flight, at most `limit`.
    pub(crate) async fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.in_flight.load(Ordering::Acquire) > 0 {
            let notified = self.flushed.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!("closing with publishes still waiting for their confirm");
                break;
            }
        }
    }

    /// Ends the connection for good.
    pub(crate) async fn shut(&self, aborted: bool) {
        if aborted {
            self.aborted.store(true, Ordering::Release);
        }
        self.closing.cancel();
        // No more reply consumers: the inbox ends once the ones it has end with the connection.
        self.replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let session = self.session.send_replace(None);
        self.status.send_replace(Status::Closed);
        if let Some(session) = session {
            session.close().await;
        }
    }
}

/// A publish in flight; see [`Shared::in_flight`].
pub(crate) struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.flushed.notify_waiters();
        }
    }
}

pub(crate) fn closed() -> Error {
    Error::new(ErrorKind::Closed, "this amqp:// connection is closed")
}

/// Watches the session and replaces it when it dies. Holds the shared state weakly, so
/// dropping the provider ends the supervisor.
async fn supervise(shared: std::sync::Weak<Shared>, mut session: Arc<Session>) {
    loop {
        // Wait for the current session to die.
        loop {
            let Some(s) = shared.upgrade() else { return };
            if s.closing.is_cancelled() {
                return;
            }
            if !session.is_connected() {
                break;
            }
            let closing = s.closing.clone();
            let lost = async { s.lost.notified().await };
            tokio::select! {
                _ = closing.cancelled() => return,
                _ = lost => {}
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            }
        }
        let Some(s) = shared.upgrade() else { return };
        tracing::warn!(url = %s.config.redacted, "lost the connection to RabbitMQ; reconnecting");
        s.session.send_replace(None);
        s.status.send_replace(Status::Reconnecting);
        let closing = s.closing.clone();
        drop(s);
        let mut backoff = MIN_BACKOFF;
        loop {
            let Some(s) = shared.upgrade() else { return };
            if closing.is_cancelled() {
                return;
            }
            let generation = s.generation.fetch_add(1, Ordering::AcqRel) + 1;
            match Session::open(&s.config, generation).await {
                Ok(fresh) => {
                    if closing.is_cancelled() {
                        fresh.close().await;
                        return;
                    }
                    tracing::info!(url = %s.config.redacted, generation, "reconnected to RabbitMQ");
                    session = fresh.clone();
                    s.session.send_replace(Some(fresh));
                    s.status.send_replace(Status::Connected);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "reconnect failed");
                }
            }
            drop(s);
            tokio::select! {
                _ = closing.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
