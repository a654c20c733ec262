"""Python and Rust on one bus (RabbitMQ): events both ways, RPC both ways with remote errors, a
group shared by a Python and a Rust worker (retries and dead letters included), and the
start-up barrier. The Rust side is examples/py_peer.rs, started as a subprocess."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aio_pika
import pytest

import tidings
from tidings.envelope import from_incoming

N = 20


async def until(check: Any, timeout: float = 20.0) -> None:
    """Waits until ``check()`` is true."""
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


async def test_events_python_to_rust(bus: tidings.Bus, peer: Any) -> None:
    rust = await peer("listen", "py.events.#", str(N))
    await rust.ready()
    for n in range(N):
        await bus.emit(f"py.events.{n}", {"n": n}, event="num", headers={"origin": "python"})
    lines = await rust.finish()
    assert sorted(line["body"]["n"] for line in lines) == list(range(N))
    for line in lines:
        assert line["key"] == f"py.events.{line['body']['n']}"
        assert line["emitter"] == bus.identity
        assert line["event"] == "num"
        assert line["attempt"] == 1
        assert line["headers"] == {"origin": "python"}


async def test_events_rust_to_python(bus: tidings.Bus, peer: Any) -> None:
    got: list[tidings.Message] = []

    async def handle(message: tidings.Message) -> None:
        got.append(message)

    await bus.subscribe("rust.events.#", handle, event="num")
    rust = await peer("emit", "rust.events.created", str(N))
    assert await rust.finish() == [{"emitted": N}]
    await until(lambda: len(got) >= N)
    await asyncio.sleep(0.2)
    assert [m.value for m in got] == [{"n": n} for n in range(N)]  # in order, none twice
    for m in got:
        assert m.routing_key == "rust.events.created"
        assert m.emitter.endswith(".rust_peer.1") and m.emitter.count(".") == 2
        assert m.event == "num"
        assert m.attempt == 1
        assert m.headers == {"origin": "rust"}
        assert len(m.envelope.id.split("-")[0]) == 16


async def test_python_calls_rust(bus: tidings.Bus, peer: Any) -> None:
    rust = await peer("serve", "math.double")
    await rust.ready()
    replies = await asyncio.gather(*(bus.call("math.double", n, timeout=10) for n in range(N)))
    assert replies == [2 * n for n in range(N)]
    with pytest.raises(tidings.RemoteError) as error:
        await bus.call("math.double", -3, timeout=10)
    assert str(error.value) == "cannot double -3: negative"
    assert error.value.server.endswith(".rust_peer.1")
    with pytest.raises(tidings.NoResponders):
        await bus.call("nobody.serves.this", 1, timeout=5)


async def test_rust_calls_python(bus: tidings.Bus, peer: Any) -> None:
    served: list[Any] = []

    async def double(n: int) -> int:
        served.append(n)
        if n < 0:
            raise ValueError(f"cannot double {n}: negative")
        return n * 2

    await bus.serve("py.double", double)
    for n in (0, 21, 1000):
        assert await (await peer("call", "py.double", str(n), "10000")).finish() == [{"ok": 2 * n}]
    [failed] = await (await peer("call", "py.double", "-4", "10000")).finish()
    assert failed["error"] == "Remote"
    assert failed["message"].startswith("cannot double -4: negative")
    assert bus.identity in failed["message"]
    assert served == [0, 21, 1000, -4]  # each request handled once; the error is not retried


async def test_python_and_rust_workers_share_a_group(broker: str, bus: tidings.Bus, peer: Any) -> None:
    """40 jobs and a poison one: every job succeeds exactly once across both workers; a job
    failed on attempt 1 (n % 5 == 0) succeeds on attempt 2 wherever the retry lands; the
    poison one is dead-lettered after 3 attempts with tidings' reason, whoever failed last."""
    jobs = 40
    python: list[dict[str, Any]] = []

    async def work(m: tidings.Message) -> None:
        n = m.value["n"]
        fail = n < 0 or (n % 5 == 0 and m.attempt == 1)
        python.append({"n": n, "attempt": m.attempt, "failed": fail})
        await asyncio.sleep(0.005)
        if fail:
            raise RuntimeError(f"python worker refused {n}")

    await bus.subscribe("jobs.#", work, group="jobs", prefetch=4)
    rust = await peer("worker", "jobs.#", "jobs")
    await rust.ready()
    from_rust: list[dict[str, Any]] = []

    async def read_rust() -> None:
        while (line := await rust.line(60)) is not None:
            from_rust.append({"n": line["body"]["n"], "attempt": line["attempt"], "failed": line["failed"]})

    reader = asyncio.create_task(read_rust())
    for n in range(jobs):
        await bus.emit(f"jobs.{n}", {"n": n})
    await bus.emit("jobs.poison", {"n": -1})

    def everything() -> list[dict[str, Any]]:
        return python + from_rust

    def done() -> bool:
        ok = {h["n"] for h in everything() if not h["failed"]}
        return ok >= set(range(jobs)) and sum(h["n"] == -1 for h in everything()) >= 3

    await until(done, 30)
    await asyncio.sleep(0.5)  # anything handled twice would show up now
    await rust.stop()
    reader.cancel()

    successes = Counter(h["n"] for h in everything() if not h["failed"])
    assert successes == Counter(range(jobs)), "each job succeeds exactly once"
    assert python and from_rust, "both workers took jobs"
    for h in everything():
        if not h["failed"]:
            assert h["attempt"] == (2 if h["n"] % 5 == 0 else 1), h
    assert sorted(h["attempt"] for h in everything() if h["n"] == -1) == [1, 2, 3]

    connection = await aio_pika.connect(broker)
    try:
        channel = await connection.channel()
        dead = await channel.declare_queue(f"{bus.exchange}.dead.jobs", durable=True)
        letter = None
        for _ in range(100):  # the last failure's dead letter may still be on its way
            letter = await dead.get(fail=False)
            if letter is not None:
                break
            await asyncio.sleep(0.05)
        assert letter is not None
        await letter.ack()
        assert await dead.get(fail=False) is None, "exactly one dead letter"
    finally:
        await connection.close()
    envelope = from_incoming(letter)
    assert envelope.routing_key == "jobs.poison"
    assert envelope.attempt == 3
    assert envelope.emitter == bus.identity
    assert envelope.headers["tidings-dead-from"] == "jobs"
    reason = envelope.headers["tidings-dead-reason"]
    assert reason.startswith("handler failed on attempt 3 of 3: "), reason
    assert reason.endswith(" worker refused -1"), reason
    assert int(envelope.headers["tidings-dead-at"]) >= envelope.timestamp_ms


async def test_python_plugin_passes_the_barrier(bus: tidings.Bus, peer: Any) -> None:
    """The Rust application waits for a Python plugin, in either order of start, then emits."""
    for name, plugin_first in (("b1", True), ("b2", False)):
        started: list[tidings.Message] = []

        async def on_start(m: tidings.Message) -> None:
            started.append(m)

        if not plugin_first:
            app = await peer("barrier", name, "15000", "py-plugin")
            await asyncio.sleep(1.0)  # the application listens and calls the roll first
        subscription = await bus.subscribe(f"app.{name}.started", on_start)
        announcement = await bus.barrier(name).announce("py-plugin")
        if plugin_first:
            app = await peer("barrier", name, "15000", "py-plugin")
        assert await app.finish() == [{"barrier": "passed"}]
        await until(lambda: len(started) == 1, 10)
        assert started[0].value == {"n": 1} and started[0].emitter.endswith(".rust_peer.1")
        await announcement.cancel()
        await subscription.cancel()


async def test_python_waits_for_a_rust_plugin(bus: tidings.Bus, peer: Any) -> None:
    plugin = await peer("announce", "b3", "rust-plugin", "app.b3.started")
    await plugin.ready()
    await bus.barrier("b3").wait_for(["rust-plugin"], timeout=10)
    await bus.emit("app.b3.started", {"n": 3})
    [heard] = await plugin.finish()
    assert heard["body"] == {"n": 3} and heard["emitter"] == bus.identity
    # The plugin has exited: nobody answers the roll call any more.
    with pytest.raises(tidings.CallTimeout, match="2 of 2 participants did not announce .*: ghost, rust-plugin"):
        await bus.barrier("b3").wait_for(["rust-plugin", "ghost"], timeout=1.0)


def test_the_installed_package_is_under_test() -> None:
    """The CI script installs ./python into a virtual environment: that copy is what runs."""
    assert "site-packages" in tidings.__file__, tidings.__file__
