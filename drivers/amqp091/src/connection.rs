//! Keeping a connection: the shared reconnect supervisor (`tidings-plumbing`) over the URL's
//! nodes, what this driver tells it (how to open a session on a node and how to tell it died),
//! and what the provider's handles share.
//!
//! The supervisor only re-opens the connection (and with it the exchange and the publishing
//! channels), on the next live node when its node is lost. Every subscription follows the
//! sessions on its own (see `consumer`): when a new session appears it re-declares its queue
//! and binding and consumes again, and the request channels consume direct reply-to again for
//! the inbox, so topology, consumers and the RPC inbox come back without a central list to
//! replay.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings_core::driver::Status;
use tidings_core::{async_trait, broker_url::Node, Error, ErrorKind, Result};
use tidings_plumbing::{Connector, Current, NotLive, Settings, Supervisor};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::deadline::Deadlines;
use crate::inbox::ReplyFeed;
use crate::session::Session;

/// How often a session is checked when nobody reported a problem: lapin has no "closed"
/// event to wait for.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// How long opening a connection to one node may take before the next is tried.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection in use, as handles see it: a [`Session`] with its generation and node.
pub(crate) type Live = Current<Session>;

/// What the supervisor needs of this driver.
struct Opener {
    config: Config,
    /// Woken by [`Shared::report_lost`]: look at the session now rather than at the next tick.
    check: Arc<Notify>,
    /// Counts lost connections: replies to requests sent on one come to its channels' direct
    /// reply-to consumers, which die with it (see [`Shared::renewals`]).
    lost: watch::Sender<u64>,
}

#[async_trait]
impl Connector for Opener {
    type Live = Session;
    type Owned = ();

    async fn open(&self, node: &Node) -> Result<(Session, ())> {
        Session::open(&self.config, node).await.map(|s| (s, ()))
    }

    async fn run(&self, current: Arc<Live>, (): (), shutdown: CancellationToken) {
        while current.is_connected() {
            tokio::select! {
                _ = current.lost().cancelled() => break,
                _ = shutdown.cancelled() => break,
                _ = self.check.notified() => {}
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            }
        }
        if !shutdown.is_cancelled() {
            self.lost.send_modify(|n| *n += 1);
        }
    }
}

/// State shared by the provider, its consumers and its supervisor.
pub(crate) struct Shared {
    pub(crate) config: Config,
    supervisor: Arc<Supervisor<Opener>>,
    check: Arc<Notify>,
    /// Cancelled by `close` and `abort`.
    pub(crate) closing: CancellationToken,
    /// Set by `abort`: settlements are refused, as if the process had died.
    pub(crate) aborted: AtomicBool,
    in_flight: AtomicUsize,
    flushed: Notify,
    /// When publishes give up waiting for their confirm (`publish_timeout`).
    pub(crate) deadlines: Deadlines,
    /// Where request channels hand their reply consumers, once the inbox is open.
    replies: Mutex<Option<ReplyFeed>>,
    /// Counts up when a connection is lost, and with it the replies to every request sent on
    /// it: the inbox's renewals (`Inbox::renewed_by`), so those calls fail at once.
    pub(crate) renewals: watch::Receiver<u64>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("supervisor", &self.supervisor)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Connects to one of the URL's nodes; fails at once if none can be reached.
    pub(crate) async fn connect(config: Config) -> Result<Arc<Self>> {
        let check = Arc::new(Notify::new());
        let settings = Settings {
            broker: "RabbitMQ (AMQP 0.9.1)",
            redacted: config.redacted.clone(),
            open_timeout: OPEN_TIMEOUT,
        };
        let (lost, renewals) = watch::channel(0);
        let opener = Opener {
            config: config.clone(),
            check: check.clone(),
            lost,
        };
        let supervisor = Supervisor::start(opener, config.nodes(), settings).await?;
        let deadlines = Deadlines::new(config.publish_timeout);
        Ok(Arc::new(Self {
            config,
            supervisor,
            check,
            closing: CancellationToken::new(),
            aborted: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            flushed: Notify::new(),
            deadlines,
            replies: Mutex::new(None),
            renewals,
        }))
    }

    /// The status watch; `Connected` names the node.
    pub(crate) fn status(&self) -> watch::Receiver<Status> {
        self.supervisor.status()
    }

    /// Tells the supervisor the connection looks broken (it checks, and reconnects if so).
    pub(crate) fn report_lost(&self) {
        self.check.notify_one();
    }

    /// Waits for a live session newer than generation `after` until `deadline`.
    pub(crate) async fn session_after(&self, after: u64, deadline: Instant) -> Result<Arc<Live>> {
        if let Some(session) = self.live_after(after)? {
            return Ok(session);
        }
        Box::pin(self.wait_session_after(after, deadline)).await
    }

    /// The usual case of `session_after`, without waiting: the current session, if it is up
    /// and newer than generation `after`.
    pub(crate) fn live_after(&self, after: u64) -> Result<Option<Arc<Live>>> {
        if self.closing.is_cancelled() {
            return Err(closed());
        }
        Ok(self
            .supervisor
            .current()
            .filter(|s| s.generation > after && s.is_connected()))
    }

    /// `session_after` when the current session is not up: waits for the next.
    async fn wait_session_after(&self, after: u64, deadline: Instant) -> Result<Arc<Live>> {
        loop {
            if self.closing.is_cancelled() {
                return Err(closed());
            }
            let session = match self.supervisor.current_after(after, Some(deadline)).await {
                Ok(session) => session,
                Err(NotLive::Closed) => return Err(closed()),
                Err(NotLive::TimedOut) => {
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
            };
            if session.is_connected() {
                return Ok(session);
            }
            // Dead but not noticed yet: have it noticed, and wait for the replacement.
            self.report_lost();
            tokio::select! {
                _ = session.lost().cancelled() => {}
                _ = self.closing.cancelled() => return Err(closed()),
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
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
    pub(crate) fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
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

    /// Stops reconnecting: the current connection goes with its last handle.
    pub(crate) fn stop_supervising(&self) {
        self.supervisor.shutdown();
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
        let session = self.supervisor.current();
        self.supervisor.shutdown();
        if let Some(session) = session {
            session.close().await;
        }
    }
}

/// A publish in flight; see [`Shared::in_flight`].
pub(crate) struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.flushed.notify_waiters();
        }
    }
}

pub(crate) fn closed() -> Error {
    Error::new(ErrorKind::Closed, "this amqp:// connection is closed")
}
