"""examples/plugins.rs with its Python plugin (python/examples/plugin.py): the application starts
two in-process Rust plugins and this package's plugin as a process, waits at the start-up
barrier for all three, then emits its first events at once; every plugin receives every one.
scripts/python-tests.sh builds the example; the plugin runs on this interpreter (the virtual
environment with the package installed)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGINS = os.environ.get("PLUGINS", str(REPO / "target" / "debug" / "examples" / "plugins"))
EVENTS = 500


async def run_plugins(url: str, *args: str, timeout: float = 90.0) -> tuple[int, str, str]:
    """Runs the application to its end: its exit status, stdout and stderr."""
    if not Path(PLUGINS).exists():
        pytest.fail(f"{PLUGINS} is missing: cargo build --features amqp091 --example plugins")
    process = await asyncio.create_subprocess_exec(
        PLUGINS,
        "--python",
        sys.executable,
        *args,
        env={**os.environ, "TIDINGS_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    stdout, stderr = out.decode(), err.decode()
    print(stdout, stderr, sep="\n")  # shown when the test fails
    assert process.returncode is not None
    return process.returncode, stdout, stderr


def summary(stdout: str) -> Any:
    return json.loads(stdout.strip().splitlines()[-1])


async def test_the_first_events_reach_all_three_plugins(url: str) -> None:
    status, stdout, stderr = await run_plugins(url, "--events", str(EVENTS))
    assert status == 0
    assert 'passed after' in stdout and "audit, mailer, search subscribed" in stdout
    # The Python plugin ran on this interpreter, and said what it received.
    assert f"received {EVENTS} of {EVENTS} events" in stderr and "(Python, pid" in stderr
    assert summary(stdout) == {
        "sent": EVENTS,
        "received": {"audit": EVENTS, "mailer": EVENTS, "search": EVENTS},
        "lost": 0,
    }


async def test_a_missing_rust_plugin_fails_the_barrier_naming_it(url: str) -> None:
    """The Python plugin announces, the skipped Rust one never does: nothing is emitted."""
    status, stdout, stderr = await run_plugins(url, "--skip", "audit", "--timeout", "4")
    assert status == 1
    assert 'barrier "app-start": 1 of 3 participants did not announce within 4s: audit' in stderr
    assert "announced at barrier 'app-start'" in stderr  # the Python plugin did
    assert "emitted" not in stdout
