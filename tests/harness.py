"""The app under test: real Bolt app, real HTTP on loopback, real Redis, fake services."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.app import Runtime, build_runtime, web_app
from bot.settings import Settings
from tests import slack_requests as sr

SIGNING_SECRET = "test-signing-secret-0123456789"
BOT_TOKEN = "xoxb-test-bot-token"
GITHUB_TOKEN = "ghp_testtoken0123456789"
LLM_KEY = "sk-or-test-key"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class App:
    """A running SOPHIE and a Slack-shaped client for it."""

    rt: Runtime
    url: str
    runner: web.AppRunner
    session: aiohttp.ClientSession
    secret: str = SIGNING_SECRET
    responses: list[Any] = field(default_factory=list)

    async def post(
        self,
        body: str,
        content_type: str,
        *,
        secret: str | None = None,
        timestamp: int | None = None,
        extra: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        headers = sr.signed_headers(secret or self.secret, body, timestamp, content_type)
        headers.update(extra or {})
        resp = await self.session.post(
            f"{self.url}/slack/events", data=body.encode(), headers=headers
        )
        await resp.read()
        return resp

    async def event(self, payload: dict[str, Any], **kw: Any) -> aiohttp.ClientResponse:
        return await self.post(json.dumps(payload), "application/json", **kw)

    async def interact(self, payload: dict[str, Any], **kw: Any) -> aiohttp.ClientResponse:
        return await self.post(sr.form_body(payload), "application/x-www-form-urlencoded", **kw)

    async def command(self, body: str, **kw: Any) -> aiohttp.ClientResponse:
        return await self.post(body, "application/x-www-form-urlencoded", **kw)

    async def close(self) -> None:
        await self.session.close()
        await self.runner.cleanup()
        await self.rt.close()


def settings_for(
    redis_url: str,
    data_dir: Path,
    *,
    slack_url: str,
    github_url: str | None,
    llm_url: str | None,
    constitution: Path | None = None,
    **overrides: Any,
) -> Settings:
    env = env_for(
        redis_url,
        data_dir,
        slack_url=slack_url,
        github_url=github_url,
        llm_url=llm_url,
        constitution=constitution,
        **overrides,
    )
    return Settings.from_env(env)


def env_for(
    redis_url: str,
    data_dir: Path,
    *,
    slack_url: str,
    github_url: str | None,
    llm_url: str | None,
    constitution: Path | None = None,
    **overrides: Any,
) -> dict[str, str]:
    """The environment SOPHIE reads, pointing at the fakes (also for worker processes)."""
    env = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack_url.rstrip("/") + "/api/",
        "REDIS_URL": redis_url,
        "SOPHIE_DATA_DIR": str(data_dir),
        "SOPHIE_CONSTITUTION": str(constitution or ROOT / "constitution.yml"),
        "SOPHIE_POLL_SECONDS": "0.05",
    }
    if github_url:
        env["GITHUB_TOKEN"] = GITHUB_TOKEN
        env["GITHUB_API_URL"] = github_url
    if llm_url:
        env["SOPHIE_LLM_API_KEY"] = LLM_KEY
        env["SOPHIE_LLM_BASE_URL"] = llm_url.rstrip("/") + "/api/v1"
    env.update({k: str(v) for k, v in overrides.items()})
    return env


async def start_app(settings: Settings, *, worker: bool = True) -> App:
    rt = await build_runtime(settings)
    # Tests poll fast; production polls every 50 ms too but tracks runs every 10 s.
    if worker:
        await rt.start_worker()
    runner = web.AppRunner(web_app(rt), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return App(
        rt=rt, url=f"http://127.0.0.1:{port}", runner=runner, session=aiohttp.ClientSession()
    )


async def eventually(check: Callable[[], Any], within: float = 10.0, what: str = "") -> Any:
    """Poll until ``check()`` returns something truthy (background jobs are asynchronous)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)
