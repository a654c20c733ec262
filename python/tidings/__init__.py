"""tidings for Python: a participant on a tidings bus over RabbitMQ (AMQP 0.9.1).

Speaks the wire format of docs/wire-format.md and docs/wire-format-amqp091.md with JSON bodies:
events (broadcast and groups, with tidings' retries and dead letters), RPC both ways, emitter
identity and the start-up barrier.
"""

from .bus import BROADCAST, Barrier, Bus, Message, Subscription, connect
from .envelope import Envelope
from .errors import (
    CallTimeout,
    DecodeError,
    InvalidName,
    InvalidUrl,
    NoResponders,
    RemoteError,
    TidingsError,
)

__all__ = [
    "BROADCAST",
    "Barrier",
    "Bus",
    "CallTimeout",
    "DecodeError",
    "Envelope",
    "InvalidName",
    "InvalidUrl",
    "Message",
    "NoResponders",
    "RemoteError",
    "Subscription",
    "TidingsError",
    "connect",
]
