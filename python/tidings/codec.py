"""The JSON codec (``application/json``): the only payload encoding a Python peer uses.

Bodies are what serde_json writes for the Rust type (docs/wire-format.md, "JSON of the serde
value"): structs are objects, ``Option`` is ``null`` or the value, ``Vec<u8>`` is an array of
numbers, unit enum variants are strings. Encoding is compact UTF-8 without NaN/Infinity.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import DecodeError

JSON = "application/json"
"""The content type of JSON bodies."""
POSTCARD = "application/postcard"
"""The Rust default; Python cannot read it: Rust senders use ``bus.with_codec(Codec::Json)``."""
TEXT = "text/plain; charset=utf-8"
"""The content type of an RPC error reply's body."""


def encode(value: Any) -> bytes:
    """``value`` as compact JSON bytes; raises :class:`TypeError`/:class:`ValueError` if it cannot be."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def decode(content_type: str, body: bytes) -> Any:
    """The value of a body by its content type; raises :class:`DecodeError` if it is not JSON."""
    if content_type != JSON:
        if not content_type:
            raise DecodeError("the message has no content type; receivers never guess")
        hint = " (the Rust sender should use bus.with_codec(Codec::Json))" if content_type == POSTCARD else ""
        raise DecodeError(f"cannot decode content type {content_type!r} in Python{hint}")
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DecodeError(f"invalid JSON body: {e}") from None
