//! Keeping the connection: the shared reconnect supervisor (`tidings-plumbing`) over the URL's
//! nodes, what this driver tells it (how to open an AMQP 1.0 connection and session on a node,
//! and how to keep it), and what the provider's links share.
//!
//! Links (senders and receivers) never own the connection: they take the current [`Live`]
//! session, attach to it, and report its generation broken when it fails them; the supervisor
//! then opens a new connection, on the next live node when its node is lost, and every link
//! re-attaches on its own (receivers re-declare their queues first), so subscriptions and the
//! RPC inbox come back without a central list to replay.

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::{Connection, Session};
use tidings_core::broker_url::Node;
use tidings_core::{async_trait, Error, ErrorKind, Result, Status};
use tidings_plumbing::{Connector, Current, Settings, Supervisor};
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dialect::Dialect;

/// How long opening a connection to one node may take before the next is tried.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The idle time-out we ask the broker to enforce (heartbeats at half of it).
const IDLE_TIMEOUT_MS: u32 = 20_000;
/// How long a graceful close (on shutdown) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The connection in use, as links see it: a [`Link`] session with its generation and node.
pub(crate) type Live = Current<Link>;

/// A failed connection attempt, naming the node's `host:port` and the redacted URL.
fn open_error(config: &Config, node: &Node, what: &str, e: &dyn std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Connection,
        format!(
            "cannot {what} the AMQP 1.0 broker at {} ({}): {e}",
            config.address(node),
            config.redacted
        ),
    )
}

/// A duplicate of `stream`'s socket (`dup`), which can shut the connection down for every
/// handle at once. `None` where the platform cannot duplicate it: abort then falls back to
/// a graceful close.
fn second_handle(stream: &tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        stream
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(std::net::TcpStream::from)
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsSocket;
        stream
            .as_socket()
            .try_clone_to_owned()
            .ok()
            .map(std::net::TcpStream::from)
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = stream;
        None
    }
}

/// A request for a session of a receiver's own, answered by the connection's owner.
type BeginRequest = oneshot::Sender<Result<SessionHandle<()>>>;

/// One open connection's session, shared by all sender links until it breaks.
#[derive(Debug)]
pub(crate) struct Link {
    /// The session; locked only while a link attaches.
    pub(crate) session: Mutex<SessionHandle<()>>,
    /// Asks the supervisor's task, which owns the connection, for a session of a receiver's
    /// own.
    begin: mpsc::Sender<BeginRequest>,
    /// Cancelled once the connection's owner let go of it (closed, dropped or cut).
    released: CancellationToken,
}

impl Link {
    /// A new session on this connection, for one receiver link.
    ///
    /// Receivers do not share the connection's session: ending its own session is how a
    /// receiver makes sure the broker takes back every delivery it sent the link, including
    /// those still on the wire. A broker may keep what a *detached* link held until the whole
    /// session ends (RabbitMQ 3.x's AMQP 1.0 plugin does: a session is a channel, and a detach
    /// only cancels the consumer), and the group's other members would never get it.
    pub(crate) async fn begin_session(&self) -> Result<SessionHandle<()>> {
        let (reply, session) = oneshot::channel();
        let lost = || Error::new(ErrorKind::Connection, "the AMQP 1.0 connection was lost");
        self.begin.send(reply).await.map_err(|_| lost())?;
        session.await.map_err(|_| lost())?
    }
}

/// What only the supervisor's task holds: the fe2o3 connection, which must be polled for its
/// end and closed by its owner, and the receivers' requests for sessions on it.
struct Owned {
    connection: ConnectionHandle<()>,
    begin_requests: mpsc::Receiver<BeginRequest>,
}

/// What the supervisor needs of this driver.
struct Opener {
    config: Config,
    dialect: Arc<dyn Dialect>,
    /// The current connection's socket, for [`Shared::abort`].
    cut: Arc<std::sync::Mutex<Cut>>,
}

/// The socket [`Shared::abort`] cuts, and whether it did.
#[derive(Debug, Default)]
struct Cut {
    aborted: bool,
    socket: Option<std::net::TcpStream>,
}

#[async_trait]
impl Connector for Opener {
    type Live = Link;
    type Owned = Owned;

    /// Opens the TCP connection (TLS on `amqp10s://`), the AMQP connection and one session.
    async fn open(&self, node: &Node) -> Result<(Link, Owned)> {
        let config = &self.config;
        let stream = tokio::net::TcpStream::connect(config.address(node))
            .await
            .map_err(|e| open_error(config, node, "reach", &e).with_source(e))?;
        let _ = stream.set_nodelay(true);
        {
            let mut cut = self.cut.lock().unwrap_or_else(|p| p.into_inner());
            if cut.aborted {
                let _ = stream
                    .into_std()
                    .map(|s| s.shutdown(std::net::Shutdown::Both));
                return Err(Error::new(ErrorKind::Closed, "the connection was aborted"));
            }
            cut.socket = second_handle(&stream);
        }
        let (connection, session) = match &config.tls {
            Some(tls) => {
                let stream = tls.connect(stream, node.host()).await.map_err(|e| {
                    let kind = e.kind();
                    let shown = open_error(config, node, "open a TLS connection to", &e);
                    Error::new(kind, shown.message().to_owned()).with_source(e)
                })?;
                self.open_on(node, stream).await?
            }
            None => self.open_on(node, stream).await?,
        };
        // Declarations go to this node's management API from now on.
        self.dialect.use_node(node);
        let (begin, begin_requests) = mpsc::channel(16);
        let link = Link {
            session: Mutex::new(session),
            begin,
            released: CancellationToken::new(),
        };
        Ok((
            link,
            Owned {
                connection,
                begin_requests,
            },
        ))
    }

    /// Keeps the connection: begins receivers' sessions on it, and returns once it closed,
    /// a link reported it broken, or the provider shut down (then closes it, unless aborted).
    async fn run(&self, current: Arc<Live>, owned: Owned, shutdown: CancellationToken) {
        let Owned {
            mut connection,
            mut begin_requests,
        } = owned;
        loop {
            tokio::select! {
                _ = current.lost().cancelled() => break,
                _ = connection.on_close() => break,
                Some(reply) = begin_requests.recv() => {
                    let session = Session::begin(&mut connection).await.map_err(|e| {
                        open_error(&self.config, &current.node, "begin a session on", &e).with_source(e)
                    });
                    let _ = reply.send(session);
                }
            }
        }
        let aborted = {
            let mut cut = self.cut.lock().unwrap_or_else(|p| p.into_inner());
            // fe2o3 owns the socket's lifetime; our duplicate must not keep it open.
            cut.socket = None;
            cut.aborted
        };
        // An abort cut the socket: nothing to close. A lost connection is just let go.
        if shutdown.is_cancelled() && !aborted {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close()).await;
        }
        drop(connection);
        current.released.cancel();
    }
}

impl Opener {
    /// Opens the AMQP connection and its session on `stream` (plain TCP or TLS).
    async fn open_on<Io>(
        &self,
        node: &Node,
        stream: Io,
    ) -> Result<(ConnectionHandle<()>, SessionHandle<()>)>
    where
        Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
    {
        let config = &self.config;
        let fail = |what: &str, e: &dyn std::fmt::Display| open_error(config, node, what, e);
        let hostname = self.dialect.open_hostname();
        let profile = match (&config.username, &config.password) {
            (Some(user), pass) => SaslProfile::Plain {
                username: user.clone(),
                password: pass.clone().unwrap_or_default(),
            },
            (None, _) => SaslProfile::Anonymous,
        };
        let container = format!("tidings-{}", tidings_core::envelope::new_id());
        let mut connection = Connection::builder()
            .container_id(container)
            .hostname(hostname.as_deref())
            .idle_time_out(IDLE_TIMEOUT_MS)
            .sasl_profile(profile)
            .open_with_stream(stream)
            .await
            .map_err(|e| fail("open a connection to", &e).with_source(e))?;
        let session = Session::begin(&mut connection)
            .await
            .map_err(|e| fail("begin a session on", &e).with_source(e))?;
        Ok((connection, session))
    }
}

/// What the supervisor and all links of one provider share.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) dialect: Arc<dyn Dialect>,
    supervisor: Arc<Supervisor<Opener>>,
    /// Cancelled when the provider closes or aborts: every task ends.
    pub(crate) shutdown: CancellationToken,
    /// A second handle on the current connection's TCP socket, so that [`abort`](Self::abort)
    /// can cut it under fe2o3, which only knows graceful ends (dropping its handles sends
    /// `end` and `close`).
    cut: Arc<std::sync::Mutex<Cut>>,
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
    /// Connects to one of the URL's nodes (so a bad URL or an unreachable broker fails
    /// `connect`), then keeps the connection alive in the supervisor's task.
    pub(crate) async fn start(config: Config, dialect: Box<dyn Dialect>) -> Result<Arc<Self>> {
        let dialect: Arc<dyn Dialect> = Arc::from(dialect);
        let cut = Arc::new(std::sync::Mutex::new(Cut::default()));
        let settings = Settings {
            broker: "the AMQP 1.0 broker",
            redacted: config.redacted.clone(),
            open_timeout: OPEN_TIMEOUT,
        };
        let opener = Opener {
            config: config.clone(),
            dialect: dialect.clone(),
            cut: cut.clone(),
        };
        let supervisor = Supervisor::start(opener, &config.nodes, settings).await?;
        Ok(Arc::new(Self {
            config,
            dialect,
            shutdown: supervisor.shutdown_token().clone(),
            supervisor,
            cut,
        }))
    }

    /// The status watch; `Connected` names the node.
    pub(crate) fn status(&self) -> watch::Receiver<Status> {
        self.supervisor.status()
    }

    /// The current session once there is one newer than generation `after`; `None` once
    /// shut down.
    pub(crate) async fn live_after(&self, after: u64) -> Option<Arc<Live>> {
        // No deadline: the only way out without a session is the shutdown.
        self.supervisor.current_after(after, None).await.ok()
    }

    /// Tells the supervisor the session of `generation` failed a link (a stale generation is
    /// ignored).
    pub(crate) fn report_broken(&self, generation: u64) {
        self.supervisor.report_broken(generation);
    }

    /// Ends the connection gracefully (links detach, the connection closes), waiting for the
    /// close at most a few seconds.
    pub(crate) async fn close(&self) {
        let current = self.supervisor.current();
        self.supervisor.shutdown();
        if let Some(current) = current {
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT + Duration::from_secs(1),
                current.released.cancelled(),
            )
            .await;
        }
    }

    /// Drops the connection like a crash: the socket is shut down under fe2o3 first, so no
    /// `detach`, `end`, `close` or settlement reaches the broker, which then redelivers every
    /// unsettled delivery; then every task ends.
    pub(crate) fn abort(&self) {
        {
            let mut cut = self.cut.lock().unwrap_or_else(|p| p.into_inner());
            cut.aborted = true;
            if let Some(socket) = cut.socket.take() {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
        }
        self.supervisor.shutdown();
    }
}
