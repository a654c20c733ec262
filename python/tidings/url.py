"""Broker URLs: ``amqp://user:pass@host:5672/vhost?exchange=NAME`` (or ``amqps://``).

The same URLs as the Rust side's ``amqp091`` driver. ``exchange`` (default ``tidings``) names the
bus's topic exchange, the namespace that keeps applications apart; ``publish_timeout_ms``
bounds each publish's wait for the broker's confirm. ``heartbeat``, ``frame_max`` and
``channel_max`` go to the AMQP client; any other option is refused, as in Rust.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import InvalidUrl

DEFAULT_EXCHANGE = "tidings"
DEFAULT_PUBLISH_TIMEOUT = 10.0
_PASSED_ON = ("heartbeat", "frame_max", "channel_max")


@dataclass(frozen=True)
class BrokerUrl:
    """A parsed broker URL."""

    amqp_url: str
    """What the AMQP client connects to: the URL without tidings' own options (holds the password)."""
    exchange: str
    """The bus's topic exchange."""
    publish_timeout: float
    """Seconds a publish may wait for its confirm."""
    redacted: str
    """The URL without its password, for messages and logs."""


def parse(url: str) -> BrokerUrl:
    """Parses ``url``; raises :class:`InvalidUrl` (never showing the password) if it is unusable."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as e:
        raise InvalidUrl(f"cannot parse broker url: {e}") from None
    redacted = urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))) if parts.password else url
    if parts.scheme not in ("amqp", "amqps"):
        raise InvalidUrl(f"{redacted!r}: the Python participant speaks amqp:// and amqps:// only")
    if not parts.hostname:
        raise InvalidUrl(f"{redacted!r} has no host")
    exchange = DEFAULT_EXCHANGE
    publish_timeout = DEFAULT_PUBLISH_TIMEOUT
    passed = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "exchange":
            exchange = value
        elif name == "publish_timeout_ms":
            try:
                publish_timeout = int(value) / 1000
            except ValueError:
                raise InvalidUrl(f"{redacted!r}: publish_timeout_ms={value!r} is not a number") from None
        elif name in _PASSED_ON:
            passed.append((name, value))
        else:
            raise InvalidUrl(
                f"{redacted!r}: unknown url option {name}; known: exchange, publish_timeout_ms, "
                + ", ".join(_PASSED_ON)
            )
    if not exchange or exchange.startswith("amq.") or len(exchange.encode()) > 200:
        raise InvalidUrl(f"{redacted!r}: exchange {exchange!r} must be non-empty, not start with amq. and be short")
    amqp_url = urlunsplit(parts._replace(query=urlencode(passed)))
    return BrokerUrl(amqp_url, exchange, publish_timeout, redacted)
