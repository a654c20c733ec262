"""Fixtures of the cross-language tests: a RabbitMQ URL on an exchange of this run's own, the
Rust peer (examples/py_peer.rs) as a subprocess, and the clean-up of what the run declared."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import aio_pika
import pytest

import tidings

REPO = Path(__file__).resolve().parents[2]
BROKER = os.environ.get("TIDINGS_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2f")
PY_PEER = os.environ.get("PY_PEER", str(REPO / "target" / "debug" / "examples" / "py_peer"))

# Queues the tests make that outlive their consumers (durable groups, dead letters).
DURABLE_QUEUES = ("group.jobs", "group.math.double", "group.py.double", "dead.jobs", "dead.py.double", "dead.broadcast")


@pytest.fixture(scope="session")
def exchange() -> Any:
    """A fresh exchange name per run, deleted with its durable queues at the end."""
    name = f"pytest-{uuid.uuid4().hex[:12]}"
    yield name

    async def clean() -> None:
        connection = await aio_pika.connect(BROKER)
        try:
            for suffix in DURABLE_QUEUES:
                channel = await connection.channel()
                await channel.queue_delete(f"{name}.{suffix}")
                await channel.close()
            channel = await connection.channel()
            await channel.exchange_delete(name)
        finally:
            await connection.close()

    asyncio.run(clean())


@pytest.fixture
def broker() -> str:
    """The RabbitMQ URL without tidings' options."""
    return BROKER


@pytest.fixture
def url(exchange: str) -> str:
    """The bus URL of this run."""
    return f"{BROKER}?exchange={exchange}"


@pytest.fixture
async def bus(url: str) -> AsyncIterator[tidings.Bus]:
    """A Python bus handle emitting as ``<host>.py_peer.1``."""
    bus = (await tidings.connect(url)).as_participant("py_peer", "1")
    yield bus
    await bus.close()


class Peer:
    """The Rust peer: one subprocess, its stdout read as JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process

    async def line(self, timeout: float = 20.0) -> Optional[dict[str, Any]]:
        """The next JSON line, or None at end of output."""
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        return json.loads(raw) if raw else None

    async def ready(self) -> None:
        """Waits for ``{"ready":true}``: the peer's subscriptions exist."""
        assert await self.line() == {"ready": True}

    async def finish(self, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Every remaining line, once the peer exits on its own; checks it exited with 0."""
        lines = []
        while (item := await self.line(timeout)) is not None:
            lines.append(item)
        assert await asyncio.wait_for(self.process.wait(), timeout) == 0
        return lines

    async def stop(self) -> None:
        """Stops a serving peer with SIGTERM (its graceful shutdown)."""
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()


@pytest.fixture
async def peer(url: str) -> AsyncIterator[Any]:
    """Starts Rust peers (``await peer("serve", "math.double")``); stops them at the end."""
    if not Path(PY_PEER).exists():
        pytest.fail(f"{PY_PEER} is missing: cargo build --features amqp091 --example py_peer")
    started: list[Peer] = []

    async def start(*args: str) -> Peer:
        process = await asyncio.create_subprocess_exec(
            PY_PEER, *args, env={**os.environ, "TIDINGS_URL": url}, stdout=asyncio.subprocess.PIPE
        )
        started.append(Peer(process))
        return started[-1]

    yield start
    for p in started:
        await p.stop()
