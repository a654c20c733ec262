"""The wire mapping and the rules, without a broker."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import tidings
from tidings import routing, url
from tidings.envelope import Envelope, from_delivery, to_properties


def test_every_field_round_trips() -> None:
    e = Envelope("orders.created", "application/json", b"{}", event="order_created",
                 headers={"trace": "a:b\nc", "tidings-dead-reason": "boom"}, ttl_ns=1_500_000_001,
                 correlation_id="", reply_to="ex.inbox.1", emitter="host.svc.1", attempt=3)
    p = to_properties(e, direct=True)
    assert p.headers["tidings-attempt"] == 3 and p.headers["tidings-routing-key"] == "orders.created"
    assert p.headers["tidings-ttl-ns"] == 1_500_000_001 and p.message_type == "order_created"
    back = from_delivery(p, "ex.group.g", False, b"{}")
    assert back == e
    assert from_delivery(p, "ex.group.g", True, b"{}").attempt == 4  # redelivered counts


def test_defaults_stay_off_the_wire() -> None:
    p = to_properties(Envelope("a.b", "application/json", b"1", ttl_ns=5_000_000_000), direct=False)
    assert "tidings-attempt" not in p.headers and "tidings-ttl-ns" not in p.headers
    assert p.expiration == "5000" and p.delivery_mode == 2 and p.message_type is None
    missing = from_delivery(SimpleNamespace(content_type=None, headers={"tidings-attempt": "x", "n": 7},
                                            correlation_id=None, reply_to=None, expiration=None,
                                            message_id=None, timestamp=None, message_type=None,
                                            app_id=None), "k", False, b"")
    assert missing.attempt == 1 and missing.headers == {"n": "7"} and missing.id == ""


def test_patterns() -> None:
    assert routing.matches("log.#", "log") and routing.matches("log.#", "log.a.b")
    assert routing.matches("*.worker.*", "h1.worker.3") and not routing.matches("*.worker.*", "h1.worker")
    assert routing.matches("a.#.z", "a.z") and routing.matches("a.#.z", "a.b.c.z")
    with pytest.raises(tidings.InvalidName, match="empty word at position 2"):
        routing.check_key("a..b")
    with pytest.raises(tidings.InvalidName, match="three words"):
        routing.check_identity("host.kind")


def test_urls() -> None:
    u = url.parse("amqp://guest:secret@localhost:5672/%2f?exchange=ex1&heartbeat=10&publish_timeout_ms=250")
    assert u.exchange == "ex1" and u.publish_timeout == 0.25
    assert "heartbeat=10" in u.amqp_url and "exchange" not in u.amqp_url and "secret" not in u.redacted
    assert url.parse("amqps://h").exchange == "tidings"
    for bad in ("amqp://u:pw@h/?bogus=1", "http://h", "amqp:///x", "amqp://h/?exchange=amq.topic"):
        with pytest.raises(tidings.InvalidUrl) as e:
            url.parse(bad)
        assert "pw" not in str(e.value)
