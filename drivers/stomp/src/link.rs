//! The connection to the broker: one supervisor task that owns the socket's reading half,
//! reconnects with backoff, re-subscribes, and matches receipts to the frames that asked for them.
//!
//! Frames go out through one queue of bytes shared by every handle ([`Link`]) and the
//! supervisor. Whoever queues a frame also writes it when the socket takes it at once (the
//! usual case), so a SEND or an ACK costs no hop to another task and no thread wake-up, as in a
//! program that writes to its socket itself. Only what the socket does not take at once (it is
//! full, or a write failed) is left to the supervisor, and what is queued while the connection
//! is down is written on the next one. Frames leave in the order they were queued, and nothing
//! races a reconnect: queueing, and clearing the queue when a connection ends, happen under one
//! lock together with registering and failing receipts. Frames that only make sense on the
//! connection they were issued for (ACK/NACK, whose ids die with it) carry its generation and
//! are dropped on any other. The supervisor reads concurrently, so a slow write never stops
//! reading.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_stomp::client::Connector;
use async_stomp::{AckMode, FromServer, Message, ToServer};
use bytes::{Buf, BytesMut};
use futures::{SinkExt, StreamExt};
use tidings_core::{Error, ErrorKind, Result, Status};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::codec::{Encoder, FramedRead, FramedWrite};

use crate::config::Config;
use crate::frame::{Codec, Inbound, Outgoing, RawMessage};

/// Why a frame that asked for a receipt did not get one.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The connection dropped first (for the reason given); the frame may or may not have
    /// been processed.
    Lost(String),
    /// The broker answered with an ERROR frame about this very frame.
    Broker(String),
    /// The link is closed.
    Closed,
}

type ReceiptTx = oneshot::Sender<std::result::Result<(), Failure>>;

/// A raw MESSAGE for one subscription.
#[derive(Debug)]
pub(crate) struct Incoming {
    /// The connection it arrived on; its `ack` id is valid only there.
    pub(crate) generation: u64,
    /// The value to ACK/NACK it with (absent in `auto` mode).
    pub(crate) ack: Option<String>,
    pub(crate) message: RawMessage,
}

/// A subscription the link keeps alive across reconnects.
#[derive(Debug)]
pub(crate) struct SubEntry {
    pub(crate) destination: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) ack: AckMode,
    pub(crate) deliver: mpsc::UnboundedSender<Incoming>,
}

impl SubEntry {
    fn frame(&self, id: &str) -> Message<ToServer> {
        let mut message: Message<ToServer> = ToServer::Subscribe {
            destination: self.destination.clone(),
            id: id.to_owned(),
            ack: Some(self.ack),
        }
        .into();
        message.extra_headers = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        message
    }
}

/// The longest a consumer's ACK waits in the queue when the consumer stops asking for
/// deliveries (see [`Link::settle_on`]).
const HELD_AT_MOST: Duration = Duration::from_secs(1);

/// A connected broker session: the framed reading half, the writing half and negotiated
/// heart-beats.
struct Session {
    reader: FramedRead<Box<dyn AsyncRead + Send + Unpin>, Codec>,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    send_every: Option<Duration>,
    expect_every: Option<Duration>,
}

/// What the handles and the supervisor share.
struct Shared {
    out: Mutex<Out>,
    subs: Mutex<HashMap<String, SubEntry>>,
    receipts: Mutex<HashMap<String, Waiter>>,
    next_receipt: AtomicU64,
    /// Wakes the supervisor's writer: queued bytes the socket did not take at once.
    kick: Notify,
}

/// The way out. Locks nest in one order: `out`, then `subs`, then `receipts`.
struct Out {
    /// The writing half of the connection that is up.
    writer: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// The generation of that connection.
    gen: u64,
    /// Encoded frames not written yet, oldest first.
    queue: BytesMut,
    codec: Codec,
    /// The supervisor waits for the socket to take more. Only it writes meanwhile: the
    /// socket keeps one waker for writing, and a caller's write would replace it.
    blocked: bool,
    /// A write failed; the supervisor ends the session.
    failed: Option<String>,
    /// A caller will write the queue in a moment (see [`Link::request`]): others only queue.
    armed: bool,
    /// Something was written since the supervisor's last heart-beat check.
    wrote: bool,
    /// Subscriptions made while the connection was down, waiting for the next one to confirm
    /// them.
    pending_subs: HashMap<String, ReceiptTx>,
    /// The link is closed: nothing more is queued.
    closed: bool,
}

impl Out {
    /// Whether a caller may write: the connection is up and the supervisor is not at it.
    fn writable(&self) -> bool {
        self.writer.is_some() && !self.blocked && self.failed.is_none()
    }

    /// Writes what is queued until it is all written (and flushed) or the socket is full.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(writer) = self.writer.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while !self.queue.is_empty() {
            let n = match Pin::new(&mut *writer).poll_write(cx, &self.queue) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.queue.advance(n);
            self.wrote = true;
        }
        // A TLS stream may hold bytes back until flushed; a TCP stream never does.
        Pin::new(writer).poll_flush(cx)
    }

    /// Encodes `frame` at the end of the queue.
    fn queue(&mut self, frame: Outgoing) {
        if let Err(e) = self.codec.encode(frame, &mut self.queue) {
            tracing::warn!(error = %e, "a frame could not be encoded; not sent");
        }
    }
}

impl Shared {
    fn new_receipt(&self) -> String {
        format!("r{}", self.next_receipt.fetch_add(1, Ordering::Relaxed))
    }

    /// Registers who waits for receipt `id`.
    fn expect(&self, id: String, waiter: Waiter) {
        lock(&self.receipts).insert(id, waiter);
    }

    /// Queues `frame` and writes what the socket takes now, in the caller's task; the rest is
    /// left to the supervisor.
    fn push(&self, out: &mut Out, frame: Outgoing) {
        out.queue(frame);
        self.write_now(out);
    }

    /// Writes what the socket takes now, in the caller's task; the rest is left to the
    /// supervisor.
    fn write_now(&self, out: &mut Out) {
        if out.queue.is_empty() || !out.writable() {
            return;
        }
        // Nothing waits on this waker: when the socket is full the supervisor is woken, and
        // it polls the socket with its own.
        let mut cx = Context::from_waker(Waker::noop());
        match out.poll_write(&mut cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Pending => {
                out.blocked = true;
                self.kick.notify_one();
            }
            Poll::Ready(Err(e)) => {
                out.failed = Some(e.to_string());
                self.kick.notify_one();
            }
        }
    }

    /// Writes everything queued, waiting for the socket as long as it takes (the supervisor's
    /// writer only).
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), String>> {
        let mut out = lock(&self.out);
        if let Some(why) = out.failed.take() {
            return Poll::Ready(Err(why));
        }
        match out.poll_write(cx) {
            Poll::Ready(Ok(())) => {
                out.blocked = false;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                out.blocked = true;
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.to_string())),
        }
    }

    async fn flush(&self) -> std::result::Result<(), String> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Forgets the connection that ended: what it did not write is dropped, and every receipt
    /// still awaited fails with `fail` (a SEND is then re-sent by its caller).
    fn end_session(&self, fail: &Failure) {
        let mut out = lock(&self.out);
        out.writer = None;
        out.blocked = false;
        out.failed = None;
        out.armed = false;
        out.queue.clear();
        for (_, waiter) in lock(&self.receipts).drain() {
            if let Some(tx) = waiter.tx {
                let _ = tx.send(Err(fail.clone()));
            }
        }
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

/// The handle every part of the driver uses to reach the broker. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Link {
    shared: Arc<Shared>,
    /// Asks the supervisor to close; closed when every handle is gone.
    closing: mpsc::UnboundedSender<oneshot::Sender<()>>,
    status: watch::Receiver<Status>,
    stop: Arc<watch::Sender<bool>>,
    /// What the link connects with (another link to the same broker is opened with it).
    config: Arc<Config>,
    /// Whether [`Link::request`] re-sends a frame whose connection dropped before its receipt.
    resend_lost: bool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

/// Settings of the supervisor that do not change.
struct Settings {
    config: Config,
    /// NACK messages that arrive for a subscription that is gone (RabbitMQ keeps them
    /// unacked until the connection closes otherwise; ActiveMQ takes them back itself).
    nack_orphans: bool,
}

/// Opens the first connection (its failure is the caller's error) and returns it with the
/// broker's `server` header.
pub(crate) async fn open(config: &Config) -> Result<(Option<String>, PendingLink)> {
    let (session, server) = handshake(config).await?;
    Ok((server, PendingLink { session }))
}

/// A first session, waiting for the driver to know its dialect before the link starts.
pub(crate) struct PendingLink {
    session: Session,
}

impl std::fmt::Debug for PendingLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLink").finish_non_exhaustive()
    }
}

impl PendingLink {
    /// Starts the supervisor.
    pub(crate) fn start(self, config: Config, nack_orphans: bool) -> Link {
        let (closing, rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(Status::Connected {
            node: config.address(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let settings = Settings {
            config,
            nack_orphans,
        };
        let shared = Arc::new(Shared {
            out: Mutex::new(Out {
                writer: None,
                gen: 0,
                queue: BytesMut::with_capacity(8 * 1024),
                codec: Codec::default(),
                blocked: false,
                failed: None,
                armed: false,
                wrote: false,
                pending_subs: HashMap::new(),
                closed: false,
            }),
            subs: Mutex::new(HashMap::new()),
            receipts: Mutex::new(HashMap::new()),
            next_receipt: AtomicU64::new(0),
            kick: Notify::new(),
        });
        let config = Arc::new(settings.config.clone());
        tokio::spawn(supervise(
            settings,
            shared.clone(),
            self.session,
            rx,
            status_tx,
            stop_rx,
        ));
        Link {
            shared,
            closing,
            status,
            stop: Arc::new(stop),
            config,
            resend_lost: true,
        }
    }
}

impl Link {
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
    /// the connection meanwhile takes it along, and so does the supervisor's periodic check.
    pub(crate) fn settle_on(&self, generation: u64, frame: Outgoing, held: &AtomicBool) {
        let mut out = lock(&self.shared.out);
        if out.writer.is_some() && out.gen == generation {
            // Read under the lock, so a concurrent release cannot miss this frame.
            if held.load(Ordering::Acquire) {
                out.queue(frame);
            } else {
                self.shared.push(&mut out, frame);
            }
        }
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
    /// them all. Neither the caller nor the supervisor is woken for it.
    async fn send_confirmed(&self, mut frame: Outgoing, tx: ReceiptTx) -> bool {
        let flush = {
            let shared = &*self.shared;
            let mut out = lock(&shared.out);
            if out.closed {
                return false;
            }
            let id = shared.new_receipt();
            frame.set_receipt(id.clone());
            shared.expect(
                id,
                Waiter {
                    tx: Some(tx),
                    subscription: None,
                },
            );
            out.queue(frame);
            if out.armed || !out.writable() {
                // Someone writes it: the caller that armed, or the supervisor.
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

    /// Writes a frame built by `make` and waits for the broker's receipt, re-sending after a
    /// reconnect when the connection dropped first, until `timeout`. At-least-once: a frame
    /// whose receipt was lost may be processed twice. `what` names the frame in errors. A link
    /// made [`without_resend`](Link::without_resend) fails instead of re-sending.
    pub(crate) async fn request(
        &self,
        what: impl Fn() -> String,
        timeout: Duration,
        make: impl Fn() -> Outgoing,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (tx, rx) = oneshot::channel();
            if !self.send_confirmed(make(), tx).await {
                return Err(closed());
            }
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(()))) => return Ok(()),
                Ok(Ok(Err(Failure::Lost(_)))) if self.resend_lost => {
                    self.wait_connected(deadline).await;
                    continue;
                }
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
                            "no receipt for {} within {timeout:?}; the broker is unreachable or \
                             overloaded (raise publish_timeout_ms in the url to wait longer)",
                            what()
                        ),
                    ))
                }
            }
        }
    }

    /// Waits until the link is connected again (or the deadline passes).
    pub(crate) async fn wait_connected(&self, deadline: tokio::time::Instant) {
        let mut status = self.status.clone();
        let _ = tokio::time::timeout_at(
            deadline,
            status.wait_for(|s| matches!(s, Status::Connected { .. } | Status::Closed)),
        )
        .await;
    }

    /// Subscribes and waits for the broker to confirm. The subscription is then re-made on
    /// every reconnect until [`Link::unsubscribe`].
    pub(crate) async fn subscribe(
        &self,
        id: String,
        entry: SubEntry,
        timeout: Duration,
    ) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let destination = entry.destination.clone();
        {
            let shared = &*self.shared;
            let mut out = lock(&shared.out);
            if out.closed {
                return Err(closed());
            }
            if out.writer.is_some() {
                let mut frame = entry.frame(&id);
                let receipt = shared.new_receipt();
                frame
                    .extra_headers
                    .push((b"receipt".to_vec(), receipt.clone().into_bytes()));
                lock(&shared.subs).insert(id.clone(), entry);
                shared.expect(
                    receipt,
                    Waiter {
                        tx: Some(tx),
                        subscription: Some(id),
                    },
                );
                shared.push(&mut out, Outgoing::Stomp(frame));
            } else {
                // The next connection subscribes it, and answers.
                out.pending_subs.insert(id.clone(), tx);
                lock(&shared.subs).insert(id, entry);
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            // Recorded before the connection dropped: the reconnect re-subscribes it.
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
        out.pending_subs.remove(id);
        if out.writer.is_some() {
            let frame: Message<ToServer> = ToServer::Unsubscribe { id: id.to_owned() }.into();
            shared.push(&mut out, Outgoing::Stomp(frame));
        }
    }

    /// The status watch.
    pub(crate) fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Writes what is queued, disconnects cleanly, stops.
    pub(crate) async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.closing.send(done).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
        }
        self.abort();
    }

    /// Drops the connection at once, as a crash would.
    pub(crate) fn abort(&self) {
        self.stop.send_replace(true);
    }
}

fn closed() -> Error {
    Error::new(ErrorKind::Closed, "this stomp:// connection is closed")
}

fn connection_error(config: &Config, what: &str) -> Error {
    Error::new(
        ErrorKind::Connection,
        format!(
            "cannot connect to the STOMP broker at {}: {what}; check that it runs and that the \
             url's host, port, login and password are right",
            config.address()
        ),
    )
}

/// Connects, sends CONNECT, reads CONNECTED. Returns the session and the `server` header.
async fn handshake(config: &Config) -> Result<(Session, Option<String>)> {
    // A bad CA file is the url's fault, whatever the network does.
    let tls = config
        .tls
        .then(|| crate::tls::client_config(config))
        .transpose()?;
    let work = async {
        let tcp = TcpStream::connect(config.address())
            .await
            .map_err(|e| connection_error(config, &e.to_string()).with_source(e))?;
        let _ = tcp.set_nodelay(true);
        let (read, write): (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
        ) = if let Some(client) = tls.clone() {
            let stream = crate::tls::wrap(tcp, config, client)
                .await
                .map_err(|why| connection_error(config, &why))?;
            let (read, write) = tokio::io::split(stream);
            (Box::new(read), Box::new(write))
        } else {
            let (read, write) = tcp.into_split();
            (Box::new(read), Box::new(write))
        };
        let mut reader = FramedRead::new(read, Codec::default());
        let mut writer = FramedWrite::new(write, Codec::default());
        let beat = u32::try_from(config.heartbeat.as_millis()).unwrap_or(u32::MAX);
        let mut connector = Connector::builder()
            .server(config.address())
            .virtualhost(config.vhost.clone())
            .heartbeat(beat, beat);
        if let Some(login) = &config.login {
            connector = connector.login(login.clone());
        }
        if let Some(passcode) = &config.passcode {
            connector = connector.passcode(passcode.clone());
        }
        writer
            .send(Outgoing::Stomp(connector.msg()))
            .await
            .map_err(|e| connection_error(config, &format!("sending CONNECT failed: {e}")))?;
        let reply = loop {
            let reply = reader
                .next()
                .await
                .ok_or_else(|| connection_error(config, "the broker closed the connection"))?
                .map_err(|e| connection_error(config, &format!("unreadable reply: {e}")))?;
            match reply {
                Inbound::Other(reply) => break reply,
                Inbound::Heartbeat => continue,
                Inbound::Message(_) | Inbound::Receipt(_) => {
                    return Err(connection_error(
                        config,
                        "expected CONNECTED, got a MESSAGE or RECEIPT",
                    ))
                }
            }
        };
        match reply.content {
            FromServer::Connected {
                version,
                server,
                heartbeat,
                ..
            } => {
                if version != "1.2" {
                    return Err(connection_error(
                        config,
                        &format!("the broker speaks STOMP {version}, the driver needs 1.2"),
                    ));
                }
                let (sx, sy) = heartbeat
                    .as_deref()
                    .and_then(|h| h.split_once(','))
                    .map(|(x, y)| (x.trim().parse().unwrap_or(0), y.trim().parse().unwrap_or(0)))
                    .unwrap_or((0u64, 0u64));
                let ours = u64::from(beat);
                let agree =
                    |a: u64, b: u64| (a != 0 && b != 0).then(|| Duration::from_millis(a.max(b)));
                Ok((
                    Session {
                        reader,
                        writer: writer.into_inner(),
                        send_every: agree(ours, sy),
                        expect_every: agree(sx, ours),
                    },
                    server,
                ))
            }
            FromServer::Error { message, body } => Err(connection_error(
                config,
                &format!(
                    "the broker refused the login: {} {}",
                    message.unwrap_or_default(),
                    String::from_utf8_lossy(&body.unwrap_or_default())
                ),
            )),
            other => Err(connection_error(
                config,
                &format!("expected CONNECTED, got {other:?}"),
            )),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| connection_error(config, "no CONNECTED frame within 10s"))?
}

/// How one session ended.
enum Ended {
    Lost(String),
    Closed,
    Aborted,
}

/// A receipt being waited for, and the subscription it confirms, if any.
struct Waiter {
    tx: Option<ReceiptTx>,
    subscription: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn supervise(
    settings: Settings,
    shared: Arc<Shared>,
    first: Session,
    mut closing: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    status: watch::Sender<Status>,
    mut stop: watch::Receiver<bool>,
) {
    let mut session = Some(first);
    let mut backoff = Duration::from_millis(50);
    let mut gen = 0;
    loop {
        let current = match session.take() {
            Some(s) => s,
            None => {
                let attempt = tokio::select! {
                    r = handshake(&settings.config) => r,
                    _ = stop.wait_for(|s| *s) => break,
                };
                match attempt {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "stomp reconnect failed");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.wait_for(|s| *s) => break,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
        };
        backoff = Duration::from_millis(50);
        gen += 1;
        let ended = run_session(
            &settings,
            &shared,
            current,
            gen,
            &mut closing,
            &status,
            &mut stop,
        )
        .await;
        // Anything sent on that connection and not confirmed may be lost.
        shared.end_session(&match &ended {
            Ended::Lost(why) => Failure::Lost(why.clone()),
            Ended::Closed | Ended::Aborted => Failure::Closed,
        });
        match ended {
            Ended::Lost(why) => {
                tracing::warn!(reason = %why, "stomp connection lost; reconnecting");

                status.send_replace(Status::Reconnecting);
            }
            Ended::Closed | Ended::Aborted => break,
        }
    }
    status.send_replace(Status::Closed);
    {
        let mut out = lock(&shared.out);
        out.closed = true;
        out.writer = None;
        out.queue.clear();
        for (_, tx) in out.pending_subs.drain() {
            let _ = tx.send(Err(Failure::Closed));
        }
        // Dropping the delivery senders ends every consumer.
        lock(&shared.subs).clear();
        for (_, waiter) in lock(&shared.receipts).drain() {
            if let Some(tx) = waiter.tx {
                let _ = tx.send(Err(Failure::Closed));
            }
        }
    }
    closing.close();
    while let Ok(done) = closing.try_recv() {
        let _ = done.send(());
    }
}

async fn run_session(
    settings: &Settings,
    shared: &Shared,
    session: Session,
    gen: u64,
    closing: &mut mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    status: &watch::Sender<Status>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let Session {
        mut reader,
        writer,
        send_every,
        expect_every,
    } = session;

    // Re-subscribe everything that lived on the previous connection (or was subscribed while
    // it was down), ahead of what was queued meanwhile.
    {
        let mut out = lock(&shared.out);
        let queued = std::mem::take(&mut out.queue);
        let mut frames = Vec::new();
        for (id, entry) in lock(&shared.subs).iter() {
            let mut frame = entry.frame(id);
            let receipt = shared.new_receipt();
            frame
                .extra_headers
                .push((b"receipt".to_vec(), receipt.clone().into_bytes()));
            let waiter = Waiter {
                tx: out.pending_subs.remove(id),
                subscription: Some(id.clone()),
            };
            frames.push((frame, receipt, waiter));
        }
        for (frame, receipt, waiter) in frames {
            shared.expect(receipt, waiter);
            out.queue(Outgoing::Stomp(frame));
        }
        out.queue.extend_from_slice(&queued);
        out.writer = Some(writer);
        out.gen = gen;
        // Written by the supervisor, below, before any caller writes.
        out.blocked = true;
    }
    if let Err(e) = shared.flush().await {
        return Ended::Lost(format!("re-subscribing failed: {e}"));
    }
    status.send_replace(Status::Connected {
        node: settings.config.address(),
    });
    let (orphans_tx, mut orphans) = mpsc::unbounded_channel::<String>();
    let disconnecting = AtomicBool::new(false);

    // Three times the agreed interval of silence before calling the broker dead: ActiveMQ
    // sends its first heart-beat only after twice the interval, so a deadline of twice raced
    // it and a busy broker lost the race.
    let silence_deadline = expect_every.map(|every| every * 3);
    let reading = async {
        loop {
            let next = match silence_deadline {
                Some(deadline) => match tokio::time::timeout(deadline, reader.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        return Ended::Lost(format!(
                            "no heart-beat from the broker for {deadline:?}"
                        ))
                    }
                },
                None => reader.next().await,
            };
            let message = match next {
                // After DISCONNECT the broker closes the connection: that is the end asked for,
                // not a loss to reconnect after.
                None | Some(Err(_)) if disconnecting.load(Ordering::Acquire) => {
                    return Ended::Closed
                }
                None => return Ended::Lost("the broker closed the connection".into()),
                Some(Err(e)) => return Ended::Lost(format!("unreadable frame: {e}")),
                Some(Ok(Inbound::Message(message))) => {
                    let (subscription, ack) = message.subscription_and_ack();
                    let subscription = subscription.unwrap_or_default();
                    let orphan = {
                        let subs = lock(&shared.subs);
                        match subs.get(&subscription) {
                            Some(entry) => {
                                let _ = entry.deliver.send(Incoming {
                                    generation: gen,
                                    ack,
                                    message,
                                });
                                None
                            }
                            None => ack,
                        }
                    };
                    if let Some(id) = orphan.filter(|_| settings.nack_orphans) {
                        let _ = orphans_tx.send(id);
                    }
                    continue;
                }
                Some(Ok(Inbound::Receipt(id))) => {
                    let waiter = std::str::from_utf8(&id)
                        .ok()
                        .and_then(|id| lock(&shared.receipts).remove(id));
                    if let Some(tx) = waiter.and_then(|w| w.tx) {
                        let _ = tx.send(Ok(()));
                    }
                    continue;
                }
                // Only a sign of life (it restarts the deadline above).
                Some(Ok(Inbound::Heartbeat)) => continue,
                Some(Ok(Inbound::Other(m))) => m,
            };
            match message.content {
                // Never: the codec splits MESSAGE frames itself (above).
                FromServer::Message { .. } => {}
                // Not expected either (the codec splits RECEIPT frames too), but harmless.
                FromServer::Receipt { receipt_id } => {
                    let waiter = lock(&shared.receipts).remove(&receipt_id);
                    if let Some(tx) = waiter.and_then(|w| w.tx) {
                        let _ = tx.send(Ok(()));
                    }
                }
                FromServer::Error {
                    message: text,
                    body,
                } => {
                    let text = format!(
                        "{} {}",
                        text.unwrap_or_default(),
                        String::from_utf8_lossy(&body.unwrap_or_default()).trim()
                    );
                    let about = message
                        .extra_headers
                        .iter()
                        .find(|(k, _)| k == b"receipt-id")
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
                    let waiter = about.and_then(|r| lock(&shared.receipts).remove(&r));
                    if let Some(waiter) = waiter {
                        if let Some(id) = waiter.subscription {
                            // Never re-subscribe what the broker refused.
                            lock(&shared.subs).remove(&id);
                        }
                        if let Some(tx) = waiter.tx {
                            let _ = tx.send(Err(Failure::Broker(text.clone())));
                        }
                    }
                    return Ended::Lost(format!("the broker sent ERROR: {text}"));
                }
                FromServer::Connected { .. } => {}
            }
        }
    };
    let writing = async {
        // Every tick writes what a consumer holds back (see `Link::settle_on`), and a
        // heart-beat when nothing was written for half the agreed interval: the broker hears
        // from us at least every three quarters of it, with room for a late timer.
        let tick = send_every.map_or(HELD_AT_MOST, |every| (every / 4).min(HELD_AT_MOST));
        let mut quiet = Duration::ZERO;
        loop {
            tokio::select! {
                done = closing.recv() => {
                    // Every handle gone (`None`): nobody can use this connection any more.
                    let Some(done) = done else { return Ended::Closed };
                    // DISCONNECT with a receipt, after everything queued: once it comes back,
                    // everything before it was processed by the broker.
                    let (tx, rx) = oneshot::channel();
                    {
                        let mut out = lock(&shared.out);
                        shared.expect(
                            "bye".into(),
                            Waiter {
                                tx: Some(tx),
                                subscription: None,
                            },
                        );
                        let bye: Message<ToServer> = ToServer::Disconnect {
                            receipt: Some("bye".into()),
                        }
                        .into();
                        out.queue(Outgoing::Stomp(bye));
                    }
                    disconnecting.store(true, Ordering::Release);
                    if shared.flush().await.is_ok() {
                        let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
                    }
                    let _ = done.send(());
                    return Ended::Closed;
                }
                Some(id) = orphans.recv() => {
                    let mut out = lock(&shared.out);
                    out.queue(Outgoing::Raw(crate::frame::settle("NACK", &id), None));
                }
                () = shared.kick.notified() => {}
                () = tokio::time::sleep(tick) => {
                    let mut out = lock(&shared.out);
                    quiet = if std::mem::take(&mut out.wrote) {
                        Duration::ZERO
                    } else {
                        quiet + tick
                    };
                    let due = send_every.is_some_and(|every| quiet >= every / 2);
                    if due && out.queue.is_empty() {
                        out.queue(Outgoing::Heartbeat);
                        quiet = Duration::ZERO;
                    }
                }
            }
            if let Err(e) = shared.flush().await {
                return Ended::Lost(format!("writing to the broker failed: {e}"));
            }
        }
    };
    tokio::select! {
        ended = reading => ended,
        ended = writing => ended,
        _ = stop.wait_for(|s| *s) => Ended::Aborted,
    }
}
