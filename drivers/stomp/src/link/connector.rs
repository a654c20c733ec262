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
            subs.resubscribe(&mut receipts)
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
