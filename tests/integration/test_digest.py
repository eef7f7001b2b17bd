"""The digest from outside: real worker processes against a real redis-server and the
fake Slack post one digest per slot; racing workers over Redis, a crash after posting,
``/sophie digest`` through the real Bolt app over signed HTTP, and ``sophie digest --now``.

Time is shortened through documented settings (``SOPHIE_DIGEST_CHECK_SECONDS``) or a
manual clock, never by waiting for the minute to turn.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp import web
from nacl.signing import SigningKey
from PIL import Image
from slack_sdk.web.async_client import AsyncWebClient

from bot import chart
from bot.redis_store import RedisStore
from bot.signer import KeyRing
from bot.slack_notifier import DIGEST_EVENT, SlackNotifier, retry_handlers
from roles import digest
from roles.constitution import Constitution, load_constitution
from roles.offline_planner import OfflinePlanner
from roles.sophie import Sophie
from roles.testing import ManualClock, ManualScheduler, ScriptedCI, StaticDirectory, constant
from tests import slack_requests as sr
from tests.fakes import blockkit
from tests.fakes.slack_api import FakeSlack, Message, SlackError
from tests.harness import BOT_TOKEN, App, env_for, eventually, settings_for, start_app
from tests.integration.conftest import CHANNEL, DAVE, Fakes
from tests.integration.test_end_to_end import cards
from tests.processes import WorkerProcess
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
DIGEST_CHANNEL = "C0DIGEST01"
OTHER_CHANNEL = "C0ELSEWHR1"
PNG = b"\x89PNG\r\n\x1a\n"


def _constitution(
    tmp_path: Path, channel: str = DIGEST_CHANNEL, schedule: str = "* * * * *"
) -> Path:
    doc = yaml.safe_load((ROOT / "constitution.yml").read_text())
    doc["policies_dir"] = str(ROOT / "policies")
    doc["digest"] = {"channel": channel, "schedule": schedule, "timezone": "UTC"}
    path = tmp_path / "constitution.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def digests(fake: FakeSlack, channel: str = DIGEST_CHANNEL) -> list[Message]:
    return [
        m
        for m in fake.channel_messages(channel, top_level_only=True)
        if (m.metadata or {}).get("event_type") == DIGEST_EVENT
    ]


def _key(m: Message) -> str:
    return str(((m.metadata or {}).get("event_payload") or {}).get("key"))


def _chart_of(fake: FakeSlack, m: Message) -> bytes:
    (up,) = [u for u in fake.uploads if u.thread_ts == m.ts]
    assert up.completed and up.channel_id == m.channel and up.content is not None
    return up.content


def history(fake: FakeSlack) -> Callable[[dict[str, Any], web.Request], dict[str, Any]]:
    """conversations.history as Slack documents it, for the fake (which has no such method):
    https://docs.slack.dev/reference/methods/conversations.history — channel required;
    top-level messages only (a thread's replies are read with conversations.replies),
    newest first; ``oldest`` exclusive unless ``inclusive``; ``limit`` up to 999
    (default 100); message metadata only with ``include_all_metadata``; the scope of the
    conversation's type (channels:history, groups:history for private channels)."""

    def handler(params: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = FakeSlack._channel(params)
        scope = "groups:history" if channel.startswith("G") else "channels:history"
        if scope not in fake.scopes:
            raise SlackError("missing_scope", [f"needed: {scope}"])
        try:
            limit = int(params.get("limit", 100))
            oldest = float(params.get("oldest") or 0)
        except (TypeError, ValueError) as exc:
            raise SlackError("invalid_arguments", [str(exc)]) from exc
        if not 1 <= limit <= 999:
            raise SlackError("invalid_limit")
        inclusive = str(params.get("inclusive", "")).lower() in ("1", "true")
        found = [
            m
            for m in fake.messages
            if m.channel == channel
            and not m.deleted
            and (m.thread_ts is None or m.thread_ts == m.ts or m.reply_broadcast)
            and (float(m.ts) >= oldest if inclusive else float(m.ts) > oldest)
        ]
        found.sort(key=lambda m: float(m.ts), reverse=True)
        out = [m.to_slack(fake.bot_id, fake.team) for m in found[:limit]]
        if str(params.get("include_all_metadata", "")).lower() not in ("1", "true"):
            for message in out:
                message.pop("metadata", None)
        return {
            "messages": out,
            "has_more": len(found) > limit,
            "pin_count": 0,
            "response_metadata": {"next_cursor": ""},
        }

    return handler


# -- worker processes on the real clock --------------------------------------------------------


@pytest.fixture()
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


async def test_two_worker_processes_post_one_digest_per_minute_slot(
    fakes: Fakes, redis_url: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    constitution = _constitution(tmp_path)
    seed = base64.b64encode(bytes(SigningKey.generate())).decode()
    for n in range(2):
        env = env_for(
            redis_url,
            tmp_path / f"data{n}",
            slack_url=fakes.slack_server.url,
            github_url=fakes.github_server.url,
            llm_url=None,
            constitution=constitution,
            SOPHIE_SIGNING_KEY=seed,
            SOPHIE_DIGEST_CHECK_SECONDS=1,  # both look every second, and at start-up
        )
        workers.append(WorkerProcess(env, tmp_path / f"worker{n}.log", port=free_port()))
    await asyncio.gather(*(w.ready() for w in workers))
    ready = time.monotonic()
    first = await eventually(lambda: digests(fakes.slack), within=20, what="a digest")
    waited = time.monotonic() - ready
    # Both workers keep looking every second: a few more ticks each, same slot or next.
    await asyncio.sleep(3)
    posted = digests(fakes.slack)
    keys = Counter(_key(m) for m in posted)
    assert keys and all(count == 1 for count in keys.values()), keys
    assert _key(first[0]).startswith(f"digest:{DIGEST_CHANNEL}:")
    for message in posted:
        # The slot is the minute the message was posted in (or the one before, at the turn).
        assert blockkit.message_problems(message.text, message.blocks, None) == []
        content = _chart_of(fakes.slack, message)
        assert content.startswith(PNG)
        with Image.open(io.BytesIO(content)) as image:
            assert image.size == (chart.WIDTH, chart.HEIGHT)
    assert fakes.slack.rejections == []
    assert all("Traceback" not in w.output() for w in workers)
    # Each slot was posted by one worker (its log says so), whichever it was.
    said = Counter(
        line.split("digest for ")[1].split()[0]
        for w in workers
        for line in w.output().splitlines()
        if "digest for " in line and " posted to " in line
    )
    assert said == keys
    print(f"\n2 workers: first digest {waited:.2f} s after both were ready; {dict(keys)}")


# -- racing workers over Redis, on a manual clock ------------------------------------------------


def _sophie(redis_url: str, fakes: Fakes, constitution: Constitution, clock: ManualClock) -> Sophie:
    """One replica: its own Redis connection and Slack client (as a separate process has)."""
    slack = AsyncWebClient(
        token=BOT_TOKEN,
        base_url=fakes.slack_server.url + "/api/",
        retry_handlers=retry_handlers(),
    )
    return Sophie(
        constitution=constant(constitution),
        planner=OfflinePlanner(),
        store=RedisStore(aioredis.Redis.from_url(redis_url)),
        signer=KeyRing(SigningKey.generate(), {}),
        ci=ScriptedCI(),
        notifier=SlackNotifier(slack),
        scheduler=ManualScheduler(clock),
        directory=StaticDirectory(),
        clock=clock,
    )


@pytest.fixture()
async def replicas(
    fakes: Fakes, redis_url: str, tmp_path: Path
) -> AsyncIterator[tuple[ManualClock, list[Sophie]]]:
    # Before the fake Slack's message timestamps (1700000000…): the digest looks for its
    # message from its slot on, as in Slack, where a message is always later than its slot.
    clock = ManualClock(datetime(2023, 11, 14, 19, 0, tzinfo=UTC))
    constitution = load_constitution(_constitution(tmp_path))
    found = [_sophie(redis_url, fakes, constitution, clock) for _ in range(3)]
    fakes.slack.handlers["conversations.history"] = history(fakes.slack)
    yield clock, found
    for s in found:
        assert isinstance(s.store, RedisStore)
        await s.store.r.aclose()


async def test_racing_replicas_over_redis_post_once_per_slot(
    fakes: Fakes, replicas: tuple[ManualClock, list[Sophie]]
) -> None:
    clock, sophies = replicas
    for _minute in range(5):
        for _ in range(2):  # every replica ticks twice in the minute, all at once
            await asyncio.gather(*(s.digest_tick() for s in sophies))
        clock.advance(60)
    posted = digests(fakes.slack)
    assert [_key(m) for m in posted] == [
        f"digest:{DIGEST_CHANNEL}:2023-11-14T19:0{minute}Z" for minute in range(5)
    ]
    for message in posted:
        assert _chart_of(fakes.slack, message).startswith(PNG)
    assert fakes.slack.calls_to("conversations.history") == []  # nobody had to look
    assert fakes.slack.rejections == []


async def test_a_replica_that_died_after_posting_is_not_posted_twice(
    fakes: Fakes, replicas: tuple[ManualClock, list[Sophie]], redis_url: str
) -> None:
    clock, (first, second, _) = replicas
    ts = await first.digest_tick()
    assert ts is not None
    (message,) = digests(fakes.slack)
    key = _key(message)
    # What a crash between Slack's answer and the last write leaves behind: the attempt is
    # recorded, "done" is not (AOF lost it, or the worker died), and the claim has lapsed.
    redis = aioredis.Redis.from_url(redis_url)
    try:
        assert await redis.hdel(f"sophie:memo:{key}", "done") == 1
        assert await redis.exists(f"sophie:lease:{key}") == 0
    finally:
        await redis.aclose()
    assert await second.digest_tick() == message.ts  # found in the channel by its key
    assert len(digests(fakes.slack)) == 1
    (look,) = fakes.slack.calls_to("conversations.history")
    assert look.params["channel"] == DIGEST_CHANNEL
    assert str(look.params["include_all_metadata"]).lower() in ("1", "true")
    assert await first.digest_tick() is None  # done now
    clock.advance(60)
    assert await second.digest_tick() is not None  # the next slot is its own
    assert len(digests(fakes.slack)) == 2
    assert fakes.slack.rejections == []


async def test_slack_failing_leaves_the_slot_to_the_next_tick(
    fakes: Fakes, replicas: tuple[ManualClock, list[Sophie]]
) -> None:
    clock, (first, second, _) = replicas
    fakes.slack.fail_next("chat.postMessage", "internal_error")
    with pytest.raises(Exception, match="internal_error"):
        await first.digest_tick()
    assert digests(fakes.slack) == []
    clock.advance(20)  # the same slot, a later tick on another replica
    assert await second.digest_tick() is not None
    assert len(digests(fakes.slack)) == 1
    assert len(fakes.slack.calls_to("conversations.history")) == 1  # it looked first


# -- /sophie digest through the real Bolt app ----------------------------------------------------


@pytest.fixture()
async def digest_app(fakes: Fakes, redis_url: str, tmp_path: Path) -> AsyncIterator[App]:
    settings = settings_for(
        redis_url,
        tmp_path / "data",
        slack_url=fakes.slack_server.url,
        github_url=fakes.github_server.url,
        llm_url=None,
        constitution=_constitution(tmp_path, channel=CHANNEL, schedule="0 9 * * 1-5"),
    )
    app = await start_app(settings)
    yield app
    await app.close()


async def _ask(app: App, fakes: Fakes, channel: str) -> dict[str, Any]:
    body = sr.command_body("digest", DAVE, channel, f"{fakes.slack_server.url}/respond/dg")
    resp = await app.command(body)
    assert resp.status == 200
    ack: dict[str, Any] = await resp.json()
    return ack


async def test_slash_digest_answers_ephemerally_over_http(digest_app: App, fakes: Fakes) -> None:
    app = digest_app
    event = sr.mention_event("deploy auth to staging <!channel>", DAVE, CHANNEL)
    await app.event(event)
    (card,) = await eventually(lambda: cards(fakes.slack, event["event"]["ts"]), what="card")
    records = await app.rt.store.recent(5)
    plan_id = records[0].plan.id
    messages_before = len(fakes.slack.messages)

    ack = await _ask(app, fakes, CHANNEL)  # the digest channel: everything
    assert ack["response_type"] == "ephemeral" and ack["text"].startswith("SOPHIE digest")
    assert blockkit.message_problems(ack["text"], ack["blocks"], None) == []
    shown = str(ack["blocks"])
    assert "Waiting for approval* (1)" in shown and plan_id in shown
    assert "<!channel>" not in shown and "Deploys per day (lead p50)" in shown

    elsewhere = await _ask(app, fakes, OTHER_CHANNEL)  # figures only
    assert blockkit.message_problems(elsewhere["text"], elsewhere["blocks"], None) == []
    shown = str(elsewhere["blocks"])
    assert "Waiting for approval*: 1" in shown and plan_id not in shown
    assert "acme/auth-service" not in shown

    # Nothing was posted, and the scheduled digest still starts from the last one posted.
    assert len(fakes.slack.messages) == messages_before and fakes.slack.uploads == []
    assert await app.rt.store.memo(digest.last_key(CHANNEL)) == {}
    assert fakes.slack.rejections == []
    assert card is not None


async def test_help_mentions_the_digest(digest_app: App, fakes: Fakes) -> None:
    body = sr.command_body("help", DAVE, CHANNEL, f"{fakes.slack_server.url}/respond/h")
    ack = await (await digest_app.command(body)).json()
    assert "/sophie digest" in ack["text"]


# -- sophie digest --now --------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("SOPHIE_", "SLACK_", "GITHUB_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_digest_now_posts_to_the_digest_channel_or_prints(
    fakes: Fakes, redis_url: str, tmp_path: Path
) -> None:
    env = env_for(
        redis_url,
        tmp_path / "data",
        slack_url=fakes.slack_server.url,
        github_url=None,
        llm_url=None,
        constitution=_constitution(tmp_path, schedule="0 9 * * 1-5"),
    )
    posted = await asyncio.to_thread(_cli, "digest", "--now", env=env)
    assert posted.returncode == 0, posted.stderr
    assert f"posted the digest to {DIGEST_CHANNEL}" in posted.stdout
    (message,) = digests(fakes.slack)
    assert _key(message) == "on-demand"
    assert _chart_of(fakes.slack, message).startswith(PNG)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        last = await redis.hgetall(f"sophie:memo:{digest.last_key(DIGEST_CHANNEL)}")
        assert b"at" in last and b"trusts" in last  # the next digest starts here
    finally:
        await redis.aclose()

    printed = await asyncio.to_thread(_cli, "digest", "--now", "--print", env=env)
    assert printed.returncode == 0 and printed.stdout.startswith("SOPHIE digest")
    assert "Deployment frequency" in printed.stdout and len(digests(fakes.slack)) == 1

    no_slack = {k: v for k, v in env.items() if not k.startswith("SLACK_")}
    quiet = await asyncio.to_thread(_cli, "digest", "--now", env=no_slack)
    assert quiet.returncode == 0 and "Slack is not configured" in quiet.stderr
    assert "Waiting for approval (0):" in quiet.stdout
    assert len(digests(fakes.slack)) == 1

    missing = await asyncio.to_thread(_cli, "digest", env=env)
    assert missing.returncode == 2 and "--now" in missing.stderr
    assert fakes.slack.rejections == []
