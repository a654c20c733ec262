"""Routing keys, patterns and identities: the rules of docs/wire-format.md.

Keys are dot-separated words of ``[A-Za-z0-9_-]+``, at most 255 bytes. Patterns are keys whose
words may also be ``*`` (exactly one word) or ``#`` (zero or more words), as in AMQP topics.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .errors import InvalidName

_WORD = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_KEY_BYTES = 255


def _check(text: str, what: str, wildcards: bool) -> list[str]:
    if not text:
        raise InvalidName(f"{what} is empty")
    if len(text.encode()) > MAX_KEY_BYTES:
        raise InvalidName(f"{what} {text!r} is longer than {MAX_KEY_BYTES} bytes")
    words = text.split(".")
    for position, word in enumerate(words, start=1):
        if not word:
            raise InvalidName(f"{what} {text!r} has an empty word at position {position}")
        if wildcards and word in ("*", "#"):
            continue
        if not _WORD.match(word):
            raise InvalidName(
                f"{what} {text!r}: word {position} ({word!r}) may only contain A-Z a-z 0-9 _ -"
            )
    return words


def check_key(key: str) -> str:
    """Returns ``key`` if it is a valid routing key, else raises :class:`InvalidName`."""
    _check(key, "routing key", wildcards=False)
    return key


def check_pattern(pattern: str) -> str:
    """Returns ``pattern`` if it is a valid pattern, else raises :class:`InvalidName`."""
    _check(pattern, "pattern", wildcards=True)
    return pattern


def check_identity(identity: str) -> str:
    """Returns ``identity`` if it is three words, ``host.kind.id``."""
    if len(_check(identity, "identity", wildcards=False)) != 3:
        raise InvalidName(f"identity {identity!r} must have three words: host.kind.id")
    return identity


def check_word(word: str, what: str) -> str:
    """Returns ``word`` if it is a single routing-key word."""
    if len(_check(word, what, wildcards=False)) != 1:
        raise InvalidName(f"{what} {word!r} must be one word")
    return word


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> tuple[str, ...]:
    return tuple(_check(pattern, "pattern", wildcards=True))


def matches(pattern: str, key: str) -> bool:
    """Whether ``key`` matches the topic ``pattern`` (``*`` one word, ``#`` zero or more)."""
    words = _compiled(pattern)
    parts = key.split(".")

    @lru_cache(maxsize=None)
    def at(i: int, j: int) -> bool:
        if i == len(words):
            return j == len(parts)
        if words[i] == "#":
            return at(i + 1, j) or (j < len(parts) and at(i, j + 1))
        if j == len(parts):
            return False
        return (words[i] == "*" or words[i] == parts[j]) and at(i + 1, j + 1)

    return at(0, 0)
