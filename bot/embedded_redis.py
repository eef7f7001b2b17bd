"""A redis-server that SOPHIE starts and owns when no REDIS_URL is set.

It persists (append-only file) under the data directory, listens on loopback
only and requires a password kept in a 0600 config file, so state survives a
restart of the bot and no other local user can read it. A second SOPHIE
process (``sophie worker`` beside ``sophie serve``) reuses the running one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import socket
from pathlib import Path

import redis.asyncio as aioredis

log = logging.getLogger("sophie.redis")


class EmbeddedRedisError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "redis"
        self.conf = self.dir / "redis.conf"
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""

    def _read_conf(self) -> tuple[int, str] | None:
        if not self.conf.exists():
            return None
        port, password = 0, ""
        for line in self.conf.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "port":
                port = int(value)
            elif key == "requirepass":
                password = value
        return (port, password) if port and password else None

    def _write_conf(self, port: int, password: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.conf.touch(mode=0o600)
        self.conf.write_text(
            "\n".join(
                [
                    f"port {port}",
                    "bind 127.0.0.1",
                    f"requirepass {password}",
                    f"dir {self.dir}",
                    "appendonly yes",
                    "appendfsync everysec",
                    "save 300 1",
                    "daemonize no",
                    "protected-mode yes",
                    f"logfile {self.dir / 'redis.log'}",
                ]
            )
            + "\n"
        )

    async def _answers(self, url: str) -> bool:
        client = aioredis.from_url(url, socket_connect_timeout=0.5)
        try:
            return bool(await client.ping())
        except Exception:
            return False
        finally:
            await client.aclose()

    async def start(self) -> str:
        conf = self._read_conf()
        if conf is not None:
            url = f"redis://:{conf[1]}@127.0.0.1:{conf[0]}/0"
            if await self._answers(url):
                log.info("reusing embedded redis on port %d", conf[0])
                self.url = url
                return url
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedRedisError(
                "redis-server is not installed: install it (apt-get install redis-server) "
                "or set REDIS_URL"
            )
        port = conf[0] if conf else _free_port()
        password = conf[1] if conf else secrets.token_urlsafe(24)
        self._write_conf(port, password)
        self.process = await asyncio.create_subprocess_exec(
            binary,
            str(self.conf),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        for _ in range(100):
            if await self._answers(url):
                log.info("embedded redis started on port %d (data in %s)", port, self.dir)
                self.url = url
                return url
            if self.process.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise EmbeddedRedisError(f"redis-server did not start; see {self.dir / 'redis.log'}")

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 10)
        if self.process.returncode is None:
            self.process.kill()
