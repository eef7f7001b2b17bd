"""What the fault suite drives and watches, from outside only.

SOPHIE is driven through its documented interfaces: signed Slack requests to a
running app (redelivered as Slack redelivers them), button clicks (clicked again
as a person would when Slack shows an error), and ``sophie worker`` processes.
It is watched only through what a team would see: the Slack thread (the fake's
messages) and the dispatches GitHub received.

The three promises checked after every fault (issue 9, "A fault suite in CI"):

* every directive ends with a card or a clear message in its thread;
* every approved plan ends with exactly one dispatch;
* every run ends with exactly one result message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from bot.settings import Settings
from handlers import blocks as kit
from tests import slack_requests as sr
from tests.fakes.github_rest import Dispatch, FakeGitHub
from tests.fakes.slack_api import FakeSlack, Message
from tests.faults.tcp_proxy import RedisProxy
from tests.harness import SIGNING_SECRET, App, env_for, eventually, start_app
from tests.integration.conftest import ALICE, CHANNEL, DAVE, Fakes
from tests.processes import WorkerProcess
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
DIRECTIVE = "deploy auth to staging"  # the offline planner: approval by one approver
MODEL = "openai/gpt-4o-mini"

# Every wait is shortened through the documented settings (bot/settings.py), never by
# sleeping: fast polls, a one-second dispatch settle, a 2 s job lease renewed every
# 0.5 s (a dead worker's job runs again within ~2 s), a short job timeout (it is also
# the dispatch lease a killed worker leaves behind), a 1 s model timeout, and a
# reconciler that sweeps every second.
FAST = {
    "SOPHIE_POLL_SECONDS": "0.05",
    "SOPHIE_WORKER_POLL_SECONDS": "0.02",
    "SOPHIE_DISPATCH_SETTLE_SECONDS": "1",
    "SOPHIE_STATUS_EDIT_SECONDS": "0.05",
    "SOPHIE_WORKER_HEARTBEAT_SECONDS": "0.5",
    "SOPHIE_JOB_LEASE_SECONDS": "2",
    "SOPHIE_JOB_TIMEOUT": "5",
    "SOPHIE_LLM_TIMEOUT": "1",
    # The reconciler sweeps every second and moves on what sat 2 s past its step.
    "SOPHIE_RECONCILE_SECONDS": "1",
    "SOPHIE_STUCK_SECONDS": "2",
}
# With a model in the loop, a job must outlive the model's timeouts, retries and repair.
FAST_LLM = {**FAST, "SOPHIE_JOB_TIMEOUT": "30"}

# Upper bounds, generous on purpose: a test waits only as long as the outcome takes.
CARD_WITHIN = 20.0
RESULT_WITHIN = 30.0
# After the outcome, how long nothing more may happen (no second card, dispatch, result).
# The card count is checked again once the run is over, so its own wait is short.
QUIET_SECONDS = 1.0
CARD_QUIET_SECONDS = 0.3
# Slack redelivers an event that got no 2xx "nearly immediately, then after 1 minute,
# then after 5 minutes" (https://api.slack.com/apis/events-api#retries), with
# X-Slack-Retry-Num and X-Slack-Retry-Reason; the suite compresses those gaps.
SLACK_RETRY_GAPS = (0.0, 2.5, 5.0)
# A person whose click Slack answered with an error clicks again after a moment.
CLICK_AGAIN_SECONDS = 1.5
CLICKS = 4

RESULT_TEXT = re.compile(r"^Plan (plan_\w+) (completed|failed)")


# --- where faults land: the Redis commands that carry each step ---------------------------
# (patterns for tests/faults/tcp_proxy.py; one place to follow the implementation's shape)

PLAN = r"sophie:plan:[^ :]+"  # a plan's record (its decisions etc. have a further ':')
SCRIPT = rf"^EVALSHA \S+ \d+ {PLAN} "  # one of SOPHIE's scripts on a plan


def moving_to(status: str) -> str:
    """The transition script moving a plan to ``status`` (its first argument, after keys)."""
    return rf"{SCRIPT}(?:sophie:\S+ )*(?:{status}) "


ENQUEUE_PLAN = r"^PSETEX arq:job:plan:"  # the planning job queued (arq's job key)
SAVE_PLAN = rf"^HSET {PLAN} doc "
RECORD_CARD = rf"^HSET {PLAN} card_ts "
DECIDE = rf"{SCRIPT}{PLAN}:decisions "  # the decide script: a plan and its decisions
ENQUEUE_DISPATCH = r"^PSETEX arq:job:dispatch:"
TO_DISPATCHING = moving_to("dispatching")
RECORD_RUN = rf'^HSET {PLAN} run \{{.*"run_id": \d'  # the first: GitHub accepted the dispatch
RECORD_POLL = rf'^HSET {PLAN} run \{{.*"status": "in_progress"'
TO_OUTCOME = moving_to("succeeded|failed")
REMEMBER = r"^HSETNX sophie:outcome "  # Ψ keeps the outcome (after it is marked)


# --- what the thread shows ---------------------------------------------------------------


def thread(slack: FakeSlack, thread_ts: str) -> list[Message]:
    return [m for m in slack.thread(CHANNEL, thread_ts) if not m.deleted]


def is_card(m: Message) -> bool:
    """A plan card, known by the metadata SOPHIE posts it with."""
    return (m.metadata or {}).get("event_type") == "sophie_plan_card"


def is_status(m: Message) -> bool:
    return (m.text or "").startswith("Workflow run")


def is_result(m: Message) -> bool:
    return bool(RESULT_TEXT.match(m.text or ""))


def cards(slack: FakeSlack, thread_ts: str) -> list[Message]:
    return [m for m in thread(slack, thread_ts) if is_card(m)]


def statuses(slack: FakeSlack, thread_ts: str) -> list[Message]:
    return [m for m in thread(slack, thread_ts) if is_status(m)]


def results(slack: FakeSlack, thread_ts: str) -> list[Message]:
    return [m for m in thread(slack, thread_ts) if is_result(m)]


def notes(slack: FakeSlack, thread_ts: str) -> list[Message]:
    """Plain messages: what SOPHIE tells the thread besides the card, status and result."""
    return [
        m
        for m in thread(slack, thread_ts)
        if not (is_card(m) or is_status(m) or is_result(m)) and (m.text or "").strip()
    ]


def dispatches(github: FakeGitHub, plan_id: str) -> list[Dispatch]:
    return [d for d in list(github.dispatches) if d.inputs.get("plan_id") == plan_id]


def approve_value(card: Message) -> str:
    for block in card.blocks or []:
        if block.get("type") == "actions":
            for element in block["elements"]:
                if element.get("action_id") == kit.APPROVE:
                    return str(element["value"])
    raise AssertionError(f"the card has no Approve button: {card.blocks}")


def describe(slack: FakeSlack, thread_ts: str) -> str:
    """The thread as a person reads it (for assertion messages)."""
    lines = [f"  - {(m.text or '')[:160]!r}" for m in thread(slack, thread_ts)]
    return "thread:\n" + ("\n".join(lines) or "  (empty)")


# --- the scene ----------------------------------------------------------------------------


class SlackFacing(Protocol):
    """Where Slack sends requests: an in-process :class:`App` or a `sophie serve` process."""

    async def event(self, payload: dict[str, Any], **kw: Any) -> aiohttp.ClientResponse: ...

    async def interact(self, payload: dict[str, Any], **kw: Any) -> aiohttp.ClientResponse: ...


class Scene:
    """One SOPHIE (or several processes) over a real Redis, reached through a proxy."""

    def __init__(self, fakes: Fakes, redis: RedisServer, proxy: RedisProxy, tmp: Path) -> None:
        self.fakes = fakes
        self.redis = redis
        self.proxy = proxy
        self.tmp = tmp
        self.apps: list[App] = []
        self.workers: list[WorkerProcess] = []
        self.webs: list[WebProcess] = []
        self.deliveries = 0  # how many times Slack sent the last directive
        self.clicks = 0  # how many times the approver clicked

    @property
    def slack(self) -> FakeSlack:
        return self.fakes.slack

    @property
    def github(self) -> FakeGitHub:
        return self.fakes.github

    @property
    def app(self) -> App:
        return self.apps[0]

    def env(
        self, *, llm: bool = False, direct: bool = False, extra: dict[str, str] | None = None
    ) -> dict[str, str]:
        """SOPHIE's environment: Redis through the proxy (or ``direct``), fakes, FAST."""
        env = env_for(
            self.redis.url if direct else self.proxy.url,
            self.tmp / "data",
            slack_url=self.fakes.slack_server.url,
            github_url=self.fakes.github_server.url,
            llm_url=self.fakes.llm_server.url if llm else None,
        )
        env.update(FAST_LLM if llm else FAST)
        env.update(extra or {})
        return env

    async def start(
        self,
        *,
        worker: bool = True,
        llm: bool = False,
        direct: bool = False,
        extra: dict[str, str] | None = None,
    ) -> App:
        """SOPHIE in this process (web, and its worker unless ``worker=False``)."""
        settings = Settings.from_env(self.env(llm=llm, direct=direct, extra=extra))
        app = await start_app(settings, worker=worker)
        self.apps.append(app)
        return app

    def worker(
        self, *, port: int | None = None, extra: dict[str, str] | None = None
    ) -> WorkerProcess:
        """``sophie worker`` as a process of its own, through the proxy."""
        n = len(self.workers) + 1
        proc = WorkerProcess(self.env(extra=extra), self.tmp / f"worker-{n}.log", port)
        self.workers.append(proc)
        return proc

    def web(self, *, extra: dict[str, str] | None = None) -> WebProcess:
        """``sophie serve --no-worker`` as a process of its own, through the proxy."""
        n = len(self.webs) + 1
        proc = WebProcess(self.env(extra=extra), self.tmp / f"web-{n}.log", free_port())
        self.webs.append(proc)
        return proc

    async def close(self) -> None:
        for web in self.webs:
            await web.close()
        for w in self.workers:
            w.stop()
        for app in self.apps:
            with contextlib.suppress(Exception):
                await app.close()

    # --- Slack, as Slack and people behave --------------------------------------------

    async def directive(self, text: str = DIRECTIVE, app: SlackFacing | None = None) -> str:
        """@mention SOPHIE; an answer other than 2xx is redelivered as Slack does.
        Returns the thread."""
        target: SlackFacing = app or self.app
        event = sr.mention_event(text, DAVE, CHANNEL)
        self.deliveries = 0
        for attempt, gap in enumerate((*SLACK_RETRY_GAPS, None)):
            extra = {}
            if attempt:
                extra = {"X-Slack-Retry-Num": str(attempt), "X-Slack-Retry-Reason": "http_error"}
            self.deliveries += 1
            try:
                resp = await target.event(event, extra=extra)
                if 200 <= resp.status < 300:
                    break
            except aiohttp.ClientError:
                pass
            if gap is None:
                break
            await asyncio.sleep(gap)
        return str(event["event"]["ts"])

    async def approve(self, card: Message, app: SlackFacing | None = None) -> str:
        """Alice clicks Approve until SOPHIE says it is approved (or already decided).
        Returns the plan id."""
        target: SlackFacing = app or self.app
        value = approve_value(card)
        plan_id = value.split("|")[0]
        url = self.fakes.slack_server.url
        said: list[str] = []
        for n in range(CLICKS):
            self.clicks += 1
            rid = f"approve-{plan_id}-{n}"
            click = sr.block_action(
                kit.APPROVE, value, ALICE, CHANNEL, card.ts, f"{url}/respond/{rid}"
            )
            try:
                resp = await target.interact(click)
                answered = resp.status == 200
            except aiohttp.ClientError:
                answered = False
            reply = await self._replied(rid) if answered else "(Slack showed an error)"
            if re.search(r"Approved|already", reply):
                return plan_id
            said.append(reply)
            await asyncio.sleep(CLICK_AGAIN_SECONDS)
        thread_ts = card.thread_ts or card.ts
        raise AssertionError(
            f"Alice clicked Approve {CLICKS} times and was told {said}; "
            f"{describe(self.slack, thread_ts)}"
        )

    async def _replied(self, rid: str, within: float = 5.0) -> str:
        """What SOPHIE answered the click on response URL ``rid`` ("" if nothing)."""

        def reply() -> str:
            for response in list(self.slack.responses):
                if response.id == rid:
                    return response.text or "(no text)"
            return ""

        with contextlib.suppress(AssertionError):
            return str(await eventually(reply, within=within))
        return ""

    # --- the promises --------------------------------------------------------------------

    async def outcome(self, thread_ts: str, within: float = CARD_WITHIN) -> Message | None:
        """Promise 1: the directive ends with a card (returned) or a clear message (None),
        and never with two cards."""
        await eventually(
            lambda: cards(self.slack, thread_ts) or notes(self.slack, thread_ts),
            within=within,
            what=(
                f"a card or a message in the thread (Slack delivered the event "
                f"{self.deliveries} time(s); {describe(self.slack, thread_ts)})"
            ),
        )
        await asyncio.sleep(CARD_QUIET_SECONDS)
        found = cards(self.slack, thread_ts)
        assert len(found) <= 1, f"{len(found)} cards; {describe(self.slack, thread_ts)}"
        return found[0] if found else None

    async def card(self, thread_ts: str, within: float = CARD_WITHIN) -> Message:
        card = await self.outcome(thread_ts, within)
        assert card is not None, f"no card, only a message; {describe(self.slack, thread_ts)}"
        return card

    async def finished(self, card: Message, plan_id: str, within: float = RESULT_WITHIN) -> Message:
        """Promises 2 and 3: one dispatch, one run, one result message."""
        thread_ts = card.thread_ts or card.ts
        await eventually(
            lambda: results(self.slack, thread_ts),
            within=within,
            what=(
                f"the result of {plan_id} ({len(dispatches(self.github, plan_id))} dispatches; "
                f"{describe(self.slack, thread_ts)})"
            ),
        )
        await asyncio.sleep(QUIET_SECONDS)
        sent = dispatches(self.github, plan_id)
        assert len(sent) == 1, f"{len(sent)} dispatches of {plan_id}"
        found = results(self.slack, thread_ts)
        assert len(found) == 1, f"{len(found)} results; {describe(self.slack, thread_ts)}"
        assert len(cards(self.slack, thread_ts)) == 1, describe(self.slack, thread_ts)
        return found[0]

    async def end_to_end(self, app: SlackFacing | None = None) -> tuple[Message, Message]:
        """A directive, its card, Alice's approval, the run and its one result."""
        thread_ts = await self.directive(app=app)
        card = await self.card(thread_ts)
        plan_id = await self.approve(card, app=app)
        return card, await self.finished(card, plan_id)


# --- worker processes -----------------------------------------------------------------------


class WebProcess:
    """``sophie serve --no-worker --port N`` as a real process, reached as Slack reaches it
    (signed requests to ``/slack/events``)."""

    def __init__(self, env: dict[str, str], log: Path, port: int) -> None:
        self.port = port
        self.log = log
        self._session: aiohttp.ClientSession | None = None
        args = [sys.executable, "-m", "bot", "serve", "--no-worker", "--port", str(port)]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                args, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def ready(self, within: float = 30.0) -> None:
        async def up() -> bool:
            assert self.proc.poll() is None, f"the web process exited:\n{self.output()[-2000:]}"
            try:
                async with self.session.get(f"{self.url}/healthz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(up, within=within, what="the web process up")

    async def post(
        self, body: str, content_type: str, *, extra: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        headers = sr.signed_headers(SIGNING_SECRET, body, None, content_type)
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

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    async def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._session is not None:
            await self._session.close()
