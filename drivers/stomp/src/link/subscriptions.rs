//! The subscriptions a link keeps alive across connections: each is SUBSCRIBEd again, with a
//! receipt, on every new connection (on whichever node it is), and MESSAGE frames are handed
//! to the consumer of the subscription they name.

use std::collections::HashMap;

use async_stomp::{AckMode, Message, ToServer};
use tokio::sync::mpsc;

use super::receipts::{Failure, ReceiptTx, Receipts, Waiter};
use crate::frame::{Outgoing, RawMessage};

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
    /// Names the destination anew on every connection after the first it was made on.
    pub(crate) renew: Option<Renew>,
    /// Whether it was SUBSCRIBEd on some connection already.
    pub(crate) made: bool,
}

/// Gives a subscription's destination for the connection of a generation: the RPC inbox is a
/// queue of its own on each connection, so that no reply waits on a queue the broker still
/// places on a node that is gone (RabbitMQ may take long to forget a dead node's queues, and
/// meanwhile the same name can be neither consumed nor made again elsewhere).
pub(crate) struct Renew(pub(crate) Box<dyn Fn(u64) -> String + Send + Sync>);

impl std::fmt::Debug for Renew {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Renew")
    }
}

impl SubEntry {
    /// The SUBSCRIBE frame for subscription `id`, asking for `receipt`.
    pub(crate) fn frame(&self, id: &str, receipt: &str) -> Outgoing {
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
            .extra_headers
            .push((b"receipt".to_vec(), receipt.as_bytes().to_vec()));
        Outgoing::Stomp(message)
    }
}

/// Every subscription of a link, by id.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    entries: HashMap<String, SubEntry>,
    /// Subscriptions made while the connection was down: their callers wait for the next
    /// connection to confirm them.
    pending: HashMap<String, ReceiptTx>,
}

impl Subscriptions {
    /// Records subscription `id`, SUBSCRIBEd now (its receipt is awaited by the caller).
    pub(crate) fn add(&mut self, id: String, entry: SubEntry) {
        self.entries.insert(id, entry);
    }

    /// Records subscription `id` while no connection is up: the next one SUBSCRIBEs it and
    /// answers `tx`.
    pub(crate) fn add_pending(&mut self, id: String, entry: SubEntry, tx: ReceiptTx) {
        self.pending.insert(id.clone(), tx);
        self.entries.insert(id, entry);
    }

    /// Forgets subscription `id` (unsubscribed, or refused by the broker). Dropping its entry
    /// ends its consumer's stream.
    pub(crate) fn remove(&mut self, id: &str) {
        self.entries.remove(id);
        self.pending.remove(id);
    }

    /// The SUBSCRIBE frames that make every subscription again on a new connection of
    /// `generation`, each with a receipt registered in `receipts` (answering the callers of
    /// pending subscriptions). A subscription that is [renewed](Renew) gets its destination
    /// for this connection first.
    pub(crate) fn resubscribe(
        &mut self,
        receipts: &mut Receipts,
        generation: u64,
    ) -> Vec<Outgoing> {
        let mut frames = Vec::with_capacity(self.entries.len());
        for (id, entry) in &mut self.entries {
            if let Some(renew) = entry.renew.as_ref().filter(|_| entry.made) {
                entry.destination = (renew.0)(generation);
            }
            entry.made = true;
            let receipt = receipts.next_id();
            frames.push(entry.frame(id, &receipt));
            receipts.expect(
                receipt,
                Waiter {
                    tx: self.pending.remove(id),
                    subscription: Some(id.clone()),
                },
            );
        }
        frames
    }

    /// Hands `incoming` to the consumer of `subscription`. `Err` gives the message back when
    /// no such subscription exists (any more): the caller NACKs it if it has an ack id.
    pub(crate) fn deliver(
        &self,
        subscription: &str,
        incoming: Incoming,
    ) -> std::result::Result<(), Incoming> {
        match self.entries.get(subscription) {
            Some(entry) => {
                // A consumer that is gone drops it; the broker redelivers after its NACK or
                // the connection's end.
                let _ = entry.deliver.send(incoming);
                Ok(())
            }
            None => Err(incoming),
        }
    }

    /// The link is closed: every caller waiting for a subscription fails, and every consumer's
    /// stream ends.
    pub(crate) fn close(&mut self) {
        for (_, tx) in self.pending.drain() {
            let _ = tx.send(Err(Failure::Closed));
        }
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio::sync::oneshot;
    use tokio_util::codec::Encoder;

    use super::*;
    use crate::frame::Codec;

    fn entry(destination: &str) -> (SubEntry, mpsc::UnboundedReceiver<Incoming>) {
        let (deliver, rx) = mpsc::unbounded_channel();
        (
            SubEntry {
                destination: destination.into(),
                headers: vec![("x-queue-type".into(), "quorum".into())],
                ack: AckMode::ClientIndividual,
                deliver,
                renew: None,
                made: false,
            },
            rx,
        )
    }

    fn text(frames: Vec<Outgoing>) -> String {
        let mut out = BytesMut::new();
        let mut codec = Codec::default();
        for frame in frames {
            codec.encode(frame, &mut out).unwrap();
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn every_subscription_is_made_again_with_its_headers_and_a_receipt() {
        let mut subs = Subscriptions::default();
        let mut receipts = Receipts::default();
        let (a, _ra) = entry("/topic/ns.a");
        let (b, _rb) = entry("/queue/ns.inbox.x");
        subs.add("s1".into(), a);
        let (tx, mut waiting) = oneshot::channel();
        subs.add_pending("s2".into(), b, tx);
        let frames = subs.resubscribe(&mut receipts, 1);
        assert_eq!(frames.len(), 2);
        assert_eq!(receipts.len(), 2);
        let wire = text(frames);
        for expected in [
            "destination:/topic/ns.a",
            "destination:/queue/ns.inbox.x",
            "id:s1",
            "id:s2",
            "x-queue-type:quorum",
            "ack:client-individual",
            "receipt:r1",
            "receipt:r2",
        ] {
            assert!(wire.contains(expected), "{expected} in {wire}");
        }
        // The caller of the pending subscription is answered by its receipt.
        let receipt = if wire.find("id:s2").unwrap() < wire.find("receipt:r1").unwrap() {
            "r1"
        } else {
            "r2"
        };
        receipts.confirm(receipt);
        assert_eq!(waiting.try_recv().unwrap(), Ok(()));
        // The next connection makes both again; nobody waits for them any more.
        assert_eq!(subs.resubscribe(&mut receipts, 2).len(), 2);
    }

    #[test]
    fn a_renewed_subscription_has_a_destination_of_its_own_on_each_later_connection() {
        let mut subs = Subscriptions::default();
        let mut receipts = Receipts::default();
        let (mut inbox, _rx) = entry("/queue/ns.inbox.x");
        inbox.renew = Some(Renew(Box::new(|generation| {
            format!("/queue/ns.inbox.x-{generation}")
        })));
        // Made while no connection was up: the first connection makes it as it was asked.
        let (tx, _waiting) = oneshot::channel();
        subs.add_pending("s1".into(), inbox, tx);
        let first = text(subs.resubscribe(&mut receipts, 4));
        assert!(first.contains("destination:/queue/ns.inbox.x\n"), "{first}");
        let second = text(subs.resubscribe(&mut receipts, 5));
        assert!(
            second.contains("destination:/queue/ns.inbox.x-5\n"),
            "{second}"
        );
        let third = text(subs.resubscribe(&mut receipts, 9));
        assert!(
            third.contains("destination:/queue/ns.inbox.x-9\n"),
            "{third}"
        );
    }

    #[test]
    fn messages_go_to_their_subscription_and_orphans_come_back() {
        let mut subs = Subscriptions::default();
        let (a, mut ra) = entry("/topic/ns.a");
        subs.add("s1".into(), a);
        let message = |ack: &str| Incoming {
            generation: 3,
            ack: Some(ack.into()),
            message: RawMessage::for_tests(),
        };
        assert!(subs.deliver("s1", message("m1")).is_ok());
        assert_eq!(ra.try_recv().unwrap().ack.as_deref(), Some("m1"));
        let orphan = subs.deliver("gone", message("m2")).unwrap_err();
        assert_eq!(orphan.ack.as_deref(), Some("m2"));
        subs.remove("s1");
        assert!(subs.deliver("s1", message("m3")).is_err());
        assert!(ra.try_recv().is_err(), "the consumer's stream ended");
    }

    #[test]
    fn closing_fails_pending_subscribers_and_ends_consumers() {
        let mut subs = Subscriptions::default();
        let (a, mut ra) = entry("/topic/ns.a");
        let (tx, mut waiting) = oneshot::channel();
        subs.add_pending("s1".into(), a, tx);
        subs.close();
        assert_eq!(waiting.try_recv().unwrap(), Err(Failure::Closed));
        assert!(matches!(
            ra.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }
}
