//! The connection to the broker: one supervisor task that owns the socket, reconnects with
//! backoff, re-subscribes, and matches receipts to the frames that asked for them.
//!
//! Everything that touches the broker goes through [`Link::send`] as a [`Command`], so frames
//! leave in the order they were issued and nothing races a reconnect: a command queued while
//! the connection is down is written on the next one. Frames that only make sense on the
//! connection they were issued for (ACK/NACK, whose ids die with it) carry its generation and
//! are dropped on any other. The supervisor runs a reader and a writer concurrently so a slow
//! write never stops reading.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_stomp::client::Connector;
use async_stomp::{AckMode, FromServer, Message, ToServer};
use futures::{SinkExt, StreamExt};
use tidings_core::{Error, ErrorKind, Result, Status};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::config::Config;
use crate::frame::{Codec, Inbound, Outgoing, RawMessage};

/// Why a frame that asked for a receipt did not get one.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The connection dropped first; the frame may or may not have been processed.
    Lost,
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

/// What the supervisor is asked to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// Write a frame; with `receipt`, ask the broker to confirm it. With `generation`, only on
    /// that connection.
    Frame {
        message: Outgoing,
        receipt: Option<ReceiptTx>,
        generation: Option<u64>,
    },
    /// Start (and keep re-starting after reconnects) a subscription.
    Subscribe {
        id: String,
        entry: SubEntry,
        receipt: ReceiptTx,
    },
    /// Stop a subscription.
    Unsubscribe {
        id: String,
        receipt: Option<ReceiptTx>,
    },
    /// Flush, DISCONNECT, stop.
    Close { done: oneshot::Sender<()> },
}

/// A connected broker session: framed halves and negotiated heart-beats.
struct Session {
    reader: FramedRead<Box<dyn AsyncRead + Send + Unpin>, Codec>,
    writer: FramedWrite<Box<dyn AsyncWrite + Send + Unpin>, Codec>,
    send_every: Option<Duration>,
    expect_every: Option<Duration>,
}

/// The handle every part of the driver uses to reach the broker. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Status>,
    stop: Arc<watch::Sender<bool>>,
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
        let (commands, rx) = mpsc::unbounded_channel();
        let generation = Arc::new(AtomicU64::new(0));
        let (status_tx, status) = watch::channel(Status::Connected);
        let (stop, stop_rx) = watch::channel(false);
        let settings = Settings {
            config,
            nack_orphans,
        };
        tokio::spawn(supervise(
            settings,
            self.session,
            rx,
            generation,
            status_tx,
            stop_rx,
        ));
        Link {
            commands,
            status,
            stop: Arc::new(stop),
        }
    }
}

impl Link {
    /// Queues a command; false once the link is closed.
    pub(crate) fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }

    /// Writes `message` on the current connection only (ACK, NACK).
    pub(crate) fn send_on(&self, generation: u64, message: Outgoing) {
        let _ = self.send(Command::Frame {
            message,
            receipt: None,
            generation: Some(generation),
        });
    }

    /// Writes a frame built by `make` and waits for the broker's receipt, re-sending after a
    /// reconnect when the connection dropped first, until `timeout`. At-least-once: a frame
    /// whose receipt was lost may be processed twice. `what` names the frame in errors.
    pub(crate) async fn request(
        &self,
        what: impl Fn() -> String,
        timeout: Duration,
        make: impl Fn() -> Outgoing,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (tx, rx) = oneshot::channel();
            if !self.send(Command::Frame {
                message: make(),
                receipt: Some(tx),
                generation: None,
            }) {
                return Err(closed());
            }
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(()))) => return Ok(()),
                Ok(Ok(Err(Failure::Lost))) => {
                    self.wait_connected(deadline).await;
                    continue;
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
            status.wait_for(|s| matches!(s, Status::Connected | Status::Closed)),
        )
        .await;
    }

    /// Subscribes and waits for the broker to confirm. The subscription is then re-made on
    /// every reconnect until [`Command::Unsubscribe`].
    pub(crate) async fn subscribe(
        &self,
        id: String,
        entry: SubEntry,
        timeout: Duration,
    ) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let destination = entry.destination.clone();
        if !self.send(Command::Subscribe {
            id,
            entry,
            receipt: tx,
        }) {
            return Err(closed());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            // Recorded before the connection dropped: the reconnect re-subscribes it.
            Ok(Ok(Err(Failure::Lost))) => Ok(()),
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

    /// The status watch.
    pub(crate) fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Writes what is queued, disconnects cleanly, stops.
    pub(crate) async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.send(Command::Close { done }) {
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
        let reply = reader
            .next()
            .await
            .ok_or_else(|| connection_error(config, "the broker closed the connection"))?
            .map_err(|e| connection_error(config, &format!("unreadable reply: {e}")))?;
        let reply = match reply {
            Inbound::Other(reply) => reply,
            Inbound::Message(_) => {
                return Err(connection_error(
                    config,
                    "expected CONNECTED, got a MESSAGE",
                ))
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
                        writer,
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

type Subs = Mutex<HashMap<String, SubEntry>>;
type Receipts = Mutex<HashMap<String, Waiter>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn supervise(
    settings: Settings,
    first: Session,
    mut commands: mpsc::UnboundedReceiver<Command>,
    generation: Arc<AtomicU64>,
    status: watch::Sender<Status>,
    mut stop: watch::Receiver<bool>,
) {
    let subs: Subs = Mutex::new(HashMap::new());
    let receipts: Receipts = Mutex::new(HashMap::new());
    let next_receipt = AtomicU64::new(0);
    let mut session = Some(first);
    let mut backoff = Duration::from_millis(50);
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
        let gen = generation.fetch_add(1, Ordering::AcqRel) + 1;
        let ended = run_session(
            &settings,
            current,
            gen,
            &mut commands,
            &subs,
            &receipts,
            &next_receipt,
            &status,
            &mut stop,
        )
        .await;
        // Anything sent on that connection and not confirmed may be lost.
        generation.fetch_add(1, Ordering::AcqRel);
        let fail = match ended {
            Ended::Lost(_) => Failure::Lost,
            Ended::Closed | Ended::Aborted => Failure::Closed,
        };
        for (_, waiter) in lock(&receipts).drain() {
            if let Some(tx) = waiter.tx {
                let _ = tx.send(Err(fail.clone()));
            }
        }
        match ended {
            Ended::Lost(why) => {
                tracing::warn!(reason = %why, "stomp connection lost; reconnecting");
                status.send_replace(Status::Reconnecting);
            }
            Ended::Closed | Ended::Aborted => break,
        }
    }
    status.send_replace(Status::Closed);
    // Dropping the delivery senders ends every consumer.
    lock(&subs).clear();
    commands.close();
    while let Ok(command) = commands.try_recv() {
        match command {
            Command::Frame {
                receipt: Some(tx), ..
            }
            | Command::Subscribe { receipt: tx, .. }
            | Command::Unsubscribe {
                receipt: Some(tx), ..
            } => {
                let _ = tx.send(Err(Failure::Closed));
            }
            Command::Close { done } => {
                let _ = done.send(());
            }
            _ => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_session(
    settings: &Settings,
    session: Session,
    gen: u64,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    subs: &Subs,
    receipts: &Receipts,
    next_receipt: &AtomicU64,
    status: &watch::Sender<Status>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let Session {
        mut reader,
        mut writer,
        send_every,
        expect_every,
    } = session;
    let new_receipt = || format!("r{}", next_receipt.fetch_add(1, Ordering::Relaxed));
    // Asks for a RECEIPT on a control frame and registers who waits for it.
    let request_receipt = |frame: &mut Message<ToServer>, waiter: Waiter| {
        let id = new_receipt();
        frame
            .extra_headers
            .push((b"receipt".to_vec(), id.clone().into_bytes()));
        lock(receipts).insert(id, waiter);
    };

    // Re-subscribe everything that lived on the previous connection.
    let frames: Vec<Message<ToServer>> = lock(subs)
        .iter()
        .map(|(id, entry)| {
            let mut frame = entry.frame(id);
            request_receipt(
                &mut frame,
                Waiter {
                    tx: None,
                    subscription: Some(id.clone()),
                },
            );
            frame
        })
        .collect();
    for frame in frames {
        if let Err(e) = writer.feed(Outgoing::Stomp(frame)).await {
            return Ended::Lost(format!("re-subscribing failed: {e}"));
        }
    }
    if let Err(e) = SinkExt::<Outgoing>::flush(&mut writer).await {
        return Ended::Lost(format!("re-subscribing failed: {e}"));
    }
    status.send_replace(Status::Connected);
    let (orphans_tx, mut orphans) = mpsc::unbounded_channel::<String>();

    let reading = async {
        loop {
            let next = match expect_every {
                // Twice the agreed interval, as the spec suggests, before calling it dead.
                Some(every) => match tokio::time::timeout(every * 2, reader.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        return Ended::Lost(format!(
                            "no heart-beat from the broker for {:?}",
                            every * 2
                        ))
                    }
                },
                None => reader.next().await,
            };
            let message = match next {
                None => return Ended::Lost("the broker closed the connection".into()),
                Some(Err(e)) => return Ended::Lost(format!("unreadable frame: {e}")),
                Some(Ok(Inbound::Message(message))) => {
                    let (subscription, ack) = message.subscription_and_ack();
                    let subscription = subscription.unwrap_or_default();
                    let orphan = {
                        let subs = lock(subs);
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
                Some(Ok(Inbound::Other(m))) => m,
            };
            match message.content {
                // Never: the codec splits MESSAGE frames itself (above).
                FromServer::Message { .. } => {}
                FromServer::Receipt { receipt_id } => {
                    if let Some(waiter) = lock(receipts).remove(&receipt_id) {
                        if let Some(tx) = waiter.tx {
                            let _ = tx.send(Ok(()));
                        }
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
                    if let Some(waiter) = about.and_then(|r| lock(receipts).remove(&r)) {
                        if let Some(id) = waiter.subscription {
                            // Never re-subscribe what the broker refused.
                            lock(subs).remove(&id);
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
        let mut closing: Option<oneshot::Sender<()>> = None;
        loop {
            let first = tokio::select! {
                c = commands.recv() => match c {
                    Some(c) => c,
                    // Every handle is gone: nobody can use this connection any more.
                    None => return Ended::Closed,
                },
                Some(id) = orphans.recv() => Command::Frame {
                    message: Outgoing::Raw(crate::frame::settle("NACK", &id), None),
                    receipt: None,
                    generation: Some(gen),
                },
                _ = idle(send_every) => {
                    if let Err(e) = writer.send(Outgoing::Heartbeat).await {
                        return Ended::Lost(format!("sending a heart-beat failed: {e}"));
                    }
                    continue;
                }
            };
            let mut batch = 0;
            let mut next = Some(first);
            while let Some(command) = next.take() {
                let frame = match command {
                    Command::Frame {
                        mut message,
                        receipt,
                        generation,
                    } => {
                        if generation.is_some_and(|g| g != gen) {
                            None
                        } else {
                            if let Some(tx) = receipt {
                                let id = new_receipt();
                                message.set_receipt(id.clone());
                                lock(receipts).insert(
                                    id,
                                    Waiter {
                                        tx: Some(tx),
                                        subscription: None,
                                    },
                                );
                            }
                            Some(message)
                        }
                    }
                    Command::Subscribe { id, entry, receipt } => {
                        let mut message = entry.frame(&id);
                        request_receipt(
                            &mut message,
                            Waiter {
                                tx: Some(receipt),
                                subscription: Some(id.clone()),
                            },
                        );
                        lock(subs).insert(id, entry);
                        Some(Outgoing::Stomp(message))
                    }
                    Command::Unsubscribe { id, receipt } => {
                        lock(subs).remove(&id);
                        let mut message: Message<ToServer> = ToServer::Unsubscribe { id }.into();
                        if let Some(tx) = receipt {
                            request_receipt(
                                &mut message,
                                Waiter {
                                    tx: Some(tx),
                                    subscription: None,
                                },
                            );
                        }
                        Some(Outgoing::Stomp(message))
                    }
                    Command::Close { done } => {
                        closing = Some(done);
                        None
                    }
                };
                if let Some(frame) = frame {
                    if let Err(e) = writer.feed(frame).await {
                        return Ended::Lost(format!("writing to the broker failed: {e}"));
                    }
                }
                if closing.is_some() {
                    break;
                }
                batch += 1;
                if batch < 128 {
                    next = commands.try_recv().ok();
                }
            }
            if let Err(e) = SinkExt::<Outgoing>::flush(&mut writer).await {
                return Ended::Lost(format!("writing to the broker failed: {e}"));
            }
            if let Some(done) = closing.take() {
                // DISCONNECT with a receipt: once it comes back, everything before it was
                // processed by the broker.
                let (tx, rx) = oneshot::channel();
                lock(receipts).insert(
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
                if writer.send(Outgoing::Stomp(bye)).await.is_ok() {
                    let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
                }
                let _ = done.send(());
                return Ended::Closed;
            }
        }
    };
    tokio::select! {
        ended = reading => ended,
        ended = writing => ended,
        _ = stop.wait_for(|s| *s) => Ended::Aborted,
    }
}

/// Resolves after `every` (never when heart-beats are off): the writer then sends one. Any
/// frame written resets it, since the select restarts it.
async fn idle(every: Option<Duration>) {
    match every {
        Some(every) => tokio::time::sleep(every).await,
        None => std::future::pending().await,
    }
}
