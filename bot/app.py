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

import redis.asyncio as aioredis
from aiohttp import web
from arq.connections import ArqRedis
from arq.worker import Worker
from openai import AsyncOpenAI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot import api, github_webhook, jobs, slack_route, startup_checks
from bot.audit_log import AuditLog
from bot.constitution_source import ConstitutionSource
from bot.dry_run import DryRunGateway
from bot.embedded_redis import EmbeddedRedis
from bot.github_gateway import GitHubGateway, make_auth
from bot.health import readiness
from bot.llm import ATTRIBUTION, LLMPlanner
from bot.metrics import HTTP_SECONDS, REGISTRY, PrometheusMetrics
from bot.redis_health import log_persistence
from bot.redis_store import RedisStore
from bot.settings import Settings
from bot.signer import KeyRing, load_keyring
from bot.slack_directory import SlackDirectory
from bot.slack_notifier import SlackNotifier, retry_handlers
from bot.supervisor import SupervisedWorker
from handlers import actions, commands, events, home
from handlers.background import drain
from roles import integrator
from roles.offline_planner import OfflinePlanner
from roles.ports import CIGateway, Planner
from roles.sophie import Sophie, Tuning

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
    supervisor: SupervisedWorker | None = None
    _slack_ready: tuple[float, bool] = field(default=(0.0, False))

    async def start_worker(self) -> None:
        """Run jobs in this process, supervised: restarted after outages, with heartbeats."""
        s = self.settings
        self.worker = jobs.make_worker(
            self.pool, self.sophie, s.worker_poll_delay, s.job_timeout, s.job_lease_seconds
        )
        self.supervisor = SupervisedWorker(
            self.worker,
            self.redis,
            heartbeat_seconds=s.worker_heartbeat_seconds,
            lease_seconds=s.job_lease_seconds,
        )
        self.supervisor.start()

    async def stop_worker(self) -> None:
        """Take no new jobs, let running ones finish (bounded), then close."""
        if self.supervisor is not None:
            await self.supervisor.stop()
        self.supervisor = None
        self.worker = None

    async def close(self) -> None:
        await drain()
        await self.stop_worker()
        with contextlib.suppress(Exception):  # Redis may be gone at shutdown
            await self.pool.aclose()
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        if self.embedded is not None:
            await self.embedded.stop()


# How long a dispatched run may fetch its bundle (it verifies in its first job).
BUNDLE_TOKEN_SECONDS = 6 * 3600


def bundle_token(keyring: KeyRing, plan_id: str, expires: int | None = None) -> str:
    """A capability for one plan's bundle until ``expires`` (unix seconds; default
    :data:`BUNDLE_TOKEN_SECONDS` from now), derived from the signing key: the HMAC binds
    the plan and the expiry, so neither can be changed in the URL."""
    if expires is None:
        expires = int(time.time()) + BUNDLE_TOKEN_SECONDS
    secret = hashlib.sha256(b"sophie-bundle:" + bytes(keyring.signing)).digest()
    mac = hmac.new(secret, f"{plan_id}\n{expires}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"{expires}.{mac}"


def bundle_token_ok(keyring: KeyRing, plan_id: str, token: str, now: float | None = None) -> bool:
    """The token is this plan's, unaltered and not expired."""
    expires, dot, _ = token.partition(".")
    if not dot or not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
        return False
    if int(expires) <= (time.time() if now is None else now):
        return False
    return hmac.compare_digest(token, bundle_token(keyring, plan_id, int(expires)))


def _planner(settings: Settings) -> Planner:
    if settings.llm_api_key is None:
        return OfflinePlanner()
    client = AsyncOpenAI(
        api_key=settings.llm_api_key,
        base_url=settings.llm_base_url,
        timeout=settings.llm_timeout_seconds,
        max_retries=settings.llm_retries,
        default_headers=ATTRIBUTION,
    )
    return LLMPlanner(client, settings.llm_models, parallel=settings.llm_parallel)


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
    keyring = load_keyring(settings.signing_key, settings.signing_key_file, settings.data_dir)
    store = RedisStore(client, AuditLog(client, keyring, settings.data_dir))
    slack = AsyncWebClient(
        token=settings.slack_bot_token,
        base_url=settings.slack_api_url,
        retry_handlers=retry_handlers(),  # 429 (Retry-After), 5xx, connection errors
    )
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
            planning_deadline_seconds=startup_checks.planning_deadline(settings),
            stuck_seconds=settings.stuck_seconds,
            reconcile_seconds=settings.reconcile_seconds,
            model_ready=not settings.offline_planner,
        ),
        metrics=PrometheusMetrics(),
    )
    if settings.slack_bot_token is not None:
        # App Home is republished for the people a plan's change concerns (debounced).
        sophie.home_changed = home.HomeRefresher(sophie, slack)
    bolt = _bolt(settings, slack, sophie)
    await log_persistence(client)
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
        # Without a secret there is no HTTP route (web_app mounts /slack/events only with
        # one), so Bolt sees only Socket Mode requests, which carry no signature.
        request_verification_enabled=settings.slack_signing_secret is not None,
    )
    bolt.error(slack_route.listener_error)
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
        # Mounted only with a bot and a signing secret (startup_checks.slack_route_mounted).
        assert rt.bolt is not None and rt.settings.slack_signing_secret is not None
        return await slack_route.handle(request, rt.bolt, rt.settings.slack_signing_secret)

    async def healthz(_: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})

    async def readyz(_: web.Request) -> web.StreamResponse:
        # Ready: Redis answers and a worker is alive. Slack is reported, never required:
        # keys, bundles and webhooks are served without it.
        ready, body = await readiness(rt.redis, rt.supervisor)
        body["slack"] = await _slack_reachable(rt)
        return web.json_response(body, status=200 if ready else 503)

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
        if not bundle_token_ok(rt.keyring, plan_id, token):
            return web.json_response({"error": "bad, expired or missing token"}, status=401)
        record = await rt.store.load(plan_id)
        if record is None:
            return web.json_response({"error": "no such plan"}, status=404)
        envelopes = [d.envelope for d in record.approvals]
        change = record.run.change if record.run is not None else None
        statement = change.statement if change is not None and change.verdict == "checked" else None
        return web.Response(
            # The constitution travels too: the workflow verifies without calling back.
            text=integrator.bundle(record.plan, envelopes, rt.sophie.constitution(), statement),
            content_type="application/json",
        )

    # Fail closed: no signing secret (or Socket Mode, or no Slack at all) means no Slack route.
    if rt.bolt is not None and startup_checks.slack_route_mounted(rt.settings):
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
    # /api/v1/…: token-authenticated plans, trust gate and status (bot/api.py).
    api.mount(app, rt.sophie, rt.slack if rt.bolt is not None else None)
    return app


SLACK_CHECK_SECONDS = 30
_slack_checks: set[asyncio.Task[bool]] = set()


async def _slack_reachable(rt: Runtime) -> bool | None:
    """Slack's ``auth.test``, cached for 30 s; None when Slack is not configured.

    Reported by /readyz, never part of readiness, and never allowed to make the probe
    slow: a check that takes longer than half a second finishes in the background.
    """
    if rt.bolt is None:
        return None
    checked_at, ok = rt._slack_ready
    if time.monotonic() - checked_at < SLACK_CHECK_SECONDS:
        return ok
    rt._slack_ready = (time.monotonic(), ok)  # one check at a time

    async def check() -> bool:
        try:
            resp = await asyncio.wait_for(rt.slack.auth_test(), 3)
            fresh = bool(resp.get("ok"))
        except Exception:
            fresh = False
        rt._slack_ready = (time.monotonic(), fresh)
        return fresh

    task = asyncio.create_task(check())
    _slack_checks.add(task)
    task.add_done_callback(_slack_checks.discard)
    done, _ = await asyncio.wait({task}, timeout=0.5)
    return task.result() if done else ok
