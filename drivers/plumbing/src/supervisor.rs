//! The reconnect supervisor: one task per connection that opens it on one of the broker's
//! nodes, watches it, and when it is lost opens a new one, on the next live node.
//!
//! Handles (publishers, consumers) never own the connection. They take the [`Current`] one,
//! use it, and when it fails them they report its generation broken; the supervisor then
//! replaces it and they take the new one. A handle holding a stale generation fails cleanly:
//! reporting it broken does nothing, and waiting for a newer one returns the replacement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tidings_core::broker_url::Node;
use tidings_core::driver::Status;
use tidings_core::{Error, ErrorKind, Result};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::nodes::NodeOrder;

/// How a driver opens and keeps a connection to one node.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// What handles use while the connection is current (channels, a session, a writer).
    type Live: Send + Sync + 'static;
    /// What only the supervisor's task holds (a connection handle that must be polled or
    /// closed by its owner); `()` when there is none.
    type Owned: Send + 'static;

    /// Opens a connection to `node`. The supervisor bounds it with
    /// [`Settings::open_timeout`].
    async fn open(&self, node: &Node) -> Result<(Self::Live, Self::Owned)>;

    /// Keeps the connection while it is current and returns once it is lost, or once
    /// `current.lost()` is cancelled (a handle reported it broken, or the supervisor shuts
    /// down: then `shutdown` is cancelled too, and the connection is the driver's to close).
    async fn run(
        &self,
        current: Arc<Current<Self::Live>>,
        owned: Self::Owned,
        shutdown: CancellationToken,
    );
}

/// The connection in use: its generation, its node, and what handles use.
#[derive(Debug)]
pub struct Current<L> {
    /// Counts the connections of one supervisor, from 1; handles compare it to tell the
    /// replacement from the connection that failed them.
    pub generation: u64,
    /// The node it is connected to.
    pub node: Node,
    /// What the driver's handles use.
    pub live: L,
    lost: CancellationToken,
}

/// A current connection is used as what it holds.
impl<L> std::ops::Deref for Current<L> {
    type Target = L;

    fn deref(&self) -> &L {
        &self.live
    }
}

impl<L> Current<L> {
    /// Cancelled once this connection is no longer the current one (lost, reported broken,
    /// or shut down). Handles wait on it beside their own operations, because a dead
    /// connection does not always fail what is pending on it.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }
}

/// Why [`Supervisor::current_after`] returned no connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotLive {
    /// The supervisor was shut down.
    Closed,
    /// No connection came before the deadline.
    TimedOut,
}

/// What the supervisor says in logs and errors, and how long an open may take.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The broker, for messages: e.g. `RabbitMQ (AMQP 0.9.1)`.
    pub broker: &'static str,
    /// The URL without its password.
    pub redacted: String,
    /// How long opening a connection to one node may take before the next node is tried.
    pub open_timeout: Duration,
}

/// Keeps one connection over a broker's nodes. Dropping it shuts the connection down.
pub struct Supervisor<C: Connector> {
    settings: Settings,
    current: watch::Sender<Option<Arc<Current<C::Live>>>>,
    status: watch::Sender<Status>,
    shutdown: CancellationToken,
    generation: AtomicU64,
    nodes: Mutex<NodeOrder>,
}

impl<C: Connector> std::fmt::Debug for Supervisor<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("broker", &self.settings.broker)
            .field("url", &self.settings.redacted)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl<C: Connector> Drop for Supervisor<C> {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl<C: Connector> Supervisor<C> {
    /// Connects to one of `nodes` (tried once each, in a shuffled order) and keeps the
    /// connection in a background task. Fails, naming every node's error, when none answers:
    /// a bad URL or a broker that is down shows at start-up, not as a hang later.
    pub async fn start(connector: C, nodes: &[Node], settings: Settings) -> Result<Arc<Self>> {
        let supervisor = Arc::new(Self {
            settings,
            current: watch::Sender::new(None),
            status: watch::Sender::new(Status::Reconnecting),
            shutdown: CancellationToken::new(),
            generation: AtomicU64::new(0),
            nodes: Mutex::new(NodeOrder::shuffled(nodes)),
        });
        let order = supervisor.order();
        let connector = Arc::new(connector);
        let first = supervisor
            .open_round(&connector, order.first_round())
            .await?;
        tracing::info!(broker = supervisor.settings.broker, node = %first.0.node, url = %supervisor.settings.redacted, "connected");
        tokio::spawn(supervise(
            Arc::downgrade(&supervisor),
            connector,
            supervisor.shutdown.clone(),
            first,
        ));
        Ok(supervisor)
    }

    fn order(&self) -> NodeOrder {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Tries each node of `round` once; the first that opens becomes current.
    async fn open_round<'a>(
        &self,
        connector: &C,
        round: impl Iterator<Item = (usize, &'a Node)>,
    ) -> Result<(Arc<Current<C::Live>>, C::Owned)> {
        let mut failures = Vec::new();
        for (index, node) in round {
            if self.shutdown.is_cancelled() {
                return Err(closed(&self.settings));
            }
            let opened = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(closed(&self.settings)),
                opened = tokio::time::timeout(self.settings.open_timeout, connector.open(node)) => opened,
            };
            match opened {
                Ok(Ok((live, owned))) => {
                    self.nodes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .use_node(index);
                    let current = Arc::new(Current {
                        generation: self.generation.fetch_add(1, Ordering::AcqRel) + 1,
                        node: node.clone(),
                        live,
                        lost: self.shutdown.child_token(),
                    });
                    self.current.send_replace(Some(current.clone()));
                    self.status.send_replace(Status::Connected {
                        node: node.to_string(),
                    });
                    return Ok((current, owned));
                }
                Ok(Err(e)) => failures.push(e),
                Err(_) => failures.push(Error::new(
                    ErrorKind::Connection,
                    format!(
                        "cannot reach {} at {node} within {:?} ({})",
                        self.settings.broker, self.settings.open_timeout, self.settings.redacted
                    ),
                )),
            }
        }
        Err(all_failed(failures))
    }

    /// The connection status; `Connected` names the node, so a move to another node shows.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// The current connection, if one is up.
    pub fn current(&self) -> Option<Arc<Current<C::Live>>> {
        self.current
            .borrow()
            .as_ref()
            .filter(|c| !c.lost.is_cancelled())
            .cloned()
    }

    /// The current connection once there is one newer than generation `after` (0: any),
    /// waiting until `deadline` (`None`: as long as it takes).
    pub async fn current_after(
        &self,
        after: u64,
        deadline: Option<Instant>,
    ) -> std::result::Result<Arc<Current<C::Live>>, NotLive> {
        let mut rx = self.current.subscribe();
        let expired = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        loop {
            if self.shutdown.is_cancelled() {
                return Err(NotLive::Closed);
            }
            let candidate = rx
                .borrow_and_update()
                .as_ref()
                .filter(|c| c.generation > after)
                .cloned();
            match candidate {
                Some(current) if !current.lost.is_cancelled() => return Ok(current),
                // Lost but not replaced yet: the replacement changes the watch.
                Some(_) | None => {}
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return Err(NotLive::Closed) },
                _ = self.shutdown.cancelled() => return Err(NotLive::Closed),
                _ = &mut expired => return Err(NotLive::TimedOut),
            }
        }
    }

    /// Tells the supervisor that the connection of `generation` failed a handle. A stale
    /// generation (already replaced) is ignored.
    pub fn report_broken(&self, generation: u64) {
        if let Some(current) = self.current.borrow().as_ref() {
            if current.generation == generation {
                current.lost.cancel();
            }
        }
    }

    /// Ends the connection for good: the current one's `run` sees `shutdown` cancelled
    /// (and closes it), and waiting handles get [`NotLive::Closed`].
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        if let Some(current) = self.current.send_replace(None) {
            current.lost.cancel();
        }
        self.status.send_replace(Status::Closed);
    }

    /// Whether [`shutdown`](Self::shutdown) was called (or the supervisor dropped).
    pub fn is_shut_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Cancelled by [`shutdown`](Self::shutdown).
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The URL without its password, for messages.
    pub fn redacted(&self) -> &str {
        &self.settings.redacted
    }
}

fn closed(settings: &Settings) -> Error {
    Error::new(
        ErrorKind::Closed,
        format!("the connection to {} is closed", settings.broker),
    )
}

/// One error for a round where every node failed: the only one's as it is, several joined.
fn all_failed(mut failures: Vec<Error>) -> Error {
    if failures.len() == 1 {
        return failures.remove(0);
    }
    let lines: Vec<String> = failures.iter().map(ToString::to_string).collect();
    Error::new(
        ErrorKind::Connection,
        format!(
            "no node of the broker answered ({} tried): {}",
            lines.len(),
            lines.join("; ")
        ),
    )
}

/// The supervisor's task: runs the current connection until it is lost, then opens another,
/// node after node with backoff between rounds. Holds the supervisor weakly: dropping it
/// cancels `shutdown`, which ends the running connection and this task.
async fn supervise<C: Connector>(
    supervisor: Weak<Supervisor<C>>,
    connector: Arc<C>,
    shutdown: CancellationToken,
    first: (Arc<Current<C::Live>>, C::Owned),
) {
    let mut running = first;
    loop {
        let (current, owned) = running;
        connector
            .run(current.clone(), owned, shutdown.clone())
            .await;
        current.lost.cancel();
        let Some(s) = supervisor.upgrade() else {
            return;
        };
        s.current.send_if_modified(|c| {
            let stale = c
                .as_ref()
                .is_some_and(|c| c.generation == current.generation);
            if stale {
                *c = None;
            }
            stale
        });
        if shutdown.is_cancelled() {
            s.status.send_replace(Status::Closed);
            return;
        }
        tracing::warn!(broker = s.settings.broker, node = %current.node, url = %s.settings.redacted, "lost the connection; reconnecting");
        s.status.send_replace(Status::Reconnecting);
        drop(s);
        let mut backoff = Backoff::new();
        running = loop {
            let Some(s) = supervisor.upgrade() else {
                return;
            };
            let order = s.order();
            match s.open_round(&connector, order.round()).await {
                Ok(opened) => {
                    tracing::info!(broker = s.settings.broker, node = %opened.0.node, generation = opened.0.generation, "reconnected");
                    break opened;
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "reconnect failed");
                    drop(s);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        };
    }
}

#[cfg(test)]
mod tests;
