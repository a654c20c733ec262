"""The envelope and its AMQP 0.9.1 mapping (docs/wire-format.md, docs/wire-format-amqp091.md).

Native properties carry what AMQP has a slot for (``message-id``, ``type``, ``content-type``,
``timestamp`` in seconds, ``expiration``, ``correlation-id``, ``reply-to``, ``app-id``); the
headers table carries the application headers and the wire fields ``tidings-attempt``,
``tidings-timestamp-ms``, ``tidings-ttl-ns`` and ``tidings-routing-key``. Decoding never fails:
what is missing or malformed becomes an empty or default field.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Mapping, Optional

import aiormq

ATTEMPT = "tidings-attempt"
TIMESTAMP_MS = "tidings-timestamp-ms"
TTL_NS = "tidings-ttl-ns"
ROUTING_KEY = "tidings-routing-key"
WIRE_HEADERS = (ATTEMPT, TIMESTAMP_MS, TTL_NS, ROUTING_KEY)

DEAD_REASON = "tidings-dead-reason"
DEAD_AT = "tidings-dead-at"
DEAD_FROM = "tidings-dead-from"
STATUS = "tidings-status"

PERSISTENT = 2
TRANSIENT = 1

_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count()


def new_id() -> str:
    """A fresh message id: ``<16 hex process prefix>-<hex counter>``, as the Rust side makes them."""
    return f"{_PREFIX}-{next(_COUNTER):x}"


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


@dataclass
class Envelope:
    """One message: the encoded body plus its metadata (the table in docs/wire-format.md)."""

    routing_key: str
    content_type: str
    body: bytes
    id: str = field(default_factory=new_id)
    event: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    timestamp_ms: int = field(default_factory=now_ms)
    ttl_ns: Optional[int] = None
    correlation_id: Optional[str] = None
    reply_to: Optional[str] = None
    emitter: str = ""
    attempt: int = 1

    def is_expired(self, at_ms: Optional[int] = None) -> bool:
        """Whether the TTL ran out (counted from ``timestamp_ms``)."""
        if self.ttl_ns is None:
            return False
        at = now_ms() if at_ms is None else at_ms
        return at >= self.timestamp_ms + math.ceil(self.ttl_ns / 1_000_000)

    def into_dead_letter(self, reason: str, source: str) -> "Envelope":
        """This envelope as a dead letter: the ``tidings-dead-*`` headers added, no TTL."""
        headers = dict(self.headers)
        headers[DEAD_REASON] = reason
        headers[DEAD_AT] = str(now_ms())
        headers[DEAD_FROM] = source
        return replace(self, headers=headers, ttl_ns=None)


def _expiration_ms(envelope: Envelope) -> int:
    """The ``expiration`` property: the milliseconds left of the TTL, counted from the first
    publish, so a retried copy never outlives the original deadline."""
    assert envelope.ttl_ns is not None
    ttl_ms = -(-envelope.ttl_ns // 1_000_000)
    now = now_ms()
    if envelope.attempt <= 1 and now - envelope.timestamp_ms < 1000:
        return ttl_ms
    return max(0, envelope.timestamp_ms + ttl_ms - now)


def to_properties(envelope: Envelope, direct: bool) -> aiormq.spec.Basic.Properties:
    """The AMQP properties of ``envelope``. ``direct``: sent to a queue through the default
    exchange, so the routing key travels in ``tidings-routing-key``."""
    headers: dict[str, Any] = {name: value for name, value in envelope.headers.items()}
    if envelope.attempt > 1:
        headers[ATTEMPT] = int(envelope.attempt)
    headers[TIMESTAMP_MS] = int(envelope.timestamp_ms)
    expiration = None
    if envelope.ttl_ns is not None:
        left = _expiration_ms(envelope)
        if left * 1_000_000 != envelope.ttl_ns:
            headers[TTL_NS] = int(envelope.ttl_ns)
        expiration = str(left)
    if direct:
        headers[ROUTING_KEY] = envelope.routing_key
    rpc = envelope.reply_to is not None or (direct and envelope.correlation_id is not None)
    transient = rpc and DEAD_REASON not in envelope.headers
    return aiormq.spec.Basic.Properties(
        content_type=envelope.content_type or None,
        headers=headers,
        delivery_mode=TRANSIENT if transient else PERSISTENT,
        correlation_id=envelope.correlation_id,
        reply_to=envelope.reply_to,
        expiration=expiration,
        message_id=envelope.id,
        timestamp=datetime.fromtimestamp(envelope.timestamp_ms // 1000, tz=timezone.utc),
        message_type=envelope.event or None,
        app_id=envelope.emitter or None,
    )


def _as_int(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            n = int(value.strip())
        except ValueError:
            return None
        return n if n >= 0 else None
    return None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return str(int(value.timestamp()))
    return str(value)


def from_delivery(
    properties: Any,
    routing_key: str,
    redelivered: bool,
    body: bytes,
) -> Envelope:
    """The envelope of a received message; ``properties`` is aiormq's ``Basic.Properties``.
    The broker's ``redelivered`` flag counts as one more attempt."""
    attempt = 1
    timestamp = properties.timestamp
    timestamp_ms = int(timestamp.timestamp()) * 1000 if isinstance(timestamp, datetime) else 0
    ttl_ns: Optional[int] = None
    expiration = _as_int(properties.expiration) if properties.expiration is not None else None
    if expiration is not None:
        ttl_ns = expiration * 1_000_000
    key = routing_key
    headers: dict[str, str] = {}
    for name, value in (properties.headers or {}).items():
        if name == ATTEMPT:
            n = _as_int(value)
            if n is not None:
                attempt = min(max(n, 1), 2**32 - 1)
        elif name == TIMESTAMP_MS:
            n = _as_int(value)
            if n is not None:
                timestamp_ms = n
        elif name == TTL_NS:
            n = _as_int(value)
            if n is not None:
                ttl_ns = n
        elif name == ROUTING_KEY:
            key = _as_text(value)
        else:
            headers[name] = _as_text(value)
    if redelivered:
        attempt += 1
    return Envelope(
        routing_key=key,
        content_type=properties.content_type or "",
        body=bytes(body),
        id=properties.message_id or "",
        event=properties.message_type or "",
        headers=headers,
        timestamp_ms=timestamp_ms,
        ttl_ns=ttl_ns,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        emitter=properties.app_id or "",
        attempt=attempt,
    )


def check_header_names(headers: Mapping[str, str]) -> None:
    """Refuses application header names with the reserved ``tidings-`` prefix."""
    for name in headers:
        if not name:
            raise ValueError("header name is empty")
        if len(name.encode()) > 255:
            raise ValueError(f"header name {name[:40]!r}... is longer than 255 bytes")
        if name.lower().startswith("tidings-"):
            raise ValueError(f"header {name!r}: names starting with tidings- are reserved")


class _RawProperties:
    """aiormq-style properties rebuilt from an aio-pika ``IncomingMessage``."""

    def __init__(self, message: Any) -> None:
        self.content_type = message.content_type
        self.headers = message.headers
        self.correlation_id = message.correlation_id
        self.reply_to = message.reply_to
        # aio-pika turns the expiration's milliseconds into float seconds; back to milliseconds.
        self.expiration = None if message.expiration is None else str(round(message.expiration * 1000))
        self.message_id = message.message_id
        self.timestamp = message.timestamp
        self.message_type = message.type
        self.app_id = message.app_id


def from_incoming(message: Any) -> Envelope:
    """The envelope of an aio-pika ``IncomingMessage``."""
    return from_delivery(_RawProperties(message), message.routing_key or "", bool(message.redelivered), message.body)
