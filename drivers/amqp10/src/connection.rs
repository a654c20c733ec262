//! The connection supervisor: opens the AMQP connection and its session, watches it, and
//! reconnects with backoff when it is lost. Links (senders and receivers) never own the
//! connection: they wait for the current [`Live`] session, attach to it, and report it broken
//! when it fails them; the supervisor then opens a new one and every link re-attaches.

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::{Connection, Session};
use tidings_core::{Error, ErrorKind, Result, Status};
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dialect::Dialect;

/// How long opening a connection may take before it counts as failed.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The idle time-out we ask the broker to enforce (heartbeats at half of it).
const IDLE_TIMEOUT_MS: u32 = 20_000;

/// A failed connection attempt, naming the broker's `host:port` and the redacted URL.
fn open_error(config: &Config, what: &str, e: &dyn std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Connection,
        format!(
            "cannot {what} the AMQP 1.0 broker at {} ({}): {e}",
            config.address(),
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

/// One open connection's session, shared by all links until it breaks.
#[derive(Debug)]
pub(crate) struct Live {
    /// Counts connections: links compare it to tell a new session from the one that failed.
    pub(crate) generation: u64,
    /// The session; locked only while a link attaches.
    pub(crate) session: Mutex<SessionHandle<()>>,
    /// Cancelled once this session is no longer the current one (lost, replaced or shut
    /// down). Links wait on it beside their own operations, because a dead session does not
    /// always fail what is pending on it; one token is cheaper than a watch per operation.
    pub(crate) lost: CancellationToken,
    /// Asks the supervisor, which owns the connection, for a session of a receiver's own.
    begin: mpsc::Sender<oneshot::Sender<Result<SessionHandle<()>>>>,
}

impl Live {
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

/// What the supervisor and all links of one provider share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) dialect: Box<dyn Dialect>,
    live: watch::Sender<Option<Arc<Live>>>,
    pub(crate) status: watch::Sender<Status>,
    broken: mpsc::UnboundedSender<u64>,
    /// Cancelled when the provider closes or aborts: every task ends.
    pub(crate) shutdown: CancellationToken,
    /// A second handle on the current connection's TCP socket, so that [`abort`](Self::abort)
    /// can cut it under fe2o3, which only knows graceful ends (dropping its handles sends
    /// `end` and `close`).
    cut: std::sync::Mutex<Cut>,
}

/// The socket [`Shared::abort`] cuts, and whether it did.
#[derive(Debug, Default)]
struct Cut {
    aborted: bool,
    socket: Option<std::net::TcpStream>,
}

impl Shared {
    /// Connects once (so a bad URL or an unreachable broker fails `connect`), then keeps the
    /// connection alive in a background task.
    pub(crate) async fn start(config: Config, dialect: Box<dyn Dialect>) -> Result<Arc<Self>> {
        let (broken, broken_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Self {
            config,
            dialect,
            live: watch::Sender::new(None),
            status: watch::Sender::new(Status::Reconnecting),
            broken,
            shutdown: CancellationToken::new(),
            cut: std::sync::Mutex::new(Cut::default()),
        });
        let first = shared.open().await?;
        tokio::spawn(shared.clone().supervise(first, broken_rx));
        Ok(shared)
    }

    /// Opens the TCP connection, the AMQP connection and one session.
    async fn open(&self) -> Result<(ConnectionHandle<()>, SessionHandle<()>)> {
        let config = &self.config;
        let fail = |what: &str, e: &dyn std::fmt::Display| open_error(config, what, e);
        let opening = async {
            let stream = tokio::net::TcpStream::connect(config.address())
                .await
                .map_err(|e| fail("reach", &e).with_source(e))?;
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
            if config.tls {
                let stream = crate::tls::handshake(stream, config).await?;
                self.open_on(stream).await
            } else {
                self.open_on(stream).await
            }
        };
        match tokio::time::timeout(OPEN_TIMEOUT, opening).await {
            Ok(result) => result,
            Err(_) => Err(fail("open within 10 s a connection to", &"timed out")),
        }
    }

    /// Opens the AMQP connection and its session on `stream` (plain TCP or TLS).
    async fn open_on<Io>(&self, stream: Io) -> Result<(ConnectionHandle<()>, SessionHandle<()>)>
    where
        Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
    {
        let config = &self.config;
        let fail = |what: &str, e: &dyn std::fmt::Display| open_error(config, what, e);
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

    async fn supervise(
        self: Arc<Self>,
        first: (ConnectionHandle<()>, SessionHandle<()>),
        mut broken: mpsc::UnboundedReceiver<u64>,
    ) {
        let mut next = Some(first);
        let mut generation = 0u64;
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.shutdown.is_cancelled() || self.aborted() {
                break;
            }
            let (mut connection, session) = match next.take() {
                Some(open) => open,
                None => match self.open().await {
                    Ok(open) => {
                        backoff = Duration::from_millis(100);
                        open
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "AMQP 1.0 reconnect failed; retrying in {backoff:?}");
                        tokio::select! {
                            _ = self.shutdown.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            generation += 1;
            let (begin, mut begin_requests) = mpsc::channel(16);
            let live = Arc::new(Live {
                generation,
                session: Mutex::new(session),
                lost: self.shutdown.child_token(),
                begin,
            });
            self.live.send_replace(Some(live.clone()));
            self.status.send_replace(Status::Connected {
                node: self.config.address(),
            });
            let lost = loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => break false,
                    _ = connection.on_close() => break true,
                    g = broken.recv() => if g.is_none_or(|g| g == generation) { break true },
                    Some(reply) = begin_requests.recv() => {
                        let session = Session::begin(&mut connection).await.map_err(|e| {
                            open_error(&self.config, "begin a session on", &e).with_source(e)
                        });
                        let _ = reply.send(session);
                    }
                }
            };
            self.live.send_replace(None);
            live.lost.cancel();
            let aborted = {
                let mut cut = self.cut.lock().unwrap_or_else(|p| p.into_inner());
                // fe2o3 owns the socket's lifetime; our duplicate must not keep it open.
                cut.socket = None;
                cut.aborted
            };
            if aborted || !lost {
                // An abort cut the socket: nothing to close (and no reconnect).
                if !aborted {
                    let _ = tokio::time::timeout(Duration::from_secs(2), connection.close()).await;
                }
                break;
            }
            tracing::warn!(url = %self.config.redacted, "AMQP 1.0 connection lost; reconnecting");
            self.status.send_replace(Status::Reconnecting);
            drop(connection);
        }
        self.live.send_replace(None);
        self.status.send_replace(Status::Closed);
    }

    /// The current session once there is one newer than `after`; `None` once shut down.
    pub(crate) async fn wait_live(&self, after: u64) -> Option<Arc<Live>> {
        let mut rx = self.live.subscribe();
        loop {
            if self.shutdown.is_cancelled() {
                return None;
            }
            if let Some(live) = rx.borrow_and_update().as_ref() {
                if live.generation > after {
                    return Some(live.clone());
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                changed = rx.changed() => if changed.is_err() { return None },
            }
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
        self.shutdown.cancel();
    }

    /// Whether [`abort`](Self::abort) was called: set before the socket is cut, so a loss
    /// that the cut causes is never taken for a reason to reconnect.
    fn aborted(&self) -> bool {
        self.cut.lock().unwrap_or_else(|p| p.into_inner()).aborted
    }

    /// Tells the supervisor the session of `generation` failed a link.
    pub(crate) fn report_broken(&self, generation: u64) {
        let _ = self.broken.send(generation);
    }
}
