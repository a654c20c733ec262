//! What the shared reconnect supervisor (`tidings-plumbing`) needs of this driver: how to open
//! a connection to one node (the STOMP handshake) and how to keep it (re-subscribe everything,
//! then read and write until it fails or the link closes).
//!
//! The supervisor decides when and where: the URL's nodes in a shuffled order, the next live
//! node after a loss, backoff with jitter between rounds, the status naming the node.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tidings_core::broker_url::Node;
use tidings_core::{async_trait, Result};
use tidings_plumbing::{Connector, Current};
use tokio_util::sync::CancellationToken;

use super::receipts::Failure;
use super::session::{self, Ended, Session};
use super::{lock, Shared};
use crate::config::Config;

/// Opens and keeps a link's connections.
pub(super) struct StompConnector {
    pub(super) config: Config,
    pub(super) shared: Arc<Shared>,
}

#[async_trait]
impl Connector for StompConnector {
    /// The broker's `server` header, from CONNECTED: handles use nothing else of the
    /// connection (they share the link's write queue).
    type Live = Option<String>;
    /// The socket: read and written by [`run`](Connector::run) only.
    type Owned = Session;

    async fn open(&self, node: &Node) -> Result<(Option<String>, Session)> {
        let (session, server) = session::handshake(&self.config, node).await?;
        Ok((server, session))
    }

    async fn run(
        &self,
        current: Arc<Current<Option<String>>>,
        session: Session,
        shutdown: CancellationToken,
    ) {
        let shared = &*self.shared;
        let ended = tokio::select! {
            ended = keep(shared, session, current.generation) => ended,
            () = current.lost().cancelled() => Ended::Lost("reported broken".into()),
        };
        let failure = match &ended {
            _ if shutdown.is_cancelled() => Failure::Closed,
            Ended::Lost(why) => Failure::Lost(why.clone()),
            Ended::Closed => Failure::Closed,
        };
        // Anything sent on that connection and not confirmed may be lost: its callers are told
        // (a publish is then re-sent on the next connection, or fails to its caller).
        shared.end_session(&failure);
        match ended {
            Ended::Lost(why) if !shutdown.is_cancelled() => {
                tracing::warn!(node = %current.node, reason = %why, "stomp connection lost");
            }
            // Closed as asked: the link shuts the supervisor down next; never reconnect.
            _ => {
                shared.said_bye.send_replace(true);
                shutdown.cancelled().await;
            }
        }
    }
}

/// Re-subscribes everything on the new connection of `generation`, ahead of what was queued
/// while there was none, then reads and writes until it ends.
async fn keep(shared: &Shared, session: Session, generation: u64) -> Ended {
    let Session {
        mut reader,
        writer,
        beats,
    } = session;
    {
        let mut out = lock(&shared.out);
        let first = {
            let mut subs = lock(&shared.subs);
            let mut receipts = lock(&shared.receipts);
            subs.resubscribe(&mut receipts, generation)
        };
        out.attach(writer, generation, first);
    }
    if let Err(e) = shared.flush().await {
        return Ended::Lost(format!("re-subscribing failed: {e}"));
    }
    let disconnecting = AtomicBool::new(false);
    let silence = beats.silence_deadline();
    tokio::select! {
        ended = session::read(shared, &mut reader, generation, silence, &disconnecting) => ended,
        ended = session::write(shared, beats, &disconnecting) => ended,
    }
}

#[cfg(test)]
mod tests {
    use async_stomp::AckMode;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;
    use tokio_util::codec::FramedRead;

    use super::*;
    use crate::frame::{self, Codec, Outgoing};
    use crate::link::session::Beats;
    use crate::link::SubEntry;

    /// A session over an in-memory pipe; the other end plays the broker.
    fn session() -> (Session, tokio::io::DuplexStream) {
        let (client, broker) = tokio::io::duplex(64 * 1024);
        let (read, write) = tokio::io::split(client);
        let session = Session {
            reader: FramedRead::new(Box::new(read), Codec::default()),
            writer: Box::new(write),
            beats: Beats::agree(0, None),
        };
        (session, broker)
    }

    async fn read_until(broker: &mut tokio::io::DuplexStream, needle: &str) -> String {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), broker.read(&mut buf))
                .await
                .expect("the link wrote in time")
                .expect("read");
            assert!(
                n > 0,
                "closed before {needle:?}: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    #[tokio::test]
    async fn a_new_connection_subscribes_again_before_what_was_queued_and_ends_with_the_broker() {
        let shared = Arc::new(Shared::default());
        let (deliver, _consumer) = mpsc::unbounded_channel();
        lock(&shared.subs).add(
            "s1".into(),
            SubEntry {
                destination: "/topic/ns.a".into(),
                headers: vec![("x-queue-name".into(), "ns.group.g".into())],
                ack: AckMode::ClientIndividual,
                deliver,
                renew: None,
                made: false,
            },
        );
        // Queued while no connection was up.
        lock(&shared.out).push(Outgoing::Raw(frame::settle("SEND", "queued"), None));
        let (session, mut broker) = session();
        let kept = tokio::spawn({
            let shared = shared.clone();
            async move { keep(&shared, session, 7).await }
        });
        let written = read_until(&mut broker, "id:queued").await;
        let subscribe = written.find("SUBSCRIBE").expect("SUBSCRIBE written");
        assert!(subscribe < written.find("SEND").unwrap(), "{written}");
        assert!(written.contains("x-queue-name:ns.group.g"), "{written}");
        assert!(lock(&shared.out).is_on(7));
        // The broker confirms, then goes away: the connection is lost, not closed.
        broker
            .write_all(b"RECEIPT\nreceipt-id:r1\n\n\0")
            .await
            .unwrap();
        drop(broker);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), kept)
            .await
            .expect("ended in time")
            .unwrap();
        assert_eq!(
            ended,
            Ended::Lost("the broker closed the connection".into())
        );
    }

    #[tokio::test]
    async fn closing_says_disconnect_and_waits_for_its_receipt() {
        let shared = Arc::new(Shared::default());
        let (session, mut broker) = session();
        let kept = tokio::spawn({
            let shared = shared.clone();
            async move { keep(&shared, session, 1).await }
        });
        shared.closing.cancel();
        let written = read_until(&mut broker, "DISCONNECT").await;
        let receipt = written
            .lines()
            .find_map(|l| l.strip_prefix("receipt:"))
            .expect("DISCONNECT asks for a receipt")
            .to_owned();
        broker
            .write_all(format!("RECEIPT\nreceipt-id:{receipt}\n\n\0").as_bytes())
            .await
            .unwrap();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), kept)
            .await
            .expect("ended in time")
            .unwrap();
        assert_eq!(ended, Ended::Closed);
        assert!(*shared.said_bye.borrow());
    }
}
