//! One queue (ready messages, consumers with prefetch credit, unsettled deliveries) and the
//! named queues of a broker.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use tidings_core::driver::{Completion, Outcome, Settle};
use tidings_core::envelope::now_ms;
use tidings_core::{Envelope, Result};
use tokio::sync::mpsc;

/// A message handed to a consumer: its delivery tag and the shared envelope. The consumer
/// wraps it into a [`Delivery`] on its own thread, so the publisher never touches the reference
/// counts the consumer's settling uses.
pub(crate) type Handed = (u64, Arc<Envelope>);

/// A consumer attached to a queue.
struct Slot {
    id: u64,
    tx: mpsc::UnboundedSender<Handed>,
    prefetch: usize,
    in_flight: usize,
}

/// Where a consumer's failed messages go.
#[derive(Debug)]
pub(crate) struct DeadLetterTarget {
    pub(crate) queue: String,
    pub(crate) from: String,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Arc<Envelope>>,
    consumers: Vec<Slot>,
    /// Round-robin position among consumers.
    next: usize,
    unacked: HashMap<u64, (u64, Arc<Envelope>), TagHasher>,
    next_tag: u64,
    deleted: bool,
}

/// Hashes delivery tags (sequential u64s) with one multiplication: SipHash's protection against
/// chosen keys is not needed for numbers the queue hands out itself.
#[derive(Default, Clone, Copy)]
struct TagHasher;

impl std::hash::BuildHasher for TagHasher {
    type Hasher = TagHash;
    fn build_hasher(&self) -> TagHash {
        TagHash(0)
    }
}

struct TagHash(u64);

impl std::hash::Hasher for TagHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing spreads sequential tags over the high bits the table probes with.
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A queue of the in-process broker.
pub(crate) struct Queue {
    pub(crate) name: String,
    /// Kept (with its messages) when the last consumer leaves.
    pub(crate) durable: bool,
    state: Mutex<State>,
    /// The queues it belongs to: where its dead letters go.
    siblings: Weak<Queues>,
}

/// The named queues of one broker; locked only to create, find or delete one.
pub(crate) struct Queues {
    by_name: Mutex<HashMap<String, Arc<Queue>>>,
    me: Weak<Queues>,
}

impl Queues {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            by_name: Mutex::new(HashMap::new()),
            me: me.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Queue>>> {
        self.by_name.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finds or creates the queue `name`.
    pub(crate) fn declare(&self, name: &str, durable: bool) -> Arc<Queue> {
        self.lock()
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Queue {
                    name: name.to_owned(),
                    durable,
                    state: Mutex::new(State::default()),
                    siblings: self.me.clone(),
                })
            })
            .clone()
    }

    /// The queue `name`, if it exists.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Queue>> {
        self.lock().get(name).cloned()
    }

    /// The durable queue that holds the dead letters of `name`.
    pub(crate) fn dead_letters(&self, name: &str) -> Arc<Queue> {
        self.declare(&format!("dead.{name}"), true)
    }

    /// Forgets `queue`, unless another queue took its name meanwhile.
    pub(crate) fn remove(&self, queue: &Arc<Queue>) {
        let mut by_name = self.lock();
        if by_name
            .get(&queue.name)
            .is_some_and(|q| Arc::ptr_eq(q, queue))
        {
            by_name.remove(&queue.name);
        }
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way that matters
        // more than losing the broker, so recover the guard instead of propagating the poison.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a message and hands out what consumers have credit for.
    pub(crate) fn push(self: &Arc<Self>, envelope: Arc<Envelope>) {
        let mut state = self.lock();
        if state.deleted {
            return;
        }
        state.ready.push_back(envelope);
        self.dispatch(&mut state, None);
    }

    /// Attaches a consumer; returns its id and delivery channel.
    pub(crate) fn attach(
        self: &Arc<Self>,
        id: u64,
        prefetch: usize,
    ) -> mpsc::UnboundedReceiver<Handed> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.lock();
        state.consumers.push(Slot {
            id,
            tx,
            prefetch: prefetch.max(1),
            in_flight: 0,
        });
        self.dispatch(&mut state, None);
        rx
    }

    /// Detaches a consumer; its unsettled deliveries go back to the front of the queue in
    /// their original order. `crashed` counts the lost delivery as an attempt, as the
    /// consumer may have died of this very message. Returns true when the queue should be
    /// deleted (not durable, no consumers left).
    pub(crate) fn detach(self: &Arc<Self>, id: u64, crashed: bool) -> bool {
        let mut state = self.lock();
        let Some(pos) = state.consumers.iter().position(|s| s.id == id) else {
            return false;
        };
        state.consumers.remove(pos);
        let mut tags: Vec<u64> = state
            .unacked
            .iter()
            .filter(|(_, (owner, _))| *owner == id)
            .map(|(tag, _)| *tag)
            .collect();
        tags.sort_unstable();
        for tag in tags.into_iter().rev() {
            if let Some((_, mut envelope)) = state.unacked.remove(&tag) {
                if crashed {
                    Arc::make_mut(&mut envelope).attempt += 1;
                }
                state.ready.push_front(envelope);
            }
        }
        let delete = !self.durable && state.consumers.is_empty();
        if delete {
            state.deleted = true;
            state.ready.clear();
        } else {
            self.dispatch(&mut state, None);
        }
        delete
    }

    /// Hands ready messages to consumers with credit, round robin, skipping `avoid` when
    /// another consumer can take the message.
    fn dispatch(self: &Arc<Self>, state: &mut State, avoid: Option<u64>) {
        while !state.ready.is_empty() && !state.consumers.is_empty() {
            let n = state.consumers.len();
            let mut chosen = None;
            let mut fallback = None;
            for step in 0..n {
                let i = (state.next + step) % n;
                let slot = &state.consumers[i];
                if slot.in_flight < slot.prefetch && !slot.tx.is_closed() {
                    if Some(slot.id) == avoid && n > 1 {
                        fallback.get_or_insert(i);
                        continue;
                    }
                    chosen = Some(i);
                    break;
                }
            }
            let Some(i) = chosen.or(fallback) else { return };
            let envelope = state.ready.pop_front().expect("not empty");
            if envelope.ttl.is_some() && envelope.is_expired_at(now_ms()) {
                tracing::debug!(queue = %self.name, id = %envelope.id, "message expired");
                continue;
            }
            state.next = (i + 1) % n;
            state.next_tag += 1;
            let tag = state.next_tag;
            let slot = &mut state.consumers[i];
            slot.in_flight += 1;
            let owner = slot.id;
            if slot.tx.send((tag, envelope.clone())).is_err() {
                slot.in_flight -= 1;
                state.ready.push_front(envelope);
                continue;
            }
            state.unacked.insert(tag, (owner, envelope));
        }
    }

    fn settle(self: &Arc<Self>, tag: u64, outcome: Outcome, target: &DeadLetterTarget) {
        let mut state = self.lock();
        let Some((owner, mut envelope)) = state.unacked.remove(&tag) else {
            // Already given back because its consumer went away: nothing to settle.
            return;
        };
        if let Some(slot) = state.consumers.iter_mut().find(|s| s.id == owner) {
            slot.in_flight -= 1;
        }
        let mut avoid = None;
        match outcome {
            Outcome::Ack => {}
            Outcome::Requeue => {
                state.ready.push_front(envelope);
                avoid = Some(owner);
            }
            Outcome::Retry => {
                Arc::make_mut(&mut envelope).attempt += 1;
                state.ready.push_front(envelope);
                avoid = Some(owner);
            }
            Outcome::Decline { headers } => {
                Arc::make_mut(&mut envelope).headers.extend(headers);
                state.ready.push_front(envelope);
                avoid = Some(owner);
            }
            Outcome::DeadLetter { reason } => {
                let dead = Arc::unwrap_or_clone(envelope).into_dead_letter(&reason, &target.from);
                if let Some(queues) = self.siblings.upgrade() {
                    // Another queue's lock: release ours first so two queues never lock in turn.
                    self.dispatch(&mut state, None);
                    drop(state);
                    queues.dead_letters(&target.queue).push(Arc::new(dead));
                    return;
                }
            }
            // Outcomes added later: given back unchanged, as a requeue.
            _ => {
                state.ready.push_front(envelope);
                avoid = Some(owner);
            }
        }
        self.dispatch(&mut state, avoid);
    }
}

/// Settles one delivery of the in-process broker.
pub(crate) struct MemorySettle {
    pub(crate) queue: Arc<Queue>,
    pub(crate) tag: u64,
    pub(crate) dead_letters: Arc<DeadLetterTarget>,
}

impl Settle for MemorySettle {
    fn settle(self: Box<Self>, outcome: Outcome) -> Completion<'static, Result<()>> {
        self.queue.settle(self.tag, outcome, &self.dead_letters);
        Completion::done(Ok(()))
    }
}
