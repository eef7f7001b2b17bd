"""`sophie serve` with nothing configured: embedded Redis with persistence, offline
planner, dry run; and restarting it loses nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from bot.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_embedded_redis_persists_across_restarts(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path)
    url = await first.start()
    assert "@127.0.0.1:" in url  # password-protected, loopback only
    client = aioredis.Redis.from_url(url)
    await client.set("sophie:test", "kept")
    await client.aclose()
    await first.stop()

    conf = next(tmp_path.rglob("*.conf"))
    assert conf.stat().st_mode & 0o777 == 0o600
    second = EmbeddedRedis(tmp_path)
    client = aioredis.Redis.from_url(await second.start())
    assert await client.get("sophie:test") == b"kept"
    await client.aclose()
    await second.stop()


async def test_sophie_serve_runs_with_no_credentials(tmp_path: Path) -> None:
    port = _port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "GITHUB_", "SOPHIE_", "OPENROUTER", "OPENAI"))
        and k != "REDIS_URL"
    }
    env.update({"SOPHIE_DATA_DIR": str(tmp_path / "data"), "PORT": str(port)})
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.1)
            async with session.get(f"http://127.0.0.1:{port}/.well-known/sophie/keys") as resp:
                keys = await resp.json()
            assert keys["keys"][0]["status"] == "current"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        log.close()
    output = (tmp_path / "serve.log").read_text()
    assert "embedded redis started" in output and "DRY RUN" in output
    assert "planner: offline" in output
    assert (tmp_path / "data" / "signing.key").exists()
    # The embedded redis-server went away with the bot.
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True)
    assert leftover.stdout.strip() == b""
