//! Matching RECEIPT and ERROR frames to the frames that asked for a receipt.
//!
//! Every frame whose outcome a caller waits for (a SEND, a SUBSCRIBE, the DISCONNECT) carries a
//! `receipt` header with an id from [`Receipts::next_id`]; the waiter is registered under that
//! id before the frame is queued. A RECEIPT confirms it, an ERROR naming it (`receipt-id`)
//! refuses it, and the end of the connection fails every waiter still registered, since those
//! frames may or may not have been processed.

use std::collections::HashMap;

use tokio::sync::oneshot;

/// Why a frame that asked for a receipt did not get one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection dropped first (for the reason given); the frame may or may not have
    /// been processed.
    Lost(String),
    /// The broker answered with an ERROR frame about this very frame.
    Broker(String),
    /// The link is closed.
    Closed,
}

/// Where the outcome of one frame goes.
pub(crate) type ReceiptTx = oneshot::Sender<std::result::Result<(), Failure>>;

/// A receipt being waited for, and the subscription it confirms, if any.
#[derive(Debug)]
pub(crate) struct Waiter {
    /// Who waits; `None` for a re-subscription nobody waits for.
    pub(crate) tx: Option<ReceiptTx>,
    /// The subscription id when the frame is a SUBSCRIBE.
    pub(crate) subscription: Option<String>,
}

impl Waiter {
    /// A waiter for a frame that is not a SUBSCRIBE.
    pub(crate) fn of(tx: ReceiptTx) -> Self {
        Self {
            tx: Some(tx),
            subscription: None,
        }
    }

    fn answer(self, outcome: std::result::Result<(), Failure>) {
        if let Some(tx) = self.tx {
            let _ = tx.send(outcome);
        }
    }
}

/// The receipts one link waits for, across its connections.
#[derive(Debug, Default)]
pub(crate) struct Receipts {
    waiting: HashMap<String, Waiter>,
    next: u64,
}

impl Receipts {
    /// A receipt id never used before on this link (ids of a dropped connection are never
    /// reused, so a late RECEIPT cannot confirm the wrong frame).
    pub(crate) fn next_id(&mut self) -> String {
        self.next += 1;
        format!("r{}", self.next)
    }

    /// Registers who waits for receipt `id`.
    pub(crate) fn expect(&mut self, id: String, waiter: Waiter) {
        self.waiting.insert(id, waiter);
    }

    /// A RECEIPT for `id` came: its waiter learns the frame was processed. Unknown ids (a
    /// receipt for a frame of a connection that already ended) are ignored.
    pub(crate) fn confirm(&mut self, id: &str) {
        if let Some(waiter) = self.waiting.remove(id) {
            waiter.answer(Ok(()));
        }
    }

    /// An ERROR about receipt `id` came: its waiter gets the broker's words. Returns the
    /// subscription the refused frame made, if it was a SUBSCRIBE (never to be re-made).
    pub(crate) fn refuse(&mut self, id: &str, why: &str) -> Option<String> {
        let waiter = self.waiting.remove(id)?;
        let subscription = waiter.subscription.clone();
        waiter.answer(Err(Failure::Broker(why.to_owned())));
        subscription
    }

    /// An ERROR that names no receipt came (RabbitMQ never names one): when exactly one
    /// SUBSCRIBE made by a caller awaits its receipt, the ERROR is taken to be about it, as
    /// [`refuse`](Self::refuse) says. Otherwise the caller would be told the connection was
    /// lost, its subscription re-made on the next connection, and refused again, forever (e.g.
    /// a group queue that exists with another `x-queue-type`).
    pub(crate) fn refuse_the_only_subscribe(&mut self, why: &str) -> Option<String> {
        let mut fresh = self
            .waiting
            .iter()
            .filter(|(_, w)| w.tx.is_some() && w.subscription.is_some())
            .map(|(id, _)| id.clone());
        let id = fresh.next()?;
        if fresh.next().is_some() {
            return None;
        }
        self.refuse(&id, why)
    }

    /// The connection ended: every waiter fails with `failure`.
    pub(crate) fn fail_all(&mut self, failure: &Failure) {
        for (_, waiter) in self.waiting.drain() {
            waiter.answer(Err(failure.clone()));
        }
    }

    /// How many receipts are awaited.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(subscription: Option<&str>) -> (Waiter, oneshot::Receiver<Result<(), Failure>>) {
        let (tx, rx) = oneshot::channel();
        (
            Waiter {
                tx: Some(tx),
                subscription: subscription.map(str::to_owned),
            },
            rx,
        )
    }

    #[test]
    fn ids_are_never_reused() {
        let mut receipts = Receipts::default();
        let ids: std::collections::HashSet<String> = (0..100).map(|_| receipts.next_id()).collect();
        assert_eq!(ids.len(), 100);
    }

    #[test]
    fn a_receipt_confirms_its_own_frame_only() {
        let mut receipts = Receipts::default();
        let (a, b) = (receipts.next_id(), receipts.next_id());
        let (wa, mut ra) = waiter(None);
        let (wb, mut rb) = waiter(None);
        receipts.expect(a.clone(), wa);
        receipts.expect(b, wb);
        receipts.confirm(&a);
        assert_eq!(ra.try_recv().unwrap(), Ok(()));
        assert!(rb.try_recv().is_err(), "b is still waiting");
        // A second or unknown receipt changes nothing.
        receipts.confirm(&a);
        receipts.confirm("r999");
        assert_eq!(receipts.len(), 1);
    }

    #[test]
    fn an_error_refuses_the_frame_it_names_and_says_which_subscription() {
        let mut receipts = Receipts::default();
        let id = receipts.next_id();
        let (w, mut rx) = waiter(Some("sub-1"));
        receipts.expect(id.clone(), w);
        assert_eq!(receipts.refuse(&id, "no such queue"), Some("sub-1".into()));
        assert_eq!(
            rx.try_recv().unwrap(),
            Err(Failure::Broker("no such queue".into()))
        );
        assert_eq!(receipts.refuse(&id, "again"), None);
        // A re-subscription nobody waits for is still reported.
        let id = receipts.next_id();
        receipts.expect(
            id.clone(),
            Waiter {
                tx: None,
                subscription: Some("sub-2".into()),
            },
        );
        assert_eq!(receipts.refuse(&id, "x"), Some("sub-2".into()));
    }

    #[test]
    fn an_error_naming_no_receipt_refuses_the_only_subscribe_in_flight() {
        let mut receipts = Receipts::default();
        // A SEND and a re-subscription (nobody waits) do not count.
        let (send, mut send_rx) = waiter(None);
        receipts.expect("r1".into(), send);
        receipts.expect(
            "r2".into(),
            Waiter {
                tx: None,
                subscription: Some("old".into()),
            },
        );
        assert_eq!(receipts.refuse_the_only_subscribe("x"), None);
        let (sub, mut sub_rx) = waiter(Some("new"));
        receipts.expect("r3".into(), sub);
        assert_eq!(
            receipts.refuse_the_only_subscribe("inequivalent arg"),
            Some("new".into())
        );
        assert_eq!(
            sub_rx.try_recv().unwrap(),
            Err(Failure::Broker("inequivalent arg".into()))
        );
        assert!(send_rx.try_recv().is_err(), "the SEND still waits");
        // Two in flight: which one is unknown, so neither is refused.
        let (a, _ra) = waiter(Some("a"));
        let (b, _rb) = waiter(Some("b"));
        receipts.expect("r4".into(), a);
        receipts.expect("r5".into(), b);
        assert_eq!(receipts.refuse_the_only_subscribe("x"), None);
    }

    #[test]
    fn the_end_of_a_connection_fails_every_waiter() {
        let mut receipts = Receipts::default();
        let mut rxs = Vec::new();
        for _ in 0..3 {
            let id = receipts.next_id();
            let (w, rx) = waiter(None);
            receipts.expect(id, w);
            rxs.push(rx);
        }
        receipts.fail_all(&Failure::Lost("node down".into()));
        for mut rx in rxs {
            assert_eq!(
                rx.try_recv().unwrap(),
                Err(Failure::Lost("node down".into()))
            );
        }
        assert_eq!(receipts.len(), 0);
        // A waiter that gave up (dropped its receiver) does not disturb the others.
        let id = receipts.next_id();
        let (w, rx) = waiter(None);
        drop(rx);
        receipts.expect(id, w);
        receipts.fail_all(&Failure::Closed);
    }
}
