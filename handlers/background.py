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


async def drain() -> None:
    """Wait for outstanding background calls (shutdown and tests)."""
    while _tasks:
        await asyncio.gather(*list(_tasks), return_exceptions=True)
