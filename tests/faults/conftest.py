"""Fixtures for the fault suite: a redis-server of each test's own (AOF, so killing it
loses nothing acknowledged), the fault proxy in front of it, the fake services, and
the scene that drives SOPHIE through them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.faults.scene import Scene
from tests.faults.tcp_proxy import RedisProxy
from tests.integration.conftest import Fakes
from tests.integration.conftest import fakes as fakes  # the same fake Slack, GitHub, LLM
from tests.redis_server import RedisServer


@pytest.fixture()
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    yield server
    server.stop()


@pytest.fixture()
def proxy(redis: RedisServer) -> Iterator[RedisProxy]:
    front = RedisProxy(redis.port).start()
    yield front
    front.stop()


@pytest.fixture()
async def scene(
    fakes: Fakes, redis: RedisServer, proxy: RedisProxy, tmp_path: Path
) -> AsyncIterator[Scene]:
    s = Scene(fakes, redis, proxy, tmp_path)
    yield s
    proxy.clear()
    if redis.proc is None:  # a test killed it and failed before bringing it back
        redis.start()
    await s.close()
