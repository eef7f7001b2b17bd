"""Fire-and-forget work after an ack: Slack gets its answer first."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("sophie.handlers")

_tasks: set[asyncio.Task[Any]] = set()


def _done(task: asyncio.Task[Any]) -> None:
    _tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("background Slack call failed", exc_info=task.exception())


def spawn(coro: Coroutine[Any, Any, Any]) -> None:
    # Keep a reference: the event loop holds tasks only weakly.
    task = asyncio.create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_done)


# Shutdown waits this long for background calls, then cancels what is left: a call
# stuck on a peer that never answers must not hold the process (or a test) forever.
DRAIN_SECONDS = 15.0


async def drain(within: float = DRAIN_SECONDS) -> None:
    """Wait for outstanding background calls (shutdown and tests), at most ``within``
    seconds; then cancel the rest, and say so. Only this event loop's tasks count."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        mine = [t for t in _tasks if t.get_loop() is loop and not t.done()]
        if not mine:
            return
        left = deadline - loop.time()
        if left <= 0:
            log.warning("shutdown: cancelling %d background call(s) still running", len(mine))
            for task in mine:
                task.cancel()
            await asyncio.gather(*mine, return_exceptions=True)
            return
        await asyncio.wait(mine, timeout=left)
