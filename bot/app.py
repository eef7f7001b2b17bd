"""App assembly: Bolt + aiohttp routes + the adapters behind the roles' ports."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from arq.connections import ArqRedis
from arq.worker import Worker
from openai import AsyncOpenAI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot import github_webhook, jobs
from bot.constitution_source import ConstitutionSource
from bot.dry_run import DryRunGateway
from bot.embedded_redis import EmbeddedRedis
from bot.github_gateway import GitHubGateway, make_auth
from bot.llm import ATTRIBUTION, LLMPlanner
from bot.metrics import HTTP_SECONDS, REGISTRY
from bot.redis_store import RedisStore
from bot.settings import Settings
from bot.signer import KeyRing, load_keyring
from bot.slack_directory import SlackDirectory
from bot.slack_notifier import SlackNotifier
from handlers import actions, commands, events, home
from handlers.background import drain
from roles import integrator
from roles.executor import Sophie, Tuning
from roles.offline_planner import OfflinePlanner
from roles.ports import CIGateway, Planner

log = logging.getLogger("sophie.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Runtime:
    settings: Settings
    redis: aioredis.Redis
    pool: ArqRedis
    store: RedisStore
    keyring: KeyRing
    sophie: Sophie
    slack: AsyncWebClient
    bolt: AsyncApp | None
    embedded: EmbeddedRedis | None = None
    worker: Worker | None = None
    _worker_task: asyncio.Task[Any] | None = None
    _slack_ready: tuple[float, bool] = field(default=(0.0, False))

    async def start_worker(self) -> None:
        self.worker = jobs.make_worker(
            self.pool, self.sophie, self.settings.worker_poll_delay, self.settings.job_timeout
        )
        self._worker_task = asyncio.create_task(self.worker.async_run())

    async def stop_worker(self) -> None:
        if self.worker is not None:
            await _stop_worker_gracefully(self.worker)
            self.worker = None
        if self._worker_task is not None:
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker_task
            self._worker_task = None

    async def close(self) -> None:
        await drain()
        await self.stop_worker()
        await self.pool.aclose()
        await self.redis.aclose()
        if self.embedded is not None:
            await self.embedded.stop()


SHUTDOWN_GRACE_SECONDS = 10


async def _stop_worker_gracefully(worker: Worker) -> None:
    """Take no new jobs, let running ones finish (bounded), then close.

    A job still running after the grace period is cancelled; arq runs it again once
    its lease expires, so nothing is lost, only delayed.
    """
    if worker.main_task is not None:
        worker.main_task.cancel()
    running = [t for t in worker.tasks.values() if not t.done()]
    if running:
        await asyncio.wait(running, timeout=SHUTDOWN_GRACE_SECONDS)
    try:
        await worker.close()
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are being cancelled ourselves: do not swallow it


def bundle_token(keyring: KeyRing, plan_id: str) -> str:
    """A capability for one plan's bundle, derived from the signing key."""
    secret = hashlib.sha256(b"sophie-bundle:" + bytes(keyring.signing)).digest()
    return hmac.new(secret, plan_id.encode(), hashlib.sha256).hexdigest()[:32]


def _planner(settings: Settings) -> Planner:
    if settings.llm_api_key is None:
        return OfflinePlanner()
    client = AsyncOpenAI(
        api_key=settings.llm_api_key,
        base_url=settings.llm_base_url,
        timeout=settings.llm_timeout_seconds,
        max_retries=2,
        default_headers=ATTRIBUTION,
    )
    return LLMPlanner(client, settings.llm_models)


def _ci(settings: Settings) -> CIGateway:
    if not settings.github_configured:
        return DryRunGateway()
    auth = make_auth(
        settings.github_token,
        settings.github_app_id,
        settings.github_app_private_key,
        settings.github_app_installation_id,
    )
    return GitHubGateway(auth, settings.github_api_url)


async def build_runtime(settings: Settings) -> Runtime:
    embedded: EmbeddedRedis | None = None
    redis_url = settings.redis_url
    if redis_url is None:
        embedded = EmbeddedRedis(settings.data_dir)
        redis_url = await embedded.start()
    client = aioredis.from_url(redis_url)
    pool = await jobs.connect(redis_url)
    store = RedisStore(client)
    keyring = load_keyring(settings.signing_key, settings.signing_key_file, settings.data_dir)
    slack = AsyncWebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url)
    public = settings.public_url.rstrip("/") if settings.public_url else None

    def bundle_url(plan_id: str) -> str:
        return f"{public}/plans/{plan_id}/bundle?token={bundle_token(keyring, plan_id)}"

    sophie = Sophie(
        constitution=ConstitutionSource(settings.constitution_path),
        planner=_planner(settings),
        store=store,
        signer=keyring,
        ci=_ci(settings),
        notifier=SlackNotifier(slack),
        scheduler=jobs.ArqScheduler(pool),
        directory=SlackDirectory(slack),
        tuning=Tuning(
            poll_seconds=settings.poll_seconds,
            bundle_url=bundle_url if public else None,
            dispatch_settle_seconds=settings.dispatch_settle_seconds,
            dispatch_recheck_seconds=min(10.0, settings.dispatch_settle_seconds / 4),
            status_edit_seconds=settings.status_edit_seconds,
            dispatch_lease_seconds=settings.job_timeout,
        ),
    )
    bolt = _bolt(settings, slack, sophie)
    return Runtime(settings, client, pool, store, keyring, sophie, slack, bolt, embedded)


def _bolt(settings: Settings, slack: AsyncWebClient, sophie: Sophie) -> AsyncApp | None:
    if settings.slack_bot_token is None:
        return None
    bolt = AsyncApp(
        client=slack,
        signing_secret=settings.slack_signing_secret or "",
        # Listeners only ack and enqueue, so answering after them costs nothing and
        # avoids Bolt's 10 ms ack polling loop.
        process_before_response=True,
        # Socket Mode without a signing secret has no HTTP requests to verify.
        request_verification_enabled=settings.slack_signing_secret is not None,
    )
    events.register(bolt, sophie)
    commands.register(bolt, sophie)
    actions.register(bolt, sophie)
    home.register(bolt, sophie)
    return bolt


async def connect_socket_mode(rt: Runtime) -> AsyncSocketModeHandler:
    """Receive events and interactions over Slack's Socket Mode (no public URL needed)."""
    if rt.bolt is None or rt.settings.slack_app_token is None:
        raise ValueError("Socket Mode needs SLACK_BOT_TOKEN and SLACK_APP_TOKEN (xapp-…)")
    handler = AsyncSocketModeHandler(rt.bolt, rt.settings.slack_app_token)
    await handler.connect_async()
    return handler


def web_app(rt: Runtime) -> web.Application:
    @web.middleware
    async def timing(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        try:
            return await handler(request)
        finally:
            route = request.match_info.route.resource
            name = route.canonical if route is not None else "unmatched"
            HTTP_SECONDS.labels(route=name).observe(time.perf_counter() - start)

    app = web.Application(middlewares=[timing], client_max_size=1024 * 1024)

    async def slack_events(request: web.Request) -> web.StreamResponse:
        if rt.bolt is None:
            return web.json_response({"error": "Slack is not configured"}, status=503)
        bolt_req = await to_bolt_request(request)
        return await to_aiohttp_response(await rt.bolt.async_dispatch(bolt_req))

    async def healthz(_: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})

    async def readyz(_: web.Request) -> web.StreamResponse:
        checks: dict[str, bool] = {}
        try:
            checks["redis"] = await asyncio.wait_for(rt.store.ping(), 2)
        except Exception:
            checks["redis"] = False
        checks["slack"] = await _slack_reachable(rt)
        ok = all(checks.values())
        return web.json_response({"ok": ok, "checks": checks}, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.StreamResponse:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def keys(_: web.Request) -> web.StreamResponse:
        return web.json_response(rt.keyring.public_keys())

    async def constitution(_: web.Request) -> web.StreamResponse:
        # Public like the keys: verifiers need the exact rules a decision was made under.
        return web.json_response(rt.sophie.constitution().bundle())

    async def plan_bundle(request: web.Request) -> web.StreamResponse:
        plan_id = request.match_info["plan_id"]
        token = request.query.get("token", "")
        if not hmac.compare_digest(token, bundle_token(rt.keyring, plan_id)):
            return web.json_response({"error": "bad or missing token"}, status=401)
        record = await rt.store.load(plan_id)
        if record is None:
            return web.json_response({"error": "no such plan"}, status=404)
        envelopes = [d.envelope for d in record.approvals]
        return web.Response(
            text=integrator.bundle(record.plan, envelopes), content_type="application/json"
        )

    app.router.add_post("/slack/events", slack_events)
    app.router.add_post(
        "/github/webhook", github_webhook.handler(rt.sophie, rt.settings.github_webhook_secret)
    )
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/.well-known/sophie/keys", keys)
    app.router.add_get("/.well-known/sophie/constitution", constitution)
    app.router.add_get("/plans/{plan_id}/bundle", plan_bundle)
    return app


async def _slack_reachable(rt: Runtime) -> bool:
    if rt.bolt is None:
        return False
    checked_at, ok = rt._slack_ready
    if time.monotonic() - checked_at < 30:
        return ok
    try:
        resp = await asyncio.wait_for(rt.slack.auth_test(), 3)
        ok = bool(resp.get("ok"))
    except Exception:
        ok = False
    rt._slack_ready = (time.monotonic(), ok)
    return ok
