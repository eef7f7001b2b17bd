"""Σ execution against the stateful fake GitHub: webhooks and polling, errors and rate
limits, GHES, killed workers, failure and rollback, and never two dispatches."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from handlers import blocks as kit
from tests import slack_requests as sr
from tests.fakes.github_rest import FakeGitHub
from tests.fakes.server import ThreadedServer
from tests.harness import App, env_for, eventually, settings_for, start_app
from tests.integration.conftest import ALICE, CHANNEL, DAVE, REPO, STAGING_URL, Fakes
from tests.integration.test_end_to_end import (
    _buttons,
    _text,
    cards,
    click,
    dispatched_inputs,
    response_to,
)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec-test-0123456789"
FAST: dict[str, Any] = {  # overrides for the harness, which str()s them
    "SOPHIE_DISPATCH_SETTLE_SECONDS": "1",
    "SOPHIE_STATUS_EDIT_SECONDS": "0.05",
    "GITHUB_WEBHOOK_SECRET": SECRET,
}


class Runner:
    def __init__(self, fakes: Fakes, redis_url: str, tmp_path: Path) -> None:
        self.fakes, self.redis_url, self.tmp = fakes, redis_url, tmp_path
        self.app: App | None = None

    def env(self, **overrides: str) -> dict[str, str]:
        return env_for(
            self.redis_url,
            self.tmp / "data",
            slack_url=self.fakes.slack_server.url,
            github_url=self.fakes.github_server.url,
            llm_url=None,
            **{**FAST, **overrides},
        )

    async def start(self, worker: bool = True, **overrides: str) -> App:
        settings = settings_for(
            self.redis_url,
            self.tmp / "data",
            slack_url=self.fakes.slack_server.url,
            github_url=self.fakes.github_server.url,
            llm_url=None,
            **{**FAST, **overrides},
        )
        self.app = await start_app(settings, worker=worker)
        return self.app

    async def approved(self, text: str = "deploy auth to staging", who: str = DAVE) -> Any:
        """Directive in, card out, approved by Alice: returns the card snapshot."""
        assert self.app is not None
        event = sr.mention_event(text, who, CHANNEL)
        await self.app.event(event)
        thread_ts = event["event"]["ts"]
        (card,) = await eventually(lambda: cards(self.fakes.slack, thread_ts), what="card")
        card = copy.deepcopy(card)
        value = _buttons(card.blocks)[kit.APPROVE]["value"]
        await self.app.interact(click(self.fakes, kit.APPROVE, value, ALICE, card.ts, "ok"))
        return card

    def thread_text(self, card: Any) -> str:
        return " ".join(
            (m.text or "") + _text(m.blocks)
            for m in self.fakes.slack.thread(CHANNEL, card.thread_ts)
        )

    def result(self, card: Any) -> Any:
        return next(
            (
                m
                for m in self.fakes.slack.thread(CHANNEL, card.thread_ts)
                if "plan `" in _text(m.blocks)
                and ("completed" in (m.text or "") or "failed" in (m.text or ""))
            ),
            None,
        )


@pytest.fixture()
async def runner(fakes: Fakes, redis_url: str, tmp_path: Path) -> AsyncIterator[Runner]:
    r = Runner(fakes, redis_url, tmp_path)
    yield r
    if r.app is not None:
        await r.app.close()


def status_messages(fakes: Fakes, card: Any) -> list[Any]:
    return [
        m
        for m in fakes.slack.thread(CHANNEL, card.thread_ts)
        if (m.text or "").startswith("Workflow run")
    ]


async def test_the_run_followed_by_webhooks_alone(runner: Runner, fakes: Fakes) -> None:
    fakes.github.auto_advance = False  # only our advance() moves the run
    app = await runner.start(SOPHIE_POLL_SECONDS="600")  # no polling to speak of
    fakes.github.webhook_url = f"{app.url}/github/webhook"
    fakes.github.webhook_secret = SECRET
    card = await runner.approved()
    (run_id,) = await eventually(lambda: list(fakes.github.runs), what="the run")
    await eventually(lambda: status_messages(fakes, card), what="status message")
    fakes.github.advance(run_id)  # build job running
    (status,) = await eventually(
        lambda: [m for m in status_messages(fakes, card) if "build" in _text(m.blocks)],
        what="status shows the build job",
    )
    assert "Build artifacts" in _text(status.blocks)
    fakes.github.advance(run_id, 2)  # deploy, then completed
    final = await eventually(lambda: runner.result(card), what="the result")
    assert STAGING_URL in _text(final.blocks)
    (status,) = status_messages(fakes, card)  # one message, edited in place
    assert "completed" in _text(status.blocks) and len(status.edits) >= 2
    assert all(d.get("status") == 200 for d in fakes.github.deliveries if "status" in d)
    assert fakes.github.rejections == []


async def test_the_run_followed_by_polling_alone(runner: Runner, fakes: Fakes) -> None:
    fakes.github.release_assets = ("auth-service_1.0_all.deb", "AuthService.dmg", "NOTES.txt")
    await runner.start()
    card = await runner.approved()
    final = await eventually(lambda: runner.result(card), what="the result")
    text = _text(final.blocks)
    assert STAGING_URL in text
    # Installers from the release, not every file; and the image the workflow pushed.
    assert "releases/download/v1.0.1/auth-service_1.0_all.deb" in text
    assert "AuthService.dmg" in text and "NOTES.txt" not in text
    (run_id,) = list(fakes.github.runs)
    assert f"ghcr.io/{REPO}:{fakes.github.runs[run_id].head_sha}" in text
    assert len(status_messages(fakes, card)) == 1
    assert fakes.github.deliveries == []  # no webhook configured on the fake


def _signed(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_webhook_signatures_and_duplicate_deliveries(runner: Runner, fakes: Fakes) -> None:
    app = await runner.start()
    url = f"{app.url}/github/webhook"
    body = json.dumps({"action": "completed", "workflow_run": {"id": 424242}}).encode()
    headers = {"X-GitHub-Event": "workflow_run", "X-GitHub-Delivery": "d-1"}
    bad = await app.session.post(
        url, data=body, headers={**headers, "X-Hub-Signature-256": _signed(body, "nope")}
    )
    missing = await app.session.post(url, data=body, headers=headers)
    assert (bad.status, missing.status) == (401, 401)
    good = await app.session.post(
        url, data=body, headers={**headers, "X-Hub-Signature-256": _signed(body)}
    )
    again = await app.session.post(
        url, data=body, headers={**headers, "X-Hub-Signature-256": _signed(body)}
    )
    assert good.status == 200 and (await good.json())["run_id"] == 424242
    assert again.status == 200 and (await again.json())["duplicate"] is True
    ping = await app.session.post(
        url,
        data=b"{}",
        headers={
            "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": "p",
            "X-Hub-Signature-256": _signed(b"{}"),
        },
    )
    assert (await ping.json())["pong"] is True


async def test_a_lost_dispatch_reply_is_found_not_repeated(runner: Runner, fakes: Fakes) -> None:
    await runner.start()
    fakes.github.fail_next("POST", r"/dispatches$", status=502, after=True)
    card = await runner.approved()
    final = await eventually(lambda: runner.result(card), within=15, what="the result")
    assert STAGING_URL in _text(final.blocks)
    assert len(fakes.github.dispatches) == 1
    assert "did not confirm the dispatch" in runner.thread_text(card)


async def test_a_refused_dispatch_is_retried_after_github_settles(
    runner: Runner, fakes: Fakes
) -> None:
    await runner.start()
    fakes.github.fail_next("POST", r"/dispatches$", status=503)  # never reached the workflow
    card = await runner.approved()
    final = await eventually(lambda: runner.result(card), within=15, what="the result")
    assert STAGING_URL in _text(final.blocks)
    assert len(fakes.github.dispatches) == 1


async def test_rate_limits_are_waited_out_and_reported(runner: Runner, fakes: Fakes) -> None:
    await runner.start()
    fakes.github.rate_limit_next("primary", wait=1)
    card = await runner.approved()
    await eventually(lambda: "rate limit delays plan" in runner.thread_text(card), what="note")
    (run_id,) = await eventually(lambda: list(fakes.github.runs), within=10, what="dispatch")
    fakes.github.rate_limit_next("secondary", wait=1)
    fakes.github.fail_next("GET", rf"/actions/runs/{run_id}$", status=502)  # retried by urllib3
    final = await eventually(lambda: runner.result(card), within=15, what="the result")
    assert STAGING_URL in _text(final.blocks)
    assert "rate limit delays tracking" in runner.thread_text(card)
    assert len(fakes.github.dispatches) == 1


async def test_github_enterprise_without_run_details(
    fakes: Fakes, redis_url: str, tmp_path: Path
) -> None:
    ghes = FakeGitHub(
        token="ghp_testtoken0123456789", repos=(REPO,), ghes=True, environment_url=STAGING_URL
    )
    server = ThreadedServer(ghes.app).start()
    runner = Runner(
        Fakes(fakes.slack, ghes, fakes.llm, fakes.slack_server, server, fakes.llm_server),
        redis_url,
        tmp_path,
    )
    try:
        await runner.start()
        card = await runner.approved()
        final = await eventually(lambda: runner.result(card), within=15, what="the result")
        assert STAGING_URL in _text(final.blocks)
        (run_id,) = list(ghes.runs)
        assert f"actions/runs/{run_id}" in _text(final.blocks)
        assert len(ghes.dispatches) == 1
        # The one refusal is GHES turning down return_run_details; nothing else.
        assert [r.status for r in ghes.rejections] == [422]
    finally:
        if runner.app is not None:
            await runner.app.close()
        server.stop()


async def test_concurrent_dispatch_jobs_dispatch_once(runner: Runner, fakes: Fakes) -> None:
    app = await runner.start(worker=False)
    event = sr.mention_event("deploy auth to staging", DAVE, CHANNEL)
    await app.event(event)
    await app.rt.start_worker()
    (card,) = await eventually(lambda: cards(fakes.slack, event["event"]["ts"]), what="card")
    plan_id = _buttons(card.blocks)[kit.APPROVE]["value"].split("|")[0]
    await app.interact(
        click(fakes, kit.APPROVE, _buttons(card.blocks)[kit.APPROVE]["value"], ALICE, card.ts, "a")
    )
    # Retried jobs and a second replica all try to dispatch the same plan at once.
    await asyncio.gather(*(app.rt.sophie.dispatch(plan_id) for _ in range(8)))
    await eventually(lambda: dispatched_inputs(fakes), what="dispatch")
    await asyncio.sleep(0.5)
    assert len(fakes.github.dispatches) == 1


async def test_a_failed_run_offers_rollback_to_the_last_good_deployment(
    runner: Runner, fakes: Fakes
) -> None:
    good = "a" * 40
    fakes.github.seed_deployment(REPO, "0" * 40, "staging", "success")  # older
    fakes.github.seed_deployment(REPO, good, "staging", "success")  # what runs now
    fakes.github.fail_job = "deploy-staging"
    app = await runner.start()
    card = await runner.approved()
    final = await eventually(lambda: runner.result(card), within=15, what="the failure")
    text = _text(final.blocks)
    assert "failed" in text and "deploy-staging" in text and "Deploy" in text
    assert "/job/" in text  # the failing job's log
    rollback = _buttons(final.blocks)[kit.ROLLBACK]
    fakes.github.fail_job = None

    # Rollback is the constitution's to allow: the requester is not an approver.
    press = click(fakes, kit.ROLLBACK, rollback["value"], DAVE, final.ts, "rb0")
    await app.interact(sr.in_thread(press, final.thread_ts))  # the result is in the thread
    refused = await eventually(lambda: response_to(fakes.slack, "rb0"), what="the refusal")
    assert "may not roll back" in refused["text"]
    started = time.monotonic()
    press = click(fakes, kit.ROLLBACK, rollback["value"], ALICE, final.ts, "rb")
    await app.interact(sr.in_thread(press, final.thread_ts))  # the result is in the thread
    inputs = await eventually(
        lambda: next((i for i in dispatched_inputs(fakes) if i.get("action") == "rollback"), None),
        what="the rollback dispatch",
    )
    elapsed = time.monotonic() - started
    assert inputs["deploy_sha"] == good and inputs["environment"] == "staging"
    reply = response_to(fakes.slack, "rb")
    assert reply is not None and "rollback" in reply["text"].lower()
    print(f"rollback click → dispatch: {elapsed * 1000:.0f} ms")


async def test_slash_rollback_goes_back_one_good_deployment(runner: Runner, fakes: Fakes) -> None:
    older, current = "b" * 40, "c" * 40
    fakes.github.seed_deployment(REPO, older, "staging", "success")
    fakes.github.seed_deployment(REPO, "d" * 40, "staging", "failure")
    fakes.github.seed_deployment(REPO, current, "staging", "success")
    app = await runner.start()
    body = sr.command_body(
        "rollback staging auth", ALICE, CHANNEL, f"{fakes.slack_server.url}/respond/c"
    )
    assert (await app.command(body)).status == 200
    inputs = await eventually(lambda: dispatched_inputs(fakes), what="rollback dispatch")
    assert inputs[0]["action"] == "rollback" and inputs[0]["deploy_sha"] == older


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bot", "worker"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_a_killed_worker_is_replaced_and_tracking_resumes(
    runner: Runner, fakes: Fakes
) -> None:
    fakes.github.auto_advance = False
    app = await runner.start(worker=False)  # the web process only; workers are processes
    env = runner.env(
        SOPHIE_JOB_LEASE_SECONDS="2",
        SOPHIE_WORKER_HEARTBEAT_SECONDS="0.5",
        SOPHIE_POLL_SECONDS="0.2",
    )
    first = _worker(env, runner.tmp / "worker-1.log")
    try:
        card = await runner.approved()
        (run_id,) = await eventually(lambda: list(fakes.github.runs), within=20, what="dispatch")
        fakes.github.advance(run_id)
        await eventually(lambda: status_messages(fakes, card), within=10, what="status")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        fakes.github.advance(run_id, 2)  # the run finishes while no worker is alive
        await asyncio.sleep(0.5)
        assert runner.result(card) is None
        second = _worker(env, runner.tmp / "worker-2.log")
        try:
            final = await eventually(lambda: runner.result(card), within=30, what="result")
            assert STAGING_URL in _text(final.blocks)
        finally:
            second.terminate()
            second.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert len(fakes.github.dispatches) == 1
    assert app is not None


async def test_a_plan_too_large_for_inputs_travels_by_authenticated_bundle_url(
    runner: Runner, fakes: Fakes
) -> None:
    # A model that writes a very detailed plan: far beyond GitHub's 65,535-character inputs.
    from tests.fakes.llm_api import Content
    from tests.fakes.llm_plans import planning_model

    normal = planning_model()

    def verbose(model: str, body: dict[str, Any]) -> Content:
        draft = json.loads(normal(model, body).text)
        # Step inputs are a closed schema, so the bulk is in the descriptions: 20 steps
        # of 990 three-byte characters each.
        test = next(s for s in draft["steps"] if s["action"] == "test")
        draft["steps"] += [dict(test) for _ in range(20 - len(draft["steps"]))]
        draft["steps"] = [
            {**step, "description": f"{n}: " + "€" * 990} for n, step in enumerate(draft["steps"])
        ]
        return Content(json.dumps(draft))

    fakes.llm.default = verbose
    settings = settings_for(
        runner.redis_url,
        runner.tmp / "data",
        slack_url=fakes.slack_server.url,
        github_url=fakes.github_server.url,
        llm_url=fakes.llm_server.url,
        SOPHIE_PUBLIC_URL="https://sophie.example.test",
        **FAST,
    )
    runner.app = app = await start_app(settings)
    card = await runner.approved()
    (inputs,) = await eventually(lambda: dispatched_inputs(fakes), what="dispatch")
    assert "plan" not in inputs and "envelopes" not in inputs
    bundle_url = inputs["bundle_url"]
    assert bundle_url.startswith(
        f"https://sophie.example.test/plans/{inputs['plan_id']}/bundle?token="
    )
    local = bundle_url.replace("https://sophie.example.test", app.url)
    async with app.session.get(local) as resp:
        bundle = await resp.json(content_type=None)
    assert resp.status == 200 and len(bundle["envelopes"]) == 1
    from roles.plan import Plan

    assert Plan.from_document(bundle["plan"]).digest == inputs["plan_digest"]
    forged = local.split("token=")[0] + "token=" + "0" * 32
    async with app.session.get(forged) as resp:
        assert resp.status == 401
    assert fakes.github.rejections == []
    assert card is not None


async def test_github_app_authentication(runner: Runner, fakes: Fakes) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    fakes.github.install_app("424242", public_pem, 77)
    key_file = runner.tmp / "app.pem"
    key_file.write_text(private_pem)
    settings = settings_for(
        runner.redis_url,
        runner.tmp / "data",
        slack_url=fakes.slack_server.url,
        github_url=fakes.github_server.url,
        llm_url=None,
        GITHUB_TOKEN="",  # no personal token: the App is the only way in
        GITHUB_APP_ID="424242",
        GITHUB_APP_PRIVATE_KEY_FILE=str(key_file),
        GITHUB_APP_INSTALLATION_ID="77",
        **FAST,
    )
    assert settings.github_token is None and not settings.dry_run
    assert private_pem in settings.secrets()  # never logged
    runner.app = await start_app(settings)
    card = await runner.approved()
    final = await eventually(lambda: runner.result(card), within=15, what="the result")
    assert STAGING_URL in _text(final.blocks)
    assert len(fakes.github.installation_tokens) >= 1
    used = {r.path for r in fakes.github.requests if r.status < 300}
    assert "/app/installations/77/access_tokens" in used
