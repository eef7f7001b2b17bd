"""SOPHIE's own processes as a test starts them: ``sophie worker`` with its log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.harness import eventually

ROOT = Path(__file__).resolve().parents[1]


class WorkerProcess:
    """``sophie worker [--port N]`` as a real process, with its log."""

    def __init__(self, env: dict[str, str], log: Path, port: int | None = None) -> None:
        self.port = port
        self.log = log
        args = [sys.executable, "-m", "bot", "worker"]
        if port is not None:
            args += ["--port", str(port)]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                args, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self, within: float = 30.0) -> None:
        """Its own worker is polling the queue (``/readyz``, this process's status)."""

        async def up() -> bool:
            assert self.proc.poll() is None, f"the worker exited:\n{self.output()[-2000:]}"
            timeout = aiohttp.ClientTimeout(total=2)
            try:
                async with (
                    aiohttp.ClientSession(timeout=timeout) as http,
                    http.get(f"{self.url}/readyz") as resp,
                ):
                    body = await resp.json()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return False
            mine = (body.get("workers") or {}).get("this_process") or {}
            return resp.status == 200 and bool(mine.get("up"))

        await eventually(up, within=within, what="the worker process ready")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
