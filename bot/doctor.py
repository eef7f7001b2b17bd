"""`sophie doctor`: is the configuration complete, and is everything reachable?"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bot.settings import Settings


async def _check(name: str, probe: Callable[[], Awaitable[str]]) -> bool:
    try:
        detail = await asyncio.wait_for(probe(), 10)
    except Exception as exc:
        print(f"✗ {name}: {type(exc).__name__}: {str(exc)[:200]}")
        return False
    print(f"✓ {name}: {detail}")
    return True


async def run_doctor(settings: Settings) -> int:
    results: list[bool] = []

    async def constitution() -> str:
        from roles.constitution import load_constitution

        c = load_constitution(settings.constitution_path)
        return f"{settings.constitution_path} version {c.version}, {len(c.repos)} repo(s)"

    async def signing_key() -> str:
        from bot.signer import load_keyring

        ring = load_keyring(settings.signing_key, settings.signing_key_file, settings.data_dir)
        return ring.keyid

    async def redis() -> str:
        import redis.asyncio as aioredis

        if settings.redis_url is None:
            return "REDIS_URL not set: an embedded redis-server will be started"
        client = aioredis.from_url(settings.redis_url, socket_connect_timeout=3)
        try:
            await client.ping()
        finally:
            await client.aclose()
        return "reachable"

    async def slack() -> str:
        from slack_sdk.web.async_client import AsyncWebClient

        if settings.slack_bot_token is None:
            raise RuntimeError("SLACK_BOT_TOKEN is not set")
        if settings.slack_signing_secret is None and settings.slack_app_token is None:
            raise RuntimeError("set SLACK_SIGNING_SECRET (HTTP) or SLACK_APP_TOKEN (Socket Mode)")
        resp = await AsyncWebClient(
            token=settings.slack_bot_token, base_url=settings.slack_api_url
        ).auth_test()
        return f"team {resp.get('team')} as {resp.get('user')}"

    async def github() -> str:
        if not settings.github_configured:
            return "neither GITHUB_TOKEN nor a GitHub App is set: execution is a DRY RUN"
        from github import Github

        from bot.github_gateway import make_auth

        auth = make_auth(
            settings.github_token,
            settings.github_app_id,
            settings.github_app_private_key,
            settings.github_app_installation_id,
        )
        gh = Github(auth=auth, base_url=settings.github_api_url, retry=None)
        remaining, limit = await asyncio.to_thread(lambda: gh.rate_limiting)
        kind = "token" if settings.github_token else "GitHub App installation"
        return f"{kind} accepted; {remaining}/{limit} requests left this hour"

    async def llm() -> str:
        if settings.llm_api_key is None:
            return "no LLM key: the offline planner is used"
        from openai import AsyncOpenAI

        client = AsyncOpenAI(
            api_key=settings.llm_api_key, base_url=settings.llm_base_url, max_retries=0, timeout=10
        )
        models = {m.id async for m in client.models.list()}
        missing = [m for m in settings.llm_models if m not in models]
        if missing:
            raise RuntimeError(f"unknown model(s): {', '.join(missing)}")
        return f"{len(settings.llm_models)} model(s) available"

    for name, probe in [
        ("constitution", constitution),
        ("signing key", signing_key),
        ("redis", redis),
        ("slack", slack),
        ("github", github),
        ("llm", llm),
    ]:
        results.append(await _check(name, probe))
    return 0 if all(results) else 1
