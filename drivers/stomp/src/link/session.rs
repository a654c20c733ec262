//! One connection to one node: the handshake (CONNECT, CONNECTED, heart-beats agreed), then
//! the two halves of its life — reading every frame the broker sends and handing it where it
//! belongs, and writing what the handles could not write themselves, with heart-beats.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_stomp::client::Connector as ConnectFrame;
use async_stomp::{FromServer, Message, ToServer};
use futures::{SinkExt, StreamExt};
use tidings_core::broker_url::Node;
use tidings_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::receipts::Waiter;
use super::subscriptions::Incoming;
use super::{lock, Shared};
use crate::config::Config;
use crate::frame::{self, Codec, Inbound, Outgoing};

/// How long the TCP connection to one node may take.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the TLS handshake may take.
const TLS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the broker may take to answer CONNECT.
const CONNECTED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a clean close waits for the receipt of DISCONNECT.
const BYE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a consumer's ACK waits in the queue when the consumer stops asking for
/// deliveries (see `Link::settle_on`).
pub(super) const HELD_AT_MOST: Duration = Duration::from_secs(1);

/// A connected broker session: the framed reading half, the writing half and the agreed
/// heart-beats.
pub(crate) struct Session {
    pub(super) reader: FramedRead<Box<dyn AsyncRead + Send + Unpin>, Codec>,
    pub(super) writer: Box<dyn AsyncWrite + Send + Unpin>,
    pub(super) beats: Beats,
}

/// How one session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ended {
    /// The connection failed (for this reason): the link reconnects.
    Lost(String),
    /// The link's close was asked for and DISCONNECT done.
    Closed,
}

/// The heart-beats agreed in the handshake, and the writer's schedule for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Beats {
    /// How often the broker expects to hear from us (`None`: never).
    send_every: Option<Duration>,
    /// How often we hear from the broker (`None`: no heart-beats; silence is fine).
    expect_every: Option<Duration>,
    /// Time since the writer last wrote, counted in ticks.
    quiet: Duration,
}

impl Beats {
    /// What STOMP 1.2 agrees from our `heart-beat:<ours>,<ours>` (milliseconds, 0 = none) and
    /// the broker's CONNECTED header `heart-beat:<sx>,<sy>` (absent or unreadable: none).
    pub(crate) fn agree(ours_ms: u64, theirs: Option<&str>) -> Self {
        let (sx, sy) = theirs
            .and_then(|h| h.split_once(','))
            .map(|(x, y)| (x.trim().parse().unwrap_or(0), y.trim().parse().unwrap_or(0)))
            .unwrap_or((0u64, 0u64));
        let agree = |a: u64, b: u64| (a != 0 && b != 0).then(|| Duration::from_millis(a.max(b)));
        Self {
            send_every: agree(ours_ms, sy),
            expect_every: agree(sx, ours_ms),
            quiet: Duration::ZERO,
        }
    }

    /// How long the broker may stay silent before it counts as dead: three times the agreed
    /// interval. ActiveMQ sends its first heart-beat only after twice the interval, so a
    /// deadline of twice raced it and a busy broker lost the race.
    pub(crate) fn silence_deadline(&self) -> Option<Duration> {
        self.expect_every.map(|every| every * 3)
    }

    /// How often the writer wakes up: to write what consumers hold back, at least every
    /// [`HELD_AT_MOST`], and to check whether a heart-beat is due, four times per interval.
    pub(crate) fn tick(&self) -> Duration {
        self.send_every
            .map_or(HELD_AT_MOST, |every| (every / 4).min(HELD_AT_MOST))
    }

    /// One tick passed; `wrote` says whether anything was written during it. Whether to write a
    /// heart-beat now: nothing was written for half the agreed interval (so the broker hears
    /// from us at least every three quarters of it, with room for a late timer) and nothing
    /// else waits to be written (which would do as well).
    pub(crate) fn on_tick(&mut self, wrote: bool, queue_empty: bool) -> bool {
        self.quiet = if wrote {
            Duration::ZERO
        } else {
            self.quiet + self.tick()
        };
        let due = self.send_every.is_some_and(|every| self.quiet >= every / 2);
        if due && queue_empty {
            self.quiet = Duration::ZERO;
            return true;
        }
        false
    }
}

/// An error of connecting to the node at `address`, with what to check.
fn connection_error(address: &str, what: &str) -> Error {
    Error::new(
        ErrorKind::Connection,
        format!(
            "cannot connect to the STOMP broker at {address}: {what}; check that it runs and that \
             the url's host, port, login and password are right"
        ),
    )
}

/// Connects to `node`, sends CONNECT, reads CONNECTED. Returns the session and the broker's
/// `server` header.
pub(super) async fn handshake(config: &Config, node: &Node) -> Result<(Session, Option<String>)> {
    let address = node.address(config.default_port());
    let fail = |what: &str| connection_error(&address, what);
    let tcp = tokio::time::timeout(TCP_TIMEOUT, TcpStream::connect(&address))
        .await
        .map_err(|_| fail(&format!("no TCP connection within {TCP_TIMEOUT:?}")))?
        .map_err(|e| fail(&e.to_string()).with_source(e))?;
    let _ = tcp.set_nodelay(true);
    let (read, write): (
        Box<dyn AsyncRead + Send + Unpin>,
        Box<dyn AsyncWrite + Send + Unpin>,
    ) = match &config.tls {
        Some(tls) => {
            // A plain-text server may just wait for a frame that never comes: fail fast.
            let stream = tokio::time::timeout(TLS_TIMEOUT, tls.connect(tcp, node.host()))
                .await
                .map_err(|_| {
                    fail(&format!(
                        "no TLS handshake reply within {TLS_TIMEOUT:?}; is this a TLS port \
                         (RabbitMQ's STOMP TLS listener is usually 61614)?"
                    ))
                })?
                .map_err(|e| fail(&e.to_string()))?;
            let (read, write) = tokio::io::split(stream);
            (Box::new(read), Box::new(write))
        }
        None => {
            let (read, write) = tcp.into_split();
            (Box::new(read), Box::new(write))
        }
    };
    let mut reader = FramedRead::new(read, Codec::default());
    let mut writer = FramedWrite::new(write, Codec::default());
    let beat = u32::try_from(config.heartbeat.as_millis()).unwrap_or(u32::MAX);
    let work = async {
        let mut connect = ConnectFrame::builder()
            .server(address.clone())
            .virtualhost(config.vhost.clone())
            .heartbeat(beat, beat);
        if let Some(login) = &config.login {
            connect = connect.login(login.clone());
        }
        if let Some(passcode) = &config.passcode {
            connect = connect.passcode(passcode.clone());
        }
        writer
            .send(Outgoing::Stomp(connect.msg()))
            .await
            .map_err(|e| fail(&format!("sending CONNECT failed: {e}")))?;
        loop {
            let reply = reader
                .next()
                .await
                .ok_or_else(|| fail("the broker closed the connection"))?
                .map_err(|e| fail(&format!("unreadable reply: {e}")))?;
            match reply {
                Inbound::Other(reply) => return Ok(reply),
                Inbound::Heartbeat => continue,
                Inbound::Message(_) | Inbound::Receipt(_) => {
                    return Err(fail("expected CONNECTED, got a MESSAGE or RECEIPT"))
                }
            }
        }
    };
    let reply = tokio::time::timeout(CONNECTED_TIMEOUT, work)
        .await
        .map_err(|_| fail(&format!("no CONNECTED frame within {CONNECTED_TIMEOUT:?}")))??;
    match reply.content {
        FromServer::Connected {
            version,
            server,
            heartbeat,
            ..
        } => {
            if version != "1.2" {
                return Err(fail(&format!(
                    "the broker speaks STOMP {version}, the driver needs 1.2"
                )));
            }
            let session = Session {
                reader,
                writer: writer.into_inner(),
                beats: Beats::agree(u64::from(beat), heartbeat.as_deref()),
            };
            Ok((session, server))
        }
        FromServer::Error { message, body } => Err(fail(&format!(
            "the broker refused the login: {} {}",
            message.unwrap_or_default(),
            String::from_utf8_lossy(&body.unwrap_or_default())
        ))),
        other => Err(fail(&format!("expected CONNECTED, got {other:?}"))),
    }
}

/// Hands one frame read from the connection of `generation` where it belongs. `Some` when the
/// frame ends the connection (an ERROR).
pub(super) fn on_frame(shared: &Shared, generation: u64, frame: Inbound) -> Option<Ended> {
    let message = match frame {
        Inbound::Message(message) => {
            let (subscription, ack) = message.subscription_and_ack();
            let incoming = Incoming {
                generation,
                ack,
                message,
            };
            let orphan = lock(&shared.subs)
                .deliver(subscription.as_deref().unwrap_or_default(), incoming)
                .err();
            // RabbitMQ keeps a message of a subscription that is gone unacked until the
            // connection closes; ActiveMQ takes it back itself.
            let nack = orphan
                .and_then(|o| o.ack)
                .filter(|_| shared.nack_orphans.load(Ordering::Acquire));
            if let Some(id) = nack {
                shared.settle_on(
                    generation,
                    Outgoing::Raw(frame::settle("NACK", &id), None),
                    None,
                );
            }
            return None;
        }
        Inbound::Receipt(id) => {
            if let Ok(id) = std::str::from_utf8(&id) {
                lock(&shared.receipts).confirm(id);
            }
            return None;
        }
        // Only a sign of life (it restarts the reader's deadline).
        Inbound::Heartbeat => return None,
        Inbound::Other(message) => message,
    };
    match message.content {
        // Not expected (the codec splits MESSAGE and RECEIPT frames itself), but harmless.
        FromServer::Message { .. } | FromServer::Connected { .. } => None,
        FromServer::Receipt { receipt_id } => {
            lock(&shared.receipts).confirm(&receipt_id);
            None
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
            let mut subs = lock(&shared.subs);
            let refused = {
                let mut receipts = lock(&shared.receipts);
                match about {
                    Some(receipt) => receipts.refuse(&receipt, &text),
                    None => receipts.refuse_the_only_subscribe(&text),
                }
            };
            if let Some(id) = refused {
                // Never re-subscribe what the broker refused.
                subs.remove(&id);
            }
            Some(Ended::Lost(format!("the broker sent ERROR: {text}")))
        }
    }
}

/// Reads the connection of `generation` until it ends. `disconnecting` is set once DISCONNECT
/// went out: the broker closing the connection then is the end asked for, not a loss.
pub(super) async fn read(
    shared: &Shared,
    reader: &mut FramedRead<Box<dyn AsyncRead + Send + Unpin>, Codec>,
    generation: u64,
    silence_deadline: Option<Duration>,
    disconnecting: &AtomicBool,
) -> Ended {
    loop {
        let next = match silence_deadline {
            Some(deadline) => match tokio::time::timeout(deadline, reader.next()).await {
                Ok(next) => next,
                Err(_) => {
                    return Ended::Lost(format!("no heart-beat from the broker for {deadline:?}"))
                }
            },
            None => reader.next().await,
        };
        let frame = match next {
            None | Some(Err(_)) if disconnecting.load(Ordering::Acquire) => return Ended::Closed,
            None => return Ended::Lost("the broker closed the connection".into()),
            Some(Err(e)) => return Ended::Lost(format!("unreadable frame: {e}")),
            Some(Ok(frame)) => frame,
        };
        if let Some(ended) = on_frame(shared, generation, frame) {
            return ended;
        }
    }
}

/// Writes what the handles left to write (the socket was full), what consumers hold back, and
/// heart-beats, until the connection fails or the link's close is asked for: then DISCONNECT,
/// after everything queued, and its receipt awaited (once it comes, the broker processed
/// everything before it).
pub(super) async fn write(shared: &Shared, mut beats: Beats, disconnecting: &AtomicBool) -> Ended {
    let tick = beats.tick();
    loop {
        tokio::select! {
            () = shared.closing.cancelled() => {
                let (tx, rx) = oneshot::channel();
                {
                    let mut out = lock(&shared.out);
                    let receipt = lock(&shared.receipts).next_id();
                    let bye: Message<ToServer> = ToServer::Disconnect {
                        receipt: Some(receipt.clone()),
                    }
                    .into();
                    lock(&shared.receipts).expect(receipt, Waiter::of(tx));
                    out.push(Outgoing::Stomp(bye));
                }
                disconnecting.store(true, Ordering::Release);
                if shared.flush().await.is_ok() {
                    let _ = tokio::time::timeout(BYE_TIMEOUT, rx).await;
                }
                shared.said_bye.send_replace(true);
                return Ended::Closed;
            }
            () = shared.kick.notified() => {}
            () = tokio::time::sleep(tick) => {
                let mut out = lock(&shared.out);
                let wrote = out.take_wrote();
                if beats.on_tick(wrote, out.is_empty()) {
                    out.push(Outgoing::Heartbeat);
                }
            }
        }
        if let Err(e) = shared.flush().await {
            return Ended::Lost(format!("writing to the broker failed: {e}"));
        }
    }
}

impl Shared {
    /// Writes everything queued, waiting for the socket as long as it takes (the connection's
    /// task only).
    pub(super) async fn flush(&self) -> std::result::Result<(), String> {
        poll_fn(|cx| lock(&self.out).poll_flush(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use async_stomp::AckMode;
    use tokio::sync::mpsc;

    use super::*;
    use crate::frame::RawMessage;
    use crate::link::SubEntry;

    fn error_about(receipt: Option<&str>) -> Inbound {
        Inbound::Other(Message {
            content: FromServer::Error {
                message: Some("not_found".into()),
                body: Some(b"NOT_FOUND - no queue 'x'\n".to_vec()),
            },
            extra_headers: receipt
                .map(|r| vec![(b"receipt-id".to_vec(), r.as_bytes().to_vec())])
                .unwrap_or_default(),
        })
    }

    fn subscribe(shared: &Shared, id: &str) -> mpsc::UnboundedReceiver<Incoming> {
        let (deliver, rx) = mpsc::unbounded_channel();
        lock(&shared.subs).add(
            id.into(),
            SubEntry {
                destination: "/queue/x".into(),
                headers: Vec::new(),
                ack: AckMode::ClientIndividual,
                deliver,
                renew: None,
                made: false,
            },
        );
        rx
    }

    #[test]
    fn an_error_about_a_subscribe_refuses_it_for_good_and_ends_the_connection() {
        let shared = Shared::default();
        let mut consumer = subscribe(&shared, "s1");
        let (tx, mut refused) = oneshot::channel();
        lock(&shared.receipts).expect(
            "r7".into(),
            Waiter {
                tx: Some(tx),
                subscription: Some("s1".into()),
            },
        );
        let ended = on_frame(&shared, 1, error_about(Some("r7")));
        assert!(
            matches!(&ended, Some(Ended::Lost(why)) if why.contains("NOT_FOUND")),
            "{ended:?}"
        );
        assert!(matches!(
            refused.try_recv(),
            Ok(Err(super::super::receipts::Failure::Broker(why))) if why.contains("no queue")
        ));
        // Never subscribed again: its consumer's stream ended.
        assert!(matches!(
            consumer.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        // An ERROR naming no receipt (RabbitMQ's usual) ends the connection too, and refuses
        // the one subscription a caller waits for.
        let mut other = subscribe(&shared, "s2");
        let (tx, mut refused) = oneshot::channel();
        lock(&shared.receipts).expect(
            "r8".into(),
            Waiter {
                tx: Some(tx),
                subscription: Some("s2".into()),
            },
        );
        assert!(matches!(
            on_frame(&shared, 1, error_about(None)),
            Some(Ended::Lost(_))
        ));
        assert!(matches!(refused.try_recv(), Ok(Err(_))));
        assert!(matches!(
            other.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn receipts_and_heart_beats_and_messages_keep_the_connection() {
        let shared = Shared::default();
        let (tx, mut confirmed) = oneshot::channel();
        lock(&shared.receipts).expect("r1".into(), Waiter::of(tx));
        assert_eq!(on_frame(&shared, 1, Inbound::Receipt("r1".into())), None);
        assert_eq!(confirmed.try_recv().unwrap(), Ok(()));
        assert_eq!(on_frame(&shared, 1, Inbound::Heartbeat), None);
        let message = Inbound::Message(RawMessage::for_tests());
        assert_eq!(on_frame(&shared, 1, message), None);
    }

    #[test]
    fn a_message_for_a_gone_subscription_is_nacked_on_its_own_connection_only() {
        let shared = Shared::default();
        shared.nack_orphans.store(true, Ordering::Release);
        lock(&shared.out).attach(Box::new(tokio::io::sink()), 2, Vec::new());
        // Of a connection that is gone: nothing to NACK it on.
        let orphan = || Inbound::Message(RawMessage::for_tests_on("gone", "m1"));
        on_frame(&shared, 1, orphan());
        assert!(lock(&shared.out).is_empty());
        on_frame(&shared, 2, orphan());
        assert!(!lock(&shared.out).is_empty(), "the NACK is queued");
    }

    #[test]
    fn heart_beats_are_agreed_as_stomp_says() {
        // We offer and ask 10 s; the broker can send every 4 s and wants ours every 20 s.
        let beats = Beats::agree(10_000, Some("4000,20000"));
        assert_eq!(beats.send_every, Some(Duration::from_secs(20)));
        assert_eq!(beats.expect_every, Some(Duration::from_secs(10)));
        assert_eq!(beats.silence_deadline(), Some(Duration::from_secs(30)));
        // Either side at 0 turns that direction off; a missing or bad header turns both off.
        let beats = Beats::agree(10_000, Some("0,5000"));
        assert_eq!(beats.send_every, Some(Duration::from_secs(10)));
        assert_eq!(beats.silence_deadline(), None);
        for theirs in [None, Some("garbage"), Some("")] {
            let beats = Beats::agree(10_000, theirs);
            assert_eq!((beats.send_every, beats.silence_deadline()), (None, None));
        }
        let off = Beats::agree(0, Some("1000,1000"));
        assert_eq!((off.send_every, off.expect_every), (None, None));
        assert_eq!(off.tick(), HELD_AT_MOST);
    }

    #[test]
    fn a_heart_beat_goes_out_after_half_an_interval_of_silence_only() {
        let mut beats = Beats::agree(2_000, Some("2000,2000"));
        assert_eq!(beats.tick(), Duration::from_millis(500));
        // Written to in every tick: never a heart-beat.
        assert!((0..10).all(|_| !beats.on_tick(true, true)));
        // Silent: the second silent tick (1 s = half of 2 s) sends one, then the count restarts.
        assert!(!beats.on_tick(false, true));
        assert!(beats.on_tick(false, true));
        assert!(!beats.on_tick(false, true));
        assert!(beats.on_tick(false, true));
        // Due while frames wait to be written: those do as well.
        assert!(!beats.on_tick(false, true));
        assert!(!beats.on_tick(false, false));
        assert!(beats.on_tick(false, true));
        // A long interval still ticks every second, for held-back ACKs.
        let slow = Beats::agree(60_000, Some("60000,60000"));
        assert_eq!(slow.tick(), HELD_AT_MOST);
        // No heart-beats agreed: never one.
        let mut none = Beats::agree(0, None);
        assert!((0..100).all(|_| !none.on_tick(false, true)));
    }
}
