"""Errors raised by the tidings Python participant."""

from __future__ import annotations


class TidingsError(Exception):
    """Base class of every error this package raises."""


class InvalidUrl(TidingsError):
    """The broker URL cannot be used (wrong scheme, unknown option, bad exchange name)."""


class InvalidName(TidingsError):
    """A routing key, pattern, identity or group name breaks the routing rules."""


class DecodeError(TidingsError):
    """A body cannot be decoded (not JSON, or another content type than ``application/json``)."""


class RemoteError(TidingsError):
    """The RPC server's handler failed: ``str(error)`` is the server's error text, ``server``
    its identity (``host.kind.id``) and ``service`` the name called."""

    def __init__(self, text: str, server: str = "", service: str = ""):
        super().__init__(text)
        self.text = text
        self.server = server
        self.service = service


class CallTimeout(TidingsError):
    """No reply to an RPC call arrived within its timeout."""


class NoResponders(TidingsError):
    """Nobody serves the RPC name that was called (no queue is bound to it)."""
