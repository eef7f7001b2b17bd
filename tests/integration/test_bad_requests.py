"""Malformed requests, sent over real HTTP to the running app as an attacker or a broken
proxy would: each gets a deliberate 4xx (never a 500), nothing is planned, posted or
queued, and the app keeps working. GitHub webhooks are read whole (to GitHub's 25 MB
cap) before the HMAC check, and a signed body replayed under a fresh delivery id costs
nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
import redis.exceptions

from handlers import blocks as kit
from tests import slack_requests as sr
from tests.harness import SIGNING_SECRET, App, eventually, settings_for, start_app
from tests.integration.conftest import ALICE, CHANNEL, DAVE, Fakes
from tests.integration.test_end_to_end import cards

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
WEBHOOK_SECRET = "whsec-test-bad-requests-0123"


def _sign(body: bytes, timestamp: str, secret: str = SIGNING_SECRET) -> str:
    """Slack's v0 signature over the raw bytes (so bodies that are not UTF-8 can be signed)."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


async def send(
    app: App,
    body: bytes,
    content_type: str = JSON,
    *,
    timestamp: str | None = None,
    signature: str | None = None,
    unsigned: bool = False,
) -> tuple[int, Any]:
    ts = timestamp if timestamp is not None else str(int(time.time()))
    headers = {"Content-Type": content_type}
    if not unsigned:
        headers["X-Slack-Request-Timestamp"] = ts
        headers["X-Slack-Signature"] = signature or _sign(body, ts)
    try:
        async with app.session.post(f"{app.url}/slack/events", data=body, headers=headers) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
        # A body refused as too large is not read: the server answers 413 and closes, and
        # the client may see the reset before the answer. The log line shows the 413.
        return 413, {"error": "connection closed after 413"}


def _event(**event: Any) -> bytes:
    payload = sr.mention_event("deploy auth to production", DAVE, CHANNEL)
    payload["event"] = {**payload["event"], **event}
    return (
        json.dumps({k: v for k, v in payload["event"].items() if v is not None})
        .join(['{"type": "event_callback", "team_id": "T0SOPHIE01", "event": ', "}"])
        .encode()
    )


def _without(payload: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in keys}


def _form(payload: Any) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


def _click(**action: Any) -> dict[str, Any]:
    payload = sr.block_action(kit.APPROVE, "plan-1|abc", ALICE, CHANNEL, "1.0", "http://x/r")
    payload["actions"] = [{k: v for k, v in {**payload["actions"][0], **action}.items() if v}]
    return payload


def _submission() -> dict[str, Any]:
    return sr.view_submission(kit.VETO_MODAL, "plan-1|abc", ALICE, {"reason": {"text": "no"}})


def _command(**fields: str) -> bytes:
    body = dict(
        item.split("=", 1)
        for item in sr.command_body("deploy auth", DAVE, CHANNEL, "http://x/r").split("&")
    )
    body.update(fields)
    return "&".join(f"{k}={v}" for k, v in body.items() if v).encode()


DEEP = b'{"type": "event_callback", "event": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
NESTED_100 = b'{"type": "event_callback", "event": {"type": "app_mention", "x": ' + (
    b"[" * 100 + b"]" * 100 + b"}}"
)

MALFORMED: list[tuple[str, bytes, str, int]] = [
    ("invalid JSON", b'{"type": "event_callback", ', JSON, 400),
    ("JSON array", b'[{"type": "event_callback"}]', JSON, 400),
    ("JSON string", b'"event_callback"', JSON, 400),
    ("deeply nested JSON", DEEP, JSON, 400),
    ("JSON nested 100 deep", NESTED_100, JSON, 400),
    ("not UTF-8", b'{"type": "\xff\xfe"}', JSON, 400),
    ("empty body", b"", JSON, 400),
    ("no type", b'{"event": {}}', JSON, 400),
    ("event_callback without event", b'{"type": "event_callback"}', JSON, 400),
    ("event is a list", b'{"type": "event_callback", "event": []}', JSON, 400),
    ("event without type", b'{"type": "event_callback", "event": {"user": "U1"}}', JSON, 400),
    ("mention without channel", _event(channel=None), JSON, 400),
    ("mention without ts", _event(ts=None), JSON, 400),
    ("mention without user", _event(user=None), JSON, 400),
    ("channel is an object", _event(channel={"id": CHANNEL}), JSON, 400),
    ("text is a number", _event(text=42), JSON, 400),
    ("url_verification without challenge", b'{"type": "url_verification"}', JSON, 400),
    ("team is a number", b'{"type": "event_callback", "team": 5, "event": {}}', JSON, 400),
    ("authorizations not a list", b'{"type": "x", "authorizations": "abc"}', JSON, 400),
    ("wrong content type", b'{"type": "event_callback"}', "text/plain", 415),
    ("no content type", b'{"type": "event_callback"}', "", 415),
    ("form without payload", b"foo=bar&baz=1", FORM, 400),
    ("form that is JSON", b'{"type": "block_actions"}', FORM, 400),
    ("payload not JSON", b"payload=%7Bnot-json", FORM, 400),
    ("payload a list", _form([_click()]), FORM, 400),
    ("payload deeply nested", b"payload=" + b"%5B" * 5000 + b"%5D" * 5000, FORM, 400),
    ("block_actions without actions", _form(_without(_click(), "actions")), FORM, 400),
    ("block_actions with no action", _form({**_click(), "actions": []}), FORM, 400),
    ("block_actions without user", _form(_without(_click(), "user")), FORM, 400),
    ("user without id", _form({**_click(), "user": {"name": "x"}}), FORM, 400),
    ("action not an object", _form({**_click(), "actions": ["approve"]}), FORM, 400),
    ("button without value", _form(_click(value=None)), FORM, 400),
    ("value is a number", _form(_click(value=7)), FORM, 400),
    ("action without action_id", _form(_click(action_id=None)), FORM, 400),
    ("block_actions without trigger_id", _form(_without(_click(), "trigger_id")), FORM, 400),
    ("view_submission without view", _form(_without(_submission(), "view")), FORM, 400),
    ("view is a string", _form({**_submission(), "view": "V1"}), FORM, 400),
    (
        "view state not an object",
        _form({**_submission(), "view": {**_submission()["view"], "state": []}}),
        FORM,
        400,
    ),
    (
        "private_metadata a number",
        _form({**_submission(), "view": {**_submission()["view"], "private_metadata": 1}}),
        FORM,
        400,
    ),
    ("view_submission without user", _form(_without(_submission(), "user")), FORM, 400),
    ("slash command without user_id", _command(user_id=""), FORM, 400),
    ("slash command without channel_id", _command(channel_id=""), FORM, 400),
    ("too large (1 MB + 1)", b"x" * (1024 * 1024 + 1), JSON, 413),
]


@pytest.fixture()
async def web(fakes: Fakes, redis_url: str, tmp_path: Path) -> AsyncIterator[App]:
    settings = settings_for(
        redis_url,
        tmp_path / "data",
        slack_url=fakes.slack_server.url,
        github_url=fakes.github_server.url,
        llm_url=None,
        GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    running = await start_app(settings, worker=False)
    yield running
    await running.close()


async def _no_plans(app: App) -> bool:
    return [k async for k in app.rt.redis.scan_iter("sophie:plan*")] == []


async def test_every_malformed_slack_request_gets_a_4xx(
    app: App, fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    for name, body, content_type, expected in MALFORMED:
        status, answer = await send(app, body, content_type)
        assert status == expected, (name, status, answer)
        assert isinstance(answer, dict) and answer["error"], name
    # Each refusal is logged with its reason, never the body or the signature.
    refusals = [r.getMessage() for r in caplog.records if "refused a Slack request" in r.message]
    assert len(refusals) == len(MALFORMED)
    assert any(": 413 body larger than 1 MB" in line for line in refusals)
    assert not any("v0=" in line or "deploy auth" in line for line in refusals)
    assert await _no_plans(app)
    assert fakes.slack.messages == [] and fakes.slack.responses == []
    # The app still works: a well-formed directive gets its card.
    event = sr.mention_event("deploy auth to staging", DAVE, CHANNEL)
    assert (await app.event(event)).status == 200
    await eventually(lambda: cards(fakes.slack, event["event"]["ts"]), what="the card")


@pytest.mark.parametrize(
    ("name", "timestamp", "signature", "unsigned", "expected"),
    [
        ("no signature headers", None, None, True, 401),
        ("forged signature", None, "v0=" + "0" * 64, False, 401),
        ("signed with another secret", None, "other", False, 401),
        ("non-numeric timestamp", "abc", None, False, 400),
        ("timestamp with a sign", "+1700000000", None, False, 400),
        ("timestamp too long", "1" * 40, None, False, 400),
        ("stale timestamp (6 minutes)", "-360", None, False, 401),
        ("future timestamp (6 minutes)", "+360s", None, False, 401),
        ("signature not ASCII-hex", None, "v0=ÿÿ", False, 401),
    ],
)
async def test_signature_and_timestamp_are_checked_first(
    app: App,
    fakes: Fakes,
    name: str,
    timestamp: str | None,
    signature: str | None,
    unsigned: bool,
    expected: int,
) -> None:
    body = json.dumps(sr.mention_event("deploy auth to production", DAVE, CHANNEL)).encode()
    if timestamp in ("-360", "+360s"):  # relative to now, not to when the tests were collected
        timestamp = str(int(time.time()) + int(timestamp.rstrip("s")))
    if signature == "other":
        ts = timestamp or str(int(time.time()))
        signature, timestamp = _sign(body, ts, "another-secret"), ts
    status, answer = await send(
        app, body, timestamp=timestamp, signature=signature, unsigned=unsigned
    )
    assert status == expected, (name, answer)
    assert await _no_plans(app)
    assert fakes.slack.messages == []


async def test_a_failing_listener_is_answered_deliberately(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last resort behind the checks: what a listener raises maps to a chosen status."""
    for error, expected in [
        (KeyError("channel"), 400),
        (redis.exceptions.ConnectionError("redis went away"), 503),
        (RuntimeError("a bug"), 500),
    ]:

        async def fail(*_: Any, error: Exception = error) -> None:
            raise error

        monkeypatch.setattr(app.rt.sophie, "receive", fail)
        body = json.dumps(sr.mention_event("deploy auth to staging", DAVE, CHANNEL)).encode()
        status, answer = await send(app, body)
        assert (status, answer["ok"]) == (expected, False), (error, answer)


async def test_a_slash_command_mentioning_payload_is_not_lost(app: App) -> None:
    """Bolt reads any form body containing "payload" as an interaction; ours is parsed once."""
    body = sr.command_body("help payload", DAVE, CHANNEL, "http://127.0.0.1:9/r")
    resp = await app.command(body)
    assert resp.status == 200


# -- GitHub webhooks ---------------------------------------------------------------------


def _hub(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _run_body(run_id: int, size: int = 0) -> bytes:
    payload: dict[str, Any] = {"action": "completed", "workflow_run": {"id": run_id}}
    if size:
        # Real run payloads carry the repository, head commit, pull requests…: pad to size.
        payload["padding"] = ""
        payload["padding"] = "x" * (size - len(json.dumps(payload)))
    body = json.dumps(payload).encode()
    assert not size or len(body) == size
    return body


async def hook(
    app: App,
    body: bytes,
    delivery: str,
    *,
    event: str = "workflow_run",
    signature: str | None = None,
) -> tuple[int, dict[str, Any]]:
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature if signature is not None else _hub(body),
    }
    async with app.session.post(f"{app.url}/github/webhook", data=body, headers=headers) as r:
        return r.status, await r.json()


class Enqueued(list[tuple[str, str]]):
    """Records what the webhook queues (through the Scheduler port) and passes it on."""

    def __init__(self, app: App, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        scheduler = app.rt.sophie.scheduler
        inner = scheduler.enqueue

        async def enqueue(job: str, key: str, payload: dict[str, Any], delay: float = 0) -> None:
            self.append((job, key))
            await inner(job, key, payload, delay)

        monkeypatch.setattr(scheduler, "enqueue", enqueue)


async def test_large_signed_webhooks_are_read_whole(
    web: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued = Enqueued(web, monkeypatch)
    for n, size in enumerate((600 * 1024, 2 * 1024 * 1024, 20 * 1024 * 1024)):
        body = _run_body(5000 + n, size)
        status, answer = await hook(web, body, f"big-{n}")
        assert (status, answer.get("run_id")) == (200, 5000 + n), (size, answer)
    assert [key for _, key in queued] == ["run_event:big-0", "run_event:big-1", "run_event:big-2"]


async def test_a_webhook_over_githubs_cap_is_refused(
    web: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    queued = Enqueued(web, monkeypatch)
    body = _run_body(9000, 25 * 1024 * 1024 + 1)
    try:
        status, answer = await hook(web, body, "huge")
        assert status == 413, answer
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
        pass  # answered 413 and closed without reading the rest: the client saw the reset
    assert any("webhook refused: 413" in r.getMessage() for r in caplog.records)
    assert queued == []
    assert (await hook(web, _run_body(9001), "after"))[1]["run_id"] == 9001


async def test_a_replayed_webhook_costs_nothing(web: App, monkeypatch: pytest.MonkeyPatch) -> None:
    queued = Enqueued(web, monkeypatch)
    body = _run_body(424242)
    assert await hook(web, body, "d-1") == (200, {"ok": True, "run_id": 424242})
    # GitHub's own redelivery (same id) and a replay under a fresh id: answered, not queued.
    for delivery in ("d-1", "d-2", "d-3"):
        assert await hook(web, body, delivery) == (200, {"ok": True, "duplicate": True})
    # The same signed body under another event name is still the same body.
    assert (await hook(web, body, "d-4", event="workflow_job"))[1]["duplicate"] is True
    assert queued == [("run_event", "run_event:d-1")]
    # A different run is news.
    assert (await hook(web, _run_body(424243), "d-5"))[1]["run_id"] == 424243


async def test_forged_and_malformed_webhooks(web: App, monkeypatch: pytest.MonkeyPatch) -> None:
    queued = Enqueued(web, monkeypatch)
    body = _run_body(777, 600 * 1024)
    forged = [
        ("no signature", ""),
        ("another secret", _hub(body, "not-the-secret")),
        ("signature of a truncated body", _hub(body[: 64 * 1024])),
        ("sha1 style", "sha1=" + hashlib.sha1(body).hexdigest()),
    ]
    for name, signature in forged:
        status, _ = await hook(web, body, f"forged-{name}", signature=signature)
        assert status == 401, name
    malformed = [
        b'{"workflow_run": ',
        b"[1, 2, 3]",
        b'{"workflow_run": "424242"}',
        b'{"workflow_run": {"id": "abc"}}',
        b'{"workflow_run": {"id": true}}',
        b'{"workflow_run": {"id": -1}}',
        b'{"workflow_run": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ]
    for n, bad in enumerate(malformed):
        status, answer = await hook(web, bad, f"bad-{n}")
        assert status == 400, (bad[:40], answer)
    assert (await hook(web, body, "no-delivery-id"))[0] == 200  # the body itself is fine
    status, _ = await hook(web, _run_body(778), "")
    assert status == 400  # no X-GitHub-Delivery
    assert queued == [("run_event", "run_event:no-delivery-id")]
