"""The external plugin of examples/plugins.rs: a Python process that takes part in the
application's start-up barrier, so it hears the application's very first events.

It subscribes (broadcast) to the application's events ``app.event`` and to ``app.stop``, then
announces itself at the barrier ``app-start``: only then may the application emit. On
``app.stop`` (which carries how many events were sent) it reports how many distinct events it
received, as the event ``plugin_report`` under ``plugins.report``, and exits.

    TIDINGS_URL='amqp://guest:guest@127.0.0.1:5672/%2f?exchange=plugins' \\
        python python/examples/plugin.py --name search

examples/plugins.rs starts it by itself (``--python`` names the interpreter); it needs the
tidings package (``pip install ./python``) and RabbitMQ: a ``memory://`` bus lives inside one
Rust process, which no other process can join.

Its own output goes to stderr, so the application's stdout stays its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import tidings

BARRIER = "app-start"


def say(name: str, text: str) -> None:
    print(f"[{name} (Python, pid {os.getpid()})] {text}", file=sys.stderr, flush=True)


async def run(url: str, name: str, barrier: str, max_seconds: float) -> int:
    bus = (await tidings.connect(url)).as_participant("plugin", name)
    loop = asyncio.get_running_loop()
    seen: set[int] = set()
    duplicates = 0
    reported = asyncio.Event()

    async def on_event(m: tidings.Message) -> None:
        nonlocal duplicates
        seq = int(m.value["seq"])
        if seq in seen:
            duplicates += 1
        seen.add(seq)

    async def on_stop(m: tidings.Message) -> None:
        # app.stop comes through another queue than the events: it may overtake the last ones.
        sent = int(m.value["sent"])
        give_up = loop.time() + 10.0
        while len(seen) < sent and loop.time() < give_up:
            await asyncio.sleep(0.02)
        report = {"plugin": name, "received": len(seen), "duplicates": duplicates}
        await bus.emit("plugins.report", report, event="plugin_report")
        say(name, f"received {len(seen)} of {sent} events")
        reported.set()

    try:
        # Subscriptions first, then the announcement: once the application hears it, every
        # event it emits has a queue here to go to.
        await bus.subscribe("app.event", on_event, event="app_event")
        await bus.subscribe("app.stop", on_stop, event="app_stop")
        announcement = await bus.barrier(barrier).announce(name)
        say(name, f"subscribed; announced at barrier {barrier!r}")
        try:
            await asyncio.wait_for(reported.wait(), max_seconds)
        except asyncio.TimeoutError:
            say(name, f"no app.stop within {max_seconds} s; giving up")
            return 1
        await announcement.cancel()
        return 0
    finally:
        await bus.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("TIDINGS_URL"), help="the bus (default: $TIDINGS_URL)")
    parser.add_argument("--name", default="search", help="the participant name at the barrier")
    parser.add_argument("--barrier", default=BARRIER, help="the barrier's name")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="exit if no app.stop came by then")
    args = parser.parse_args()
    if not args.url:
        parser.error("no bus URL: pass --url or set TIDINGS_URL")
    if args.url.startswith("memory:"):
        parser.error("memory:// lives inside one Rust process; an external plugin needs a broker (amqp://)")
    return asyncio.run(run(args.url, args.name, args.barrier, args.max_seconds))


if __name__ == "__main__":
    sys.exit(main())
