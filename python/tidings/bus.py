"""The bus: emit, subscribe (broadcast or group), call, serve and the start-up barrier over
RabbitMQ, exactly as docs/wire-format-amqp091.md describes, so Python and Rust peers share one
bus.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Iterable, Optional, Union

import aio_pika
import aiormq

from . import codec, routing
from .envelope import (
    DEAD_REASON,
    STATUS,
    Envelope,
    check_header_names,
    from_incoming,
    new_id,
    to_properties,
)
from .errors import CallTimeout, DecodeError, NoResponders, RemoteError, TidingsError
from .url import parse

log = logging.getLogger("tidings")
log.addHandler(logging.NullHandler())  # the application decides where warnings go

BROADCAST = "broadcast"
"""The dead-letter queue name of broadcast subscriptions."""


@dataclass(frozen=True)
class Message:
    """A received event: the decoded ``value`` and its envelope's metadata."""

    value: Any
    envelope: Envelope

    @property
    def routing_key(self) -> str:
        """The key it was published under."""
        return self.envelope.routing_key

    @property
    def emitter(self) -> str:
        """Who published it: ``host.kind.id``."""
        return self.envelope.emitter

    @property
    def attempt(self) -> int:
        """Which delivery attempt this is, starting at 1."""
        return self.envelope.attempt

    @property
    def headers(self) -> dict[str, str]:
        """The application headers."""
        return self.envelope.headers

    @property
    def event(self) -> str:
        """The event name the sender gave, or ``""``."""
        return self.envelope.event


Handler = Callable[[Message], Union[Awaitable[Any], Any]]
"""A subscription's handler: an async (or plain) function of the message."""
ServeHandler = Callable[[Any], Union[Awaitable[Any], Any]]
"""An RPC server's handler: an async (or plain) function from the request to the reply."""


def _host_word() -> str:
    raw = socket.gethostname()
    word = "".join(c if (c.isascii() and c.isalnum()) or c in "_-" else "-" for c in raw)
    return word or "localhost"


class _Shared:
    """What every handle over one connection shares."""

    def __init__(self, connection: aio_pika.abc.AbstractRobustConnection, exchange: str, publish_timeout: float):
        self.connection = connection
        self.exchange = exchange
        self.publish_timeout = publish_timeout
        self.channel: Optional[aio_pika.abc.AbstractChannel] = None
        self.inbox: Optional[aio_pika.abc.AbstractQueue] = None
        self.inbox_lock = asyncio.Lock()
        self.pending: dict[str, asyncio.Future[Envelope]] = {}
        self.subscriptions: set[Subscription] = set()
        self.dead_declared: set[str] = set()

    async def open(self) -> None:
        # Publisher confirms, and a returned mandatory publish raises: that is "no responders".
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        await self.channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)

    async def publish(self, envelope: Envelope, *, exchange: Optional[str] = None, routing_key: Optional[str] = None, mandatory: bool = False) -> None:
        """Publishes to the bus's exchange under the envelope's key, or, with ``routing_key``,
        straight to that queue through the default exchange; returns once confirmed."""
        assert self.channel is not None
        direct = routing_key is not None
        raw = await self.channel.get_underlay_channel()
        try:
            confirm = await raw.basic_publish(
                envelope.body,
                exchange="" if direct else (exchange or self.exchange),
                routing_key=routing_key if direct else envelope.routing_key,
                properties=to_properties(envelope, direct),
                mandatory=mandatory,
                timeout=self.publish_timeout,
            )
        except aiormq.exceptions.DeliveryError as e:
            if e.frame is not None and isinstance(e.frame, aiormq.spec.Basic.Return):
                raise NoResponders(
                    f"no queue is bound to routing key {envelope.routing_key!r} on exchange "
                    f"{self.exchange!r}: nobody subscribes to it"
                ) from None
            raise TidingsError(f"the broker refused the message: {e}") from None
        except asyncio.TimeoutError:
            raise TidingsError(f"the broker did not confirm a publish within {self.publish_timeout} s") from None
        if isinstance(confirm, aiormq.spec.Basic.Nack):
            raise TidingsError("the broker refused the message (nack)")

    async def ensure_inbox(self) -> str:
        """The connection's reply inbox: a server-named exclusive queue consumed without acks."""
        async with self.inbox_lock:
            if self.inbox is None:
                channel = await self.connection.channel()
                queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
                await queue.consume(self._on_reply, no_ack=True)
                self.inbox = queue
            return self.inbox.name

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        envelope = from_incoming(message)
        waiting = self.pending.pop(envelope.correlation_id or "", None)
        if waiting is not None and not waiting.done():
            waiting.set_result(envelope)
        # Otherwise a late reply: dropped.

    async def dead_letter(self, envelope: Envelope, reason: str, source: str, queue_name: str) -> None:
        """Publishes the dead letter of ``envelope`` to ``<exchange>.dead.<queue_name>``."""
        queue = f"{self.exchange}.dead.{queue_name}"
        if queue not in self.dead_declared:
            assert self.channel is not None
            await self.channel.declare_queue(queue, durable=True)
            self.dead_declared.add(queue)
        await self.publish(envelope.into_dead_letter(reason, source), routing_key=queue)


class Subscription:
    """A running subscription or RPC server; :meth:`cancel` stops it."""

    def __init__(self, shared: _Shared, channel: aio_pika.abc.AbstractChannel, queue: aio_pika.abc.AbstractQueue, concurrency: int, group: bool):
        self._shared = shared
        self._group = group
        self._channel = channel
        self.queue = queue
        """The queue it consumes."""
        self._tag: Optional[str] = None
        self._work: asyncio.Queue[Optional[aio_pika.abc.AbstractIncomingMessage]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._concurrency = concurrency

    async def _start(self, process: Callable[[aio_pika.abc.AbstractIncomingMessage], Awaitable[None]]) -> None:
        async def work() -> None:
            while True:
                message = await self._work.get()
                if message is None:
                    return
                try:
                    await process(message)
                except Exception:  # pragma: no cover - settle failures; the broker redelivers
                    log.exception("could not settle a delivery; the broker will redeliver it")

        self._workers = [asyncio.create_task(work()) for _ in range(self._concurrency)]
        self._tag = await self.queue.consume(self._work.put)
        self._shared.subscriptions.add(self)

    async def cancel(self) -> None:
        """Stops taking messages, finishes the ones being handled and gives the rest back."""
        self._shared.subscriptions.discard(self)
        if self._tag is not None and not self._channel.is_closed:
            try:
                await self.queue.cancel(self._tag)
            except Exception:  # pragma: no cover
                pass
        self._tag = None
        # Prefetched deliveries no worker started go back unchanged (same attempt), as in Rust:
        # a copy to the same queue, then an ack (a reject would set the redelivered flag, which
        # counts as an attempt). A broadcast queue goes away with its consumer: nothing to give.
        while not self._work.empty():
            message = self._work.get_nowait()
            if message is None:
                continue
            if self._group and not self._channel.is_closed:
                try:
                    await self._shared.publish(from_incoming(message), routing_key=self.queue.name)
                    await message.ack()
                except Exception:  # pragma: no cover - the broker redelivers it on close
                    log.debug("could not give back a prefetched delivery; the broker redelivers it")
        for _ in self._workers:
            self._work.put_nowait(None)
        await asyncio.gather(*self._workers, return_exceptions=True)
        if not self._channel.is_closed:
            # Closing the channel gives prefetched, unhandled messages back to the broker.
            await self._channel.close()


class Bus:
    """A connection to a tidings bus. Handles made by :meth:`with_identity` and
    :meth:`as_participant` share the connection."""

    def __init__(self, shared: _Shared, identity: str):
        self._shared = shared
        self.identity = routing.check_identity(identity)
        """Who this handle emits as: ``host.kind.id``."""

    @property
    def exchange(self) -> str:
        """The bus's topic exchange (the URL's ``exchange`` option)."""
        return self._shared.exchange

    @property
    def connection(self) -> aio_pika.abc.AbstractRobustConnection:
        """The underlying aio-pika connection."""
        return self._shared.connection

    def with_identity(self, identity: str) -> "Bus":
        """This connection, emitting as ``identity`` (three words, ``host.kind.id``)."""
        return Bus(self._shared, identity)

    def as_participant(self, kind: str, id: str) -> "Bus":
        """This connection, emitting as ``<this host>.<kind>.<id>``."""
        return Bus(self._shared, f"{_host_word()}.{kind}.{id}")

    # --- sending ---------------------------------------------------------------------------

    def _envelope(self, key: str, value: Any, event: str, headers: Optional[dict[str, str]], ttl: Optional[float]) -> Envelope:
        routing.check_key(key)
        headers = dict(headers or {})
        check_header_names(headers)
        envelope = Envelope(key, codec.JSON, codec.encode(value), event=event, headers=headers, emitter=self.identity)
        if ttl is not None:
            envelope.ttl_ns = int(round(ttl * 1e9))
        return envelope

    async def emit(self, key: str, value: Any, *, event: str = "", headers: Optional[dict[str, str]] = None, ttl: Optional[float] = None) -> str:
        """Publishes ``value`` as JSON under ``key``; returns the message id once the broker has it.

        ``event`` is the event name Rust receivers check (their type's ``Event::NAME``; empty:
        unchecked); ``ttl`` in seconds."""
        envelope = self._envelope(key, value, event, headers, ttl)
        await self._shared.publish(envelope)
        return envelope.id

    async def cast(self, name: str, value: Any, *, event: str = "", headers: Optional[dict[str, str]] = None) -> None:
        """Sends a request to one server of ``name`` without waiting for a reply."""
        await self._shared.publish(self._envelope(name, value, event, headers, None), mandatory=True)

    async def call(self, name: str, value: Any, *, timeout: float = 30.0, event: str = "", headers: Optional[dict[str, str]] = None) -> Any:
        """Calls the RPC service ``name`` and returns the decoded reply.

        Raises :class:`RemoteError` with the server's error text, :class:`CallTimeout` after
        ``timeout`` seconds (the request expires on the broker then too) and
        :class:`NoResponders` when nobody serves ``name``."""
        inbox = await self._shared.ensure_inbox()
        envelope = self._envelope(name, value, event, headers, timeout)
        envelope.correlation_id = new_id()
        envelope.reply_to = inbox
        waiting: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._shared.pending[envelope.correlation_id] = waiting
        try:
            await self._shared.publish(envelope, mandatory=True)
            reply = await asyncio.wait_for(waiting, timeout)
        except asyncio.TimeoutError:
            raise CallTimeout(f"no reply to call {name!r} within {timeout} s") from None
        finally:
            self._shared.pending.pop(envelope.correlation_id, None)
        if reply.headers.get(STATUS) == "error":
            raise RemoteError(reply.body.decode("utf-8", "replace"), reply.emitter, name)
        return codec.decode(reply.content_type, reply.body)

    # --- receiving -------------------------------------------------------------------------

    async def _consume(self, queue_name: str, pattern: str, *, group: bool, durable: bool, prefetch: int, concurrency: int) -> Subscription:
        channel = await self._shared.connection.channel()
        await channel.set_qos(prefetch_count=max(prefetch, concurrency, 1))
        if group:
            queue = await channel.declare_queue(queue_name, durable=durable, auto_delete=not durable)
        else:
            queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(self._shared.exchange, routing_key=pattern)
        return Subscription(self._shared, channel, queue, concurrency, group)

    async def subscribe(
        self,
        pattern: str,
        handler: Handler,
        *,
        group: Optional[str] = None,
        durable: bool = True,
        event: str = "",
        max_attempts: int = 3,
        prefetch: int = 32,
        concurrency: int = 1,
        emitter: Optional[str] = None,
        dead_letter_queue: Optional[str] = None,
    ) -> Subscription:
        """Calls ``handler(message)`` for every event whose key matches ``pattern``.

        Without ``group`` every subscription gets every event (broadcast); with it, each event
        goes to one member of the group, in any language. The handler returning acks; raising
        retries (``attempt`` + 1) until ``max_attempts``, then dead-letters with the reason
        ``handler failed on attempt N of M: <error>``. A body that does not decode, or another
        ``event`` name than the one given, is dead-lettered at once. ``emitter``: only handle
        messages whose emitter matches this pattern (others are acked unseen)."""
        routing.check_pattern(pattern)
        if emitter is not None:
            routing.check_pattern(emitter)
        if group is not None:
            routing.check_key(group)
        queue_name = f"{self._shared.exchange}.group.{group}" if group else ""
        dead = dead_letter_queue or group or BROADCAST
        subscription = await self._consume(queue_name, pattern, group=group is not None, durable=durable, prefetch=prefetch, concurrency=concurrency)
        source = group or BROADCAST
        max_attempts = max(1, max_attempts)

        async def process(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            envelope = from_incoming(message)
            if emitter is not None and not routing.matches(emitter, envelope.emitter):
                await message.ack()
                return
            try:
                value = _decode(envelope, event)
            except DecodeError as e:
                await self._shared.dead_letter(envelope, str(e), source, dead)
                await message.ack()
                return
            try:
                await _run(handler, Message(value, envelope))
            except Exception as e:  # the handler failed: retry or dead-letter
                await self._fail(message, envelope, str(e) or type(e).__name__, max_attempts, source, dead, subscription)
                return
            await message.ack()

        await subscription._start(process)
        return subscription

    async def _fail(self, message: aio_pika.abc.AbstractIncomingMessage, envelope: Envelope, error: str, max_attempts: int, source: str, dead: str, subscription: Subscription) -> None:
        if envelope.attempt < max_attempts:
            if envelope.is_expired():
                await message.ack()
                return
            # The retry: a copy with attempt + 1 straight to the same queue, confirmed, then the
            # original acked (a crash between the two leaves both, never neither).
            await self._shared.publish(replace(envelope, attempt=envelope.attempt + 1), routing_key=subscription.queue.name)
        else:
            reason = f"handler failed on attempt {envelope.attempt} of {max_attempts}: {error}"
            log.warning("dead-lettering %s: %s", envelope.id, reason)
            await self._shared.dead_letter(envelope, reason, source, dead)
        await message.ack()

    async def serve(
        self,
        name: str,
        handler: ServeHandler,
        *,
        request_event: str = "",
        reply_event: str = "",
        max_attempts: int = 3,
        prefetch: int = 32,
        concurrency: int = 1,
    ) -> Subscription:
        """Serves the RPC ``name``: ``handler(request)`` returns the reply. Its servers, in any
        language, form the group ``name``. An exception goes back to the caller as its error
        text (a remote error); a request that does not decode gets an error reply and is
        dead-lettered. A request without ``reply_to`` (a cast) that fails is retried like a
        subscription's message."""
        routing.check_key(name)
        subscription = await self._consume(f"{self._shared.exchange}.group.{name}", name, group=True, durable=True, prefetch=prefetch, concurrency=concurrency)
        max_attempts = max(1, max_attempts)

        async def process(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            request = from_incoming(message)
            poison: Optional[str] = None
            try:
                value = _decode(request, request_event)
            except DecodeError as e:
                poison = str(e)
            error: Optional[str] = poison
            reply_value: Any = None
            if poison is None:
                try:
                    reply_value = await _run(handler, value)
                except Exception as e:
                    error = str(e) or type(e).__name__
            if request.reply_to is not None:
                await self._reply(request, reply_value, error, reply_event)
            if poison is not None:
                await self._shared.dead_letter(request, poison, name, name)
            elif error is not None and request.reply_to is None:
                await self._fail(message, request, error, max_attempts, name, name, subscription)
                return
            await message.ack()

        await subscription._start(process)
        return subscription

    async def _reply(self, request: Envelope, value: Any, error: Optional[str], reply_event: str) -> None:
        if error is None:
            try:
                reply = Envelope(request.routing_key, codec.JSON, codec.encode(value), event=reply_event, headers={STATUS: "ok"})
            except (TypeError, ValueError) as e:
                error = f"server could not encode its reply: {e}"
        if error is not None:
            reply = Envelope(request.routing_key, codec.TEXT, error.encode(), headers={STATUS: "error"})
        reply.correlation_id = request.correlation_id
        reply.emitter = self.identity
        try:
            await self._shared.publish(reply, routing_key=request.reply_to)
        except TidingsError as e:
            log.warning("could not send an RPC reply to %s; dropped it: %s", request.reply_to, e)

    # --- barrier and life cycle ------------------------------------------------------------

    def barrier(self, name: str) -> "Barrier":
        """The start-up barrier ``name`` (docs/wire-format.md, "Start-up barrier")."""
        routing.check_key(name)
        return Barrier(self, name)

    async def close(self) -> None:
        """Cancels every subscription (finishing handlers in flight) and closes the connection."""
        for subscription in list(self._shared.subscriptions):
            await subscription.cancel()
        await self._shared.connection.close()

    async def __aenter__(self) -> "Bus":
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.close()


async def _run(handler: Callable[[Any], Any], argument: Any) -> Any:
    """Calls a handler, awaiting its result if it is awaitable (async or plain functions)."""
    result = handler(argument)
    if inspect.isawaitable(result):
        result = await result
    return result


def _decode(envelope: Envelope, expected_event: str) -> Any:
    if expected_event and envelope.event and envelope.event != expected_event:
        raise DecodeError(f"expected event {expected_event!r} but the message carries {envelope.event!r}")
    return codec.decode(envelope.content_type, envelope.body)


READY_EVENT = "tidings_barrier_ready"
ROLL_CALL_EVENT = "tidings_barrier_roll_call"


class Barrier:
    """A start-up barrier: participants :meth:`announce` themselves once subscribed; the
    application :meth:`wait_for` s them before it emits. Interoperates with Rust's
    ``Bus::barrier``."""

    def __init__(self, bus: Bus, name: str):
        self._bus = bus
        self.name = name

    def _key(self, what: str) -> str:
        return f"tidings.barrier.{self.name}.{what}"

    async def announce(self, participant: str) -> Subscription:
        """Says that ``participant`` is ready, and answers every later roll call until the
        returned subscription is cancelled. Call it once your subscriptions exist."""
        routing.check_key(participant)
        ready = {"participant": participant}

        async def answer(_: Message) -> None:
            await self._bus.emit(self._key("ready"), ready, event=READY_EVENT)

        # Listen for roll calls *before* the first ready, so no waiter is missed.
        roll_calls = await self._bus.subscribe(self._key("roll_call"), answer, event=ROLL_CALL_EVENT)
        await self._bus.emit(self._key("ready"), ready, event=READY_EVENT)
        return roll_calls

    async def wait_for(self, expected: Iterable[str], timeout: float) -> None:
        """Returns once every participant in ``expected`` has announced itself; raises
        :class:`CallTimeout` naming the missing ones after ``timeout`` seconds."""
        missing = set(expected)
        total = len(missing)
        if not missing:
            return
        heard: asyncio.Queue[str] = asyncio.Queue()

        async def on_ready(message: Message) -> None:
            if isinstance(message.value, dict) and isinstance(message.value.get("participant"), str):
                heard.put_nowait(message.value["participant"])

        # Listen for ready *before* the roll call.
        listening = await self._bus.subscribe(self._key("ready"), on_ready, event=READY_EVENT)

        async def collect() -> None:
            await self._bus.emit(self._key("roll_call"), {}, event=ROLL_CALL_EVENT)
            while missing:
                missing.discard(await heard.get())

        try:
            await asyncio.wait_for(collect(), timeout)
        except asyncio.TimeoutError:
            raise CallTimeout(
                f"barrier {self.name!r}: {len(missing)} of {total} participants did not announce "
                f"within {timeout} s: {', '.join(sorted(missing))}"
            ) from None
        finally:
            await listening.cancel()


async def connect(url: str, *, identity: Optional[str] = None) -> Bus:
    """Connects to the bus at ``url`` (``amqp://user:pass@host:5672/vhost?exchange=NAME``).

    ``identity`` (``host.kind.id``) defaults to ``<host>.process.<pid>``, as in Rust."""
    parsed = parse(url)
    connection = await aio_pika.connect_robust(parsed.amqp_url)
    shared = _Shared(connection, parsed.exchange, parsed.publish_timeout)
    try:
        await shared.open()
    except Exception:
        await connection.close()
        raise
    return Bus(shared, identity or f"{_host_word()}.process.{os.getpid()}")
