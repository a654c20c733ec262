//! Sending: one sender link per target address, shared by every publisher to that address.
//!
//! A publish locks the link only to hand its transfer to fe2o3 (which serialises it and queues
//! it for the session), then waits for the broker's outcome without the lock, so many publishes
//! are in flight at once on one link (pipelined, each confirmed by `accepted`). There is no
//! sender task in between: the publishing task itself drives the send, which saves a channel
//! hop, a oneshot and a task wake-up per message. Each publish keeps its own message until it
//! is confirmed; when the session is lost before that, the publish attaches a new link on the
//! next session and sends it again (at least once, never lost), within `publish_timeout_ms`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::link::{SendError, SenderAttachError};
use fe2o3_amqp::types::messaging::Outcome;
use fe2o3_amqp::{Sendable, Sender};
use tidings_core::{Error, ErrorKind, Result};
use tidings_plumbing::Backoff;
use tokio::sync::Mutex;

use crate::connection::{Live, Shared};
use crate::wire::{OutgoingBody, OutgoingMessage};

/// What a failed link operation means.
enum Failure {
    /// The session or connection is gone: wait for the next one.
    Session,
    /// The broker refused or detached this link (bad or deleted address).
    Link(String),
}

fn classify_attach(e: &SenderAttachError) -> Failure {
    match e {
        SenderAttachError::SessionStopped(_)
        | SenderAttachError::SessionNotMapped
        | SenderAttachError::IllegalState => Failure::Session,
        other => Failure::Link(other.to_string()),
    }
}

fn classify_send(e: &SendError) -> Failure {
    let text = format!("{e:?}");
    if text.contains("SessionStopped") || text.contains("IllegalState") {
        Failure::Session
    } else {
        Failure::Link(e.to_string())
    }
}

/// The link to one address, as attached on one session.
#[derive(Debug)]
struct Attached {
    live: Arc<Live>,
    sender: Sender,
}

/// One address's sender link, attached on first use and again after every reconnect.
#[derive(Debug)]
pub(crate) struct SenderLink {
    shared: Arc<Shared>,
    address: String,
    name: String,
    /// `None` until attached, and again once its session or link failed.
    state: Mutex<Option<Attached>>,
    /// The pauses between failed attaches, started afresh by each attach that succeeds.
    retry: std::sync::Mutex<Backoff>,
}

impl SenderLink {
    fn new(shared: Arc<Shared>, address: String) -> Self {
        Self {
            shared,
            address,
            name: format!("tidings-send-{}", tidings_core::envelope::new_id()),
            state: Mutex::new(None),
            retry: std::sync::Mutex::new(Backoff::new()),
        }
    }

    /// How long to wait before attaching again after a failure.
    fn pause(&self) -> Duration {
        self.retry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_delay()
    }

    /// Sends `message` and waits for the broker to accept it, re-sending after a reconnect,
    /// for at most `publish_timeout_ms`.
    ///
    /// An `async` block rather than an `async fn`: an `async fn` keeps its argument twice in
    /// its future (as the argument and again as a local), and this future is boxed per
    /// publish.
    pub(crate) fn send(
        &self,
        message: OutgoingMessage,
    ) -> impl std::future::Future<Output = Result<()>> + Send + '_ {
        let sendable = Sendable::builder().message(message).settled(false).build();
        async move {
            let config = &self.shared.config;
            match tokio::time::timeout(config.publish_timeout, self.deliver(&sendable)).await {
                Ok(result) => result,
                Err(_) => Err(Error::new(
                    ErrorKind::Publish,
                    format!(
                        "the broker at {} did not confirm within {:?} (connection down?); raise publish_timeout_ms in the url to wait longer",
                        config.redacted, config.publish_timeout
                    ),
                )),
            }
        }
    }

    async fn deliver(&self, sendable: &Sendable<OutgoingBody>) -> Result<()> {
        // A session that failed this link; the next attach waits for a newer one.
        let mut failed_generation = 0u64;
        loop {
            let (live, confirmation) = {
                let mut state = self.state.lock().await;
                let usable = state.as_ref().is_some_and(|a| {
                    !a.live.lost().is_cancelled() && a.live.generation > failed_generation
                });
                // Attaching is rare and its future is large: boxed, so that it does not make
                // every publish's future (allocated and moved per message) that much bigger.
                if !usable && !Box::pin(self.attach(&mut state, failed_generation)).await? {
                    continue;
                }
                let Some(attached) = state.as_mut() else {
                    continue;
                };
                let live = attached.live.clone();
                // Waiting for link credit can outlive the session, which does not always
                // fail the wait: give up on it once the session is gone.
                // Biased: the send is almost always ready at once, and then the session's
                // token is never polled (polling it registers a waiter).
                let sent = tokio::select! {
                    biased;
                    sent = attached.sender.send_batchable_ref(sendable) => Some(sent),
                    _ = live.lost().cancelled() => None,
                };
                match sent {
                    Some(Ok(confirmation)) => (live, confirmation),
                    Some(Err(e)) => {
                        *state = None;
                        drop(state);
                        failed_generation = Box::pin(self.failed(&live, classify_send(&e))).await;
                        continue;
                    }
                    None => {
                        *state = None;
                        failed_generation = live.generation;
                        continue;
                    }
                }
            };
            let outcome = tokio::select! {
                biased;
                outcome = confirmation => outcome,
                // Sent but unconfirmed when the session went: send it again on the next one.
                _ = live.lost().cancelled() => {
                    failed_generation = live.generation;
                    continue;
                }
            };
            match outcome {
                Ok(outcome) => return verdict(outcome, &self.address),
                Err(e) => {
                    let failure = classify_send(&e);
                    {
                        let mut state = self.state.lock().await;
                        if state
                            .as_ref()
                            .is_some_and(|a| a.live.generation == live.generation)
                        {
                            *state = None;
                        }
                    }
                    failed_generation = Box::pin(self.failed(&live, failure)).await;
                }
            }
        }
    }

    /// Attaches the link on a session newer than `failed_generation`, replacing a stale one.
    /// `Ok(false)`: try again (the attach hit a lost session).
    async fn attach(&self, state: &mut Option<Attached>, failed_generation: u64) -> Result<bool> {
        *state = None;
        let live = self
            .shared
            .live_after(failed_generation)
            .await
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Closed,
                    "the AMQP 1.0 connection closed before the broker confirmed",
                )
            })?;
        let attached = {
            let mut session = live.session.lock().await;
            Sender::attach(&mut *session, self.name.clone(), self.address.clone()).await
        };
        let e = match attached {
            Ok(sender) => {
                *self.retry.lock().unwrap_or_else(|p| p.into_inner()) = Backoff::new();
                *state = Some(Attached { live, sender });
                return Ok(true);
            }
            Err(e) => e,
        };
        match classify_attach(&e) {
            Failure::Session => {
                self.shared.report_broken(live.generation);
                // Wait for the supervisor to replace the session.
                tokio::select! {
                    _ = live.lost().cancelled() => {}
                    _ = tokio::time::sleep(self.pause()) => {}
                }
                Ok(false)
            }
            Failure::Link(why) => Err(Error::new(
                ErrorKind::Publish,
                format!("cannot send to {}: {why}", self.address),
            )
            .with_source(e)),
        }
    }

    /// Handles a failed send; returns the generation the next attach must be newer than.
    async fn failed(&self, live: &Live, failure: Failure) -> u64 {
        match failure {
            Failure::Session => {
                self.shared.report_broken(live.generation);
                live.generation
            }
            Failure::Link(why) => {
                // The broker detached the link; re-attach on the same session (a broken
                // session shows up there) after a pause. A gone address fails the attach.
                tracing::debug!(address = %self.address, %why, "sender link failed; re-attaching");
                tokio::time::sleep(self.pause()).await;
                live.generation - 1
            }
        }
    }
}

/// The broker's outcome as the publish result.
fn verdict(outcome: Outcome, address: &str) -> Result<()> {
    match outcome {
        Outcome::Accepted(_) => Ok(()),
        Outcome::Rejected(r) => Err(Error::new(
            ErrorKind::Publish,
            format!(
                "the broker rejected a message sent to {address}: {:?}",
                r.error
            ),
        )),
        other => Err(Error::new(
            ErrorKind::Publish,
            format!("the broker did not take a message sent to {address}: {other:?}"),
        )),
    }
}

/// The sender links of one provider, one per address, made on first use.
#[derive(Debug)]
pub(crate) struct SenderPool {
    shared: Arc<Shared>,
    links: std::sync::Mutex<HashMap<String, Arc<SenderLink>>>,
}

/// Past this many cached links (reply inboxes of many callers), idle ones are dropped.
const MAX_LINKS: usize = 256;

impl SenderPool {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            links: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The link to `address`, made on first use. A caller that sends to one address all the
    /// time (the provider's topic space) keeps it, which spares the lookup per message.
    pub(crate) fn link(&self, address: &str) -> Arc<SenderLink> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        match links.get(address) {
            Some(link) => link.clone(),
            None => {
                if links.len() >= MAX_LINKS {
                    // Links nobody is sending on right now; dropping one detaches it.
                    links.retain(|_, l| Arc::strong_count(l) > 1);
                }
                let link = Arc::new(SenderLink::new(self.shared.clone(), address.to_owned()));
                links.insert(address.to_owned(), link.clone());
                link
            }
        }
    }

    /// Sends `message` to `address` and waits for the broker's confirmation.
    pub(crate) async fn send(&self, address: &str, message: OutgoingMessage) -> Result<()> {
        self.link(address).send(message).await
    }
}
