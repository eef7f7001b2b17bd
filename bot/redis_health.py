"""Does Redis keep what SOPHIE writes? Plans, signed decisions and the audit log live there.

``CONFIG GET appendonly|appendfsync|save`` answers on a self-managed Redis; managed
services often refuse CONFIG, and then ``INFO persistence`` tells at least whether
AOF is on. What cannot be told is reported as unknown, never as an error.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

log = logging.getLogger("sophie.redis")

CHECK_SECONDS = 3.0
ADVICE = "set `appendonly yes` and `appendfsync everysec` (see README, Deploying)"


@dataclass(frozen=True)
class Persistence:
    aof: bool | None  # None: unknown
    fsync: str | None  # appendfsync: always, everysec, no
    rdb: bool | None  # snapshot rules configured
    source: str  # "config", "info" or "none"

    @property
    def warning(self) -> str | None:
        """What an operator should hear, or None when writes survive a restart."""
        if self.aof:
            if self.fsync == "no":
                return (
                    "Redis has AOF with `appendfsync no`: a crash can lose the last ~30 s of "
                    f"decisions and audit entries; {ADVICE}"
                )
            return None
        if self.rdb:
            return (
                "Redis persists by RDB snapshots only: a crash loses everything written "
                f"since the last snapshot (decisions, audit entries, queued jobs); {ADVICE}"
            )
        if self.aof is False and self.rdb is False:
            return (
                "Redis has NO persistence (no AOF, no RDB snapshots): a Redis restart loses "
                f"every plan, signed decision, queued job and the audit log; {ADVICE}"
            )
        known = "AOF is off" if self.aof is False else "AOF not reported"
        return (
            f"Redis persistence is unknown ({known}; CONFIG is refused, so snapshot rules "
            "cannot be read): make sure it persists, or a restart loses plans, decisions "
            f"and queued jobs; {ADVICE}"
        )

    def describe(self) -> str:
        if self.aof:
            return f"AOF (appendfsync {self.fsync or 'unknown'})" + (
                " and RDB snapshots" if self.rdb else ""
            )
        if self.rdb:
            return "RDB snapshots only"
        if self.aof is False and self.rdb is False:
            return "none"
        return "unknown"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _from_config(redis: aioredis.Redis) -> Persistence:
    found: dict[str, str] = {}
    for name in ("appendonly", "appendfsync", "save"):
        for key, value in (await redis.config_get(name)).items():
            found[_text(key)] = _text(value)
    if "appendonly" not in found:
        raise LookupError("CONFIG GET appendonly answered nothing")
    return Persistence(
        aof=found["appendonly"] == "yes",
        fsync=found.get("appendfsync"),
        rdb=bool(found.get("save", "").strip()),
        source="config",
    )


async def _from_info(redis: aioredis.Redis) -> Persistence:
    info = await redis.info("persistence")
    aof = info.get("aof_enabled")
    return Persistence(
        aof=None if aof is None else bool(int(aof)),
        fsync=None,
        rdb=None,  # INFO shows past saves, not whether snapshots are configured
        source="info",
    )


async def describe_persistence(redis: aioredis.Redis) -> Persistence:
    try:
        return await asyncio.wait_for(_from_config(redis), CHECK_SECONDS)
    except Exception as exc:  # managed Redis: CONFIG renamed or refused
        log.debug("CONFIG GET refused (%s); trying INFO persistence", exc)
    try:
        return await asyncio.wait_for(_from_info(redis), CHECK_SECONDS)
    except Exception as exc:
        log.debug("INFO persistence failed too (%s)", exc)
    return Persistence(aof=None, fsync=None, rdb=None, source="none")


async def check_persistence(redis: aioredis.Redis) -> str | None:
    """A warning when Redis may not keep SOPHIE's state across a restart; None when it does."""
    return (await describe_persistence(redis)).warning


async def log_persistence(redis: aioredis.Redis) -> None:
    """At start-up: one line saying how Redis persists, a warning when it may not."""
    found = await describe_persistence(redis)
    if found.warning:
        log.warning("%s", found.warning)
    else:
        log.info("redis persistence: %s", found.describe())
