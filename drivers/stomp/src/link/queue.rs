//! The way out: one queue of encoded frames shared by every handle and the connection's task.
//!
//! Whoever queues a frame also writes it when the socket takes it at once (the usual case), so
//! a SEND or an ACK costs no hop to another task and no thread wake-up. Only what the socket
//! does not take at once (it is full, or a write failed) is left to the connection's task
//! ([`WriteQueue::poll_flush`]), and what is queued while the connection is down is written on
//! the next one, after the re-subscriptions ([`WriteQueue::attach`]). Frames leave in the order
//! they were queued. Frames that only make sense on the connection they were issued for
//! (ACK/NACK, whose ids die with it) carry its generation and are dropped on any other
//! ([`WriteQueue::is_on`]).

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;
use tokio_util::codec::Encoder;

use crate::frame::{Codec, Outgoing};

/// The writing half of a connection.
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// What [`WriteQueue::write_now`] left for the connection's task to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Left {
    /// Nothing: everything is written, or nobody may write now and the task knows it.
    Nothing,
    /// The socket is full, or a write failed: wake the task.
    ForTheTask,
}

/// Encoded frames waiting for the socket, and the socket.
pub(crate) struct WriteQueue {
    /// The writing half of the connection that is up.
    writer: Option<Writer>,
    /// The generation of that connection.
    generation: u64,
    /// Encoded frames not written yet, oldest first.
    queue: BytesMut,
    codec: Codec,
    /// The connection's task waits for the socket to take more. Only it writes meanwhile: the
    /// socket keeps one waker for writing, and a caller's write would replace it.
    blocked: bool,
    /// A write failed; the connection's task ends the connection.
    failed: Option<String>,
    /// A caller will write the queue in a moment (see `Link::request`): others only queue.
    pub(crate) armed: bool,
    /// Something was written since the last heart-beat check.
    wrote: bool,
    /// The link is closed: nothing more is queued.
    closed: bool,
}

impl std::fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteQueue")
            .field("connected", &self.writer.is_some())
            .field("generation", &self.generation)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl Default for WriteQueue {
    fn default() -> Self {
        Self {
            writer: None,
            generation: 0,
            queue: BytesMut::with_capacity(8 * 1024),
            codec: Codec::default(),
            blocked: false,
            failed: None,
            armed: false,
            wrote: false,
            closed: false,
        }
    }
}

impl WriteQueue {
    /// Whether a connection is up.
    pub(crate) fn is_connected(&self) -> bool {
        self.writer.is_some()
    }

    /// Whether the connection of `generation` is the one up: a settling frame for any other
    /// is dropped (its ack id means nothing there).
    pub(crate) fn is_on(&self, generation: u64) -> bool {
        self.writer.is_some() && self.generation == generation
    }

    /// Whether the link is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a caller may write: the connection is up and its task is not at it.
    pub(crate) fn writable(&self) -> bool {
        self.writer.is_some() && !self.blocked && self.failed.is_none()
    }

    /// Whether nothing waits to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Encodes `frame` at the end of the queue.
    pub(crate) fn push(&mut self, frame: Outgoing) {
        if self.closed {
            return;
        }
        if let Err(e) = self.codec.encode(frame, &mut self.queue) {
            tracing::warn!(error = %e, "a frame could not be encoded; not sent");
        }
    }

    /// Whether something was written since the last call.
    pub(crate) fn take_wrote(&mut self) -> bool {
        std::mem::take(&mut self.wrote)
    }

    /// A new connection of `generation` is up: `first` (the re-subscriptions) goes ahead of
    /// what was queued while it was down. The connection's task writes it all before any
    /// caller writes (the queue is left blocked until [`poll_flush`](Self::poll_flush)).
    pub(crate) fn attach(&mut self, writer: Writer, generation: u64, first: Vec<Outgoing>) {
        let queued = std::mem::take(&mut self.queue);
        for frame in first {
            self.push(frame);
        }
        self.queue.extend_from_slice(&queued);
        self.writer = Some(writer);
        self.generation = generation;
        self.blocked = true;
        self.failed = None;
        self.armed = false;
    }

    /// The connection ended: what it did not write is dropped (whoever waits for a receipt
    /// is told, and re-sends), and nothing is written until the next one.
    pub(crate) fn detach(&mut self) {
        self.writer = None;
        self.blocked = false;
        self.failed = None;
        self.armed = false;
        self.queue.clear();
    }

    /// The link is closed for good: nothing more is queued or written.
    pub(crate) fn close(&mut self) {
        self.detach();
        self.closed = true;
    }

    /// Writes what the socket takes now, in the caller's task. What is left (the socket is
    /// full, or the write failed) is the connection's task's to finish.
    pub(crate) fn write_now(&mut self) -> Left {
        if self.queue.is_empty() || !self.writable() {
            return Left::Nothing;
        }
        // Nothing waits on this waker: when the socket is full the connection's task is woken,
        // and it polls the socket with its own.
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_write(&mut cx) {
            Poll::Ready(Ok(())) => Left::Nothing,
            Poll::Pending => {
                self.blocked = true;
                Left::ForTheTask
            }
            Poll::Ready(Err(e)) => {
                self.failed = Some(e.to_string());
                Left::ForTheTask
            }
        }
    }

    /// Writes everything queued, waiting for the socket as long as it takes (the connection's
    /// task only). `Err` says why the connection is unusable.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        if let Some(why) = self.failed.take() {
            return Poll::Ready(Err(why));
        }
        match self.poll_write(cx) {
            Poll::Ready(Ok(())) => {
                self.blocked = false;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                self.blocked = true;
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.to_string())),
        }
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
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::frame::settle;

    /// A socket that takes `room` bytes, then is full (or fails, if `broken`).
    #[derive(Clone, Default)]
    struct Socket {
        written: Arc<Mutex<Vec<u8>>>,
        room: Arc<Mutex<usize>>,
        broken: Arc<Mutex<bool>>,
    }

    impl Socket {
        fn with_room(room: usize) -> Self {
            let s = Self::default();
            *s.room.lock().unwrap() = room;
            s
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.written.lock().unwrap()).into_owned()
        }

        fn commands(&self) -> Vec<String> {
            self.text()
                .split('\0')
                .filter_map(|f| f.trim_start_matches('\n').lines().next().map(str::to_owned))
                .filter(|c| !c.is_empty())
                .collect()
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if *self.broken.lock().unwrap() {
                return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Poll::Pending;
            }
            let n = buf.len().min(*room);
            *room -= n;
            self.written.lock().unwrap().extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frame(command: &str, id: &str) -> Outgoing {
        Outgoing::Raw(settle(command, id), None)
    }

    fn flush(queue: &mut WriteQueue) -> Poll<Result<(), String>> {
        queue.poll_flush(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn frames_queued_while_down_follow_the_resubscriptions_in_order() {
        let mut queue = WriteQueue::default();
        queue.push(frame("SEND", "1"));
        queue.push(frame("SEND", "2"));
        assert_eq!(
            queue.write_now(),
            Left::Nothing,
            "no connection: only queued"
        );
        let socket = Socket::with_room(usize::MAX);
        queue.attach(
            Box::new(socket.clone()),
            1,
            vec![frame("SUBSCRIBE", "a"), frame("SUBSCRIBE", "b")],
        );
        assert!(!queue.writable(), "the connection's task writes first");
        assert_eq!(flush(&mut queue), Poll::Ready(Ok(())));
        assert_eq!(
            socket.commands(),
            ["SUBSCRIBE", "SUBSCRIBE", "SEND", "SEND"]
        );
        assert!(socket.text().find("id:a").unwrap() < socket.text().find("id:b").unwrap());
        assert!(socket.text().find("id:1").unwrap() < socket.text().find("id:2").unwrap());
        assert!(queue.writable());
        queue.push(frame("ACK", "3"));
        assert_eq!(queue.write_now(), Left::Nothing);
        assert_eq!(socket.commands().last().unwrap(), "ACK");
        assert!(queue.take_wrote() && !queue.take_wrote());
    }

    #[test]
    fn a_full_socket_leaves_the_rest_to_the_task_and_callers_only_queue() {
        let mut queue = WriteQueue::default();
        let socket = Socket::with_room(10);
        queue.attach(Box::new(socket.clone()), 1, Vec::new());
        assert_eq!(flush(&mut queue), Poll::Ready(Ok(())));
        queue.push(frame("ACK", "first-long-id"));
        assert_eq!(queue.write_now(), Left::ForTheTask);
        assert!(!queue.writable(), "blocked until the task flushes");
        queue.push(frame("ACK", "second"));
        assert_eq!(
            queue.write_now(),
            Left::Nothing,
            "queued behind the blocked write"
        );
        assert_eq!(flush(&mut queue), Poll::Pending);
        *socket.room.lock().unwrap() = usize::MAX;
        assert_eq!(flush(&mut queue), Poll::Ready(Ok(())));
        assert!(queue.is_empty() && queue.writable());
        let text = socket.text();
        assert!(text.find("first-long-id").unwrap() < text.find("second").unwrap());
    }

    #[test]
    fn a_failed_write_ends_the_connection_through_the_task() {
        let mut queue = WriteQueue::default();
        let socket = Socket::with_room(usize::MAX);
        queue.attach(Box::new(socket.clone()), 1, Vec::new());
        assert_eq!(flush(&mut queue), Poll::Ready(Ok(())));
        *socket.broken.lock().unwrap() = true;
        queue.push(frame("ACK", "x"));
        assert_eq!(queue.write_now(), Left::ForTheTask);
        assert!(!queue.writable());
        assert!(matches!(flush(&mut queue), Poll::Ready(Err(why)) if why.contains("broken")));
    }

    #[test]
    fn settling_frames_belong_to_their_generation() {
        let mut queue = WriteQueue::default();
        assert!(!queue.is_on(0), "nothing is up");
        queue.attach(Box::new(Socket::with_room(usize::MAX)), 1, Vec::new());
        assert!(queue.is_on(1) && !queue.is_on(2));
        queue.push(frame("ACK", "of-gen-1"));
        queue.detach();
        assert!(
            queue.is_empty(),
            "what a lost connection did not write is dropped"
        );
        assert!(!queue.is_on(1));
        let socket = Socket::with_room(usize::MAX);
        queue.attach(Box::new(socket.clone()), 2, Vec::new());
        assert!(queue.is_on(2) && !queue.is_on(1));
        assert_eq!(flush(&mut queue), Poll::Ready(Ok(())));
        assert!(!socket.text().contains("of-gen-1"));
    }

    #[test]
    fn a_closed_queue_takes_nothing() {
        let mut queue = WriteQueue::default();
        queue.close();
        queue.push(frame("SEND", "1"));
        assert!(queue.is_empty() && queue.is_closed() && !queue.is_connected());
    }
}
