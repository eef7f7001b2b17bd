"""The HTTP API from outside: real HTTP requests to a running SOPHIE (real Redis, fake
Slack, GitHub and model), every answer validated against the OpenAPI document it serves.

A plan asked for over the API gets the card, the approvals and the audit of a plan asked
for in Slack; GET /api/v1/plans/{id} then answers the seed's example result. Tokens,
scopes, channels, bodies and forged decisions are tried as a careless or hostile client
would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from handlers import blocks as kit
from roles.records import PlanStatus
from tests import slack_requests as sr
from tests.fakes.llm_api import content
from tests.harness import ROOT, App, eventually, settings_for, start_app
from tests.integration.conftest import ALICE, BOB, CAROL, CHANNEL, DAVE, REPO, STAGING_URL, Fakes
from tests.integration.test_end_to_end import SEED, _buttons, click, response_to

WRITER = "sophie_test-writer-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
READER = "sophie_test-reader-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
ELSEWHERE = "sophie_test-elsewhere-5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"
OTHER_CHANNEL = "C0ELSEWHERE"


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def constitution_with_tokens(tmp_path: Path, **replace: str) -> Path:
    """The example constitution, with three tokens granted (and ``replace`` applied)."""
    text = (ROOT / "constitution.yml").read_text()
    text = text.replace("policies_dir: policies", f"policies_dir: {ROOT / 'policies'}")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    tokens = [
        {
            "name": "release-bot",
            "sha256": _sha(WRITER),
            "scopes": ["plans:write", "plans:read", "trust-gate"],
            "channel": CHANNEL,
            "team": sr.TEAM,
            "user": BOB,  # an approver, who may not approve what they asked for
        },
        {"name": "dashboard", "sha256": _sha(READER), "scopes": ["plans:read"], "channel": CHANNEL},
        {
            "name": "elsewhere",
            "sha256": _sha(ELSEWHERE),
            "scopes": ["plans:write", "plans:read", "trust-gate"],
            "channel": OTHER_CHANNEL,
            "team": sr.TEAM,
            "user": DAVE,
        },
    ]
    path = tmp_path / "constitution.yml"
    path.write_text(text + "\n" + yaml.safe_dump({"api": {"tokens": tokens}}))
    return path


@pytest.fixture()
async def api_app(fakes: Fakes, redis_url: str, tmp_path: Path) -> AsyncIterator[App]:
    settings = settings_for(
        redis_url,
        tmp_path / "data",
        slack_url=fakes.slack_server.url,
        github_url=fakes.github_server.url,
        llm_url=fakes.llm_server.url,
        constitution=constitution_with_tokens(tmp_path),
    )
    running = await start_app(settings)
    yield running
    await running.close()


class Client:
    """An API client that checks every answer against the served OpenAPI document."""

    def __init__(self, app: App, document: dict[str, Any]) -> None:
        self.app = app
        self.document = document

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], Any]:
        sent = {"Content-Type": "application/json"} if raw is not None or body is not None else {}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        sent.update(headers or {})
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        async with self.app.session.request(
            method, f"{self.app.url}{path}", data=data, headers=sent
        ) as resp:
            answer = await resp.json(content_type=None)
            self.conforms(method, path, resp, answer)
            return resp.status, answer, resp.headers

    def conforms(self, method: str, path: str, resp: aiohttp.ClientResponse, answer: Any) -> None:
        """The answer is one the document describes for this operation and status."""
        template = "/api/v1/plans/{plan_id}" if path.count("/") == 4 else path
        operation = self.document["paths"][template][method.lower()]
        described = operation["responses"].get(str(resp.status))
        assert described is not None, f"{method} {path}: {resp.status} is not documented"
        ((media, content),) = described["content"].items()
        assert resp.content_type == media, (resp.content_type, media)
        schema = {**content["schema"], "components": self.document["components"]}
        Draft202012Validator(schema).validate(answer)
        for header in described.get("headers", {}):
            assert header in resp.headers, f"{resp.status} without {header}"


async def client_for(app: App) -> Client:
    async with app.session.get(f"{app.url}/api/v1/openapi.json") as resp:
        assert resp.status == 200  # public: no token
        document = await resp.json()
    validate_openapi(document)
    return Client(app, document)


async def audit_entries(app: App) -> list[dict[str, Any]]:
    exported = await app.rt.store.audit_log.export()
    return [json.loads(e["body"]) for e in exported["entries"]]


async def test_the_seed_round_trip_through_the_api(api_app: App, fakes: Fakes) -> None:
    api = await client_for(api_app)
    slack = fakes.slack

    # plan_generator: the directive in, the plan, risk, confidence and summary out.
    status, plan, headers = await api.call(
        "POST", "/api/v1/plans", WRITER, {"directive": SEED}, headers={"Idempotency-Key": "seed-1"}
    )
    assert status == 201, plan
    plan_id = plan["plan_id"]
    assert headers["Location"] == f"/api/v1/plans/{plan_id}"
    assert plan["status"] == "pending" and plan["approval_level"] == "approval"
    assert plan["approval_required"] is True and plan["approvals_needed"] == ["1 more approver"]
    assert plan["target"]["repo"] == REPO and plan["target"]["environment"] == "staging"
    assert plan["risk_assessment"]["level"] in ("medium", "high")
    assert 0 < plan["confidence_score"] <= 1 and plan["change_summary"]
    assert yaml.safe_load(plan["plan_yaml"])["id"] == plan_id
    assert plan["plan"]["requester"] == {
        "team_id": sr.TEAM,
        "user_id": BOB,
        "name": "api:release-bot",
        "enterprise_id": "",
    }

    # The same card as from Slack, in a thread SOPHIE opened in the token's channel.
    card = plan["card"]
    assert card["channel"] == CHANNEL and card["ts"]
    assert card["url"] == (
        f"https://sophie-test.slack.com/archives/{CHANNEL}/p{card['ts'].replace('.', '')}"
        f"?thread_ts={card['thread_ts']}&cid={CHANNEL}"
    )
    opener = slack.message(CHANNEL, card["thread_ts"])
    assert opener is not None and opener.thread_ts is None
    assert f"<@{BOB}> asked" in (opener.text or "") and "caching" in (opener.text or "")
    message = slack.message(CHANNEL, card["ts"])
    assert message is not None and message.thread_ts == card["thread_ts"]
    buttons = _buttons(message.blocks)
    assert set(buttons) == {kit.APPROVE, kit.VETO, kit.REQUEST_CHANGES, kit.VIEW_PLAN}
    value = buttons[kit.APPROVE]["value"]
    assert value == f"{plan_id}|{plan['plan_digest']}"

    # A retried request answers the same plan; the key reused for another one is refused.
    again = await api.call(
        "POST", "/api/v1/plans", WRITER, {"directive": SEED}, headers={"Idempotency-Key": "seed-1"}
    )
    assert again[0] == 200 and again[1]["plan_id"] == plan_id
    reused = await api.call(
        "POST",
        "/api/v1/plans",
        WRITER,
        {"directive": SEED + " now"},
        headers={"Idempotency-Key": "seed-1"},
    )
    assert reused[0] == 422 and "another request" in reused[1]["detail"]
    assert len([m for m in slack.channel_messages(CHANNEL, top_level_only=True)]) == 1

    # The trust gate: nobody has approved yet.
    status, gate, _ = await api.call("POST", "/api/v1/trust-gate", WRITER, {"plan_id": plan_id})
    assert status == 200 and gate["approved"] is False
    assert "1 more approver" in gate["reasons"]
    # The token's user asked for it, so they may not approve it (separation of duties).
    await api_app.interact(click(fakes, kit.APPROVE, value, BOB, card["ts"], "self"))
    refusal = await eventually(lambda: response_to(slack, "self"), what="the refusal")
    assert "cannot approve your own request" in refusal["text"]

    # Approved in Slack, by a signed click; the run goes to the fake GitHub.
    await api_app.interact(click(fakes, kit.APPROVE, value, ALICE, card["ts"], "alice"))
    await eventually(lambda: response_to(slack, "alice"), what="the approval")

    async def completed() -> dict[str, Any] | None:
        status, body, _ = await api.call("GET", f"/api/v1/plans/{plan_id}", READER)
        assert status == 200, body
        return body if body["status"] == "completed" else None

    result = await eventually(completed, within=30, what="the completed plan")
    record = await api_app.rt.store.load(plan_id)
    assert record is not None and record.status == PlanStatus.SUCCEEDED and record.run
    run_id = record.run.run_id
    # The seed's example result, field for field.
    assert result["directive"] == SEED and result["plan_id"] == plan_id
    assert result["staging_url"] == STAGING_URL
    assert result["dashboard_url"] == f"https://github.com/{REPO}/actions/runs/{run_id}"
    assert result["pipeline_id"] == str(run_id)
    assert result["artifact_urls"] and all(
        u.startswith(f"https://github.com/{REPO}/actions/runs/{run_id}/artifacts/")
        for u in result["artifact_urls"][: len(record.run.artifacts)]
    )
    assert [a["url"] for a in result["artifacts"]] == result["artifact_urls"]
    # And the change SOPHIE's implementer made and Δ checked.
    change = result["change"]
    branch = f"sophie/{plan_id}"
    assert change["branch"] == branch and change["verdict"] == "checked"
    assert change["commit"] == fakes.github.branch_head(REPO, branch)
    pull = fakes.github.pull_for(REPO, branch)
    assert pull is not None and change["pull_request"] == pull.html_url
    assert result["approvers"] == [ALICE] and result["plan_status"] == "succeeded"

    # Now the gate says yes, for the recorded decisions and for the envelopes themselves.
    status, gate, _ = await api.call("POST", "/api/v1/trust-gate", WRITER, {"plan_id": plan_id})
    assert status == 200 and gate["approved"] is True, gate
    assert gate["reasons"] == [] and gate["approvers"] == [ALICE]
    envelopes = [d.envelope for d in record.approvals]
    doc = record.plan.document()
    status, gate, _ = await api.call(
        "POST", "/api/v1/trust-gate", WRITER, {"plan": doc, "decisions": envelopes}
    )
    assert status == 200 and gate["approved"] is True, gate
    as_yaml = {"plan_yaml": record.plan.to_yaml(), "decisions": envelopes}
    assert (await api.call("POST", "/api/v1/trust-gate", WRITER, as_yaml))[1]["approved"]

    # The audit log has the API's request, the plan, the decision and the gate's answers.
    entries = await audit_entries(api_app)
    mine = [(e["kind"], e["actor"]) for e in entries if e["plan"] == plan_id]
    assert ("api.plan_requested", "api:release-bot") in mine
    assert ("plan.created", BOB) in mine and ("decision.approve", ALICE) in mine
    assert mine.count(("api.trust_gate", "api:release-bot")) == 4
    refs = {e["detail"].get("approved") for e in entries if e["kind"] == "api.trust_gate"}
    assert refs == {True, False}
    hashes = {e["hash"] for e in (await api_app.rt.store.audit_log.export())["entries"]}
    assert gate["audit_ref"] in hashes
    assert slack.rejections == [] and fakes.github.rejections == []


def _forge(envelope: dict[str, Any], **predicate: Any) -> dict[str, Any]:
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"].update(predicate)
    payload = base64.b64encode(json.dumps(statement).encode()).decode()
    return {**envelope, "payload": payload}


async def test_the_trust_gate_refuses_forged_and_absent_approvals(
    api_app: App, fakes: Fakes
) -> None:
    api = await client_for(api_app)
    status, plan, _ = await api.call(
        "POST", "/api/v1/plans", WRITER, {"directive": SEED}, headers={"Prefer": "wait=20"}
    )
    assert status == 201, plan
    plan_id, doc = plan["plan_id"], plan["plan"]
    message = fakes.slack.message(CHANNEL, plan["card"]["ts"])
    assert message is not None
    value = _buttons(message.blocks)[kit.APPROVE]["value"]
    await api_app.interact(click(fakes, kit.APPROVE, value, ALICE, plan["card"]["ts"], "a"))
    record = await eventually(lambda: _approved(api_app, plan_id), what="the recorded approval")
    (envelope,) = [d.envelope for d in record.approvals]

    async def gate(body: dict[str, Any]) -> dict[str, Any]:
        status, answer, _ = await api.call("POST", "/api/v1/trust-gate", WRITER, body)
        assert status == 200, answer
        return answer

    assert (await gate({"plan": doc, "decisions": [envelope]}))["approved"] is True
    refused = {
        "no decisions": ([], "1 more approver"),
        "a forged approver": ([_forge(envelope, approver={"userId": CAROL})], "verify"),
        "a signature from another key": (
            [{**envelope, "signatures": [{"keyid": "k" * 16, "sig": "c2ln"}]}],
            "verify",
        ),
        "the same approval twice": ([envelope, envelope], "approved twice"),
    }
    for case, (decisions, says) in refused.items():
        answer = await gate({"plan": doc, "decisions": decisions})
        assert answer["approved"] is False, case
        assert any(says in r for r in answer["reasons"]), (case, answer["reasons"])
    # A plan edited after approval (lower risk, say) is not the one approved.
    edited = {**doc, "risk": {**doc["risk"], "level": "low", "score": 0.0}}
    answer = await gate({"plan": edited, "decisions": [envelope]})
    assert answer["approved"] is False
    assert any("digest differs" in r for r in answer["reasons"])
    assert any("plan changed after it was approved" in r for r in answer["reasons"])
    # A plan SOPHIE never made, however well signed, cannot rule out a veto.
    unknown = {**doc, "id": "plan_0123456789abcdef"}
    answer = await gate({"plan": unknown, "decisions": [envelope]})
    assert answer["approved"] is False and any("no record" in r for r in answer["reasons"])
    # Malformed bodies are refused, never judged.
    for body in (
        {"plan": doc},
        {"plan": doc, "plan_yaml": "x", "decisions": []},
        {"plan": {**doc, "extra": 1}, "decisions": []},
        {"plan_yaml": "- just\n- a list", "decisions": []},
        {"plan_yaml": "{{{", "decisions": []},
        {"plan_id": "plan_0123456789abcdef", "decisions": []},
        {"plan_id": 42},
        {"plan": doc, "decisions": [{"payload": "x"}]},
    ):
        status, answer, _ = await api.call("POST", "/api/v1/trust-gate", WRITER, body)
        assert status == 400, (body.keys(), answer)


async def _approved(app: App, plan_id: str) -> Any:
    record = await app.rt.store.load(plan_id)
    return record if record is not None and record.approvals else None


async def test_refusals_are_4xx_said_plainly_and_audited(api_app: App, fakes: Fakes) -> None:
    api = await client_for(api_app)
    plans = "/api/v1/plans"
    seed = {"directive": SEED}

    status, answer, headers = await api.call("POST", plans, None, seed)
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="sophie"'
    status, answer, headers = await api.call("POST", plans, "not-a-granted-token", seed)
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    status, answer, _ = await api.call("POST", plans, _sha(WRITER), seed)  # the digest
    assert status == 401
    basic = {"Authorization": "Basic " + base64.b64encode(b"x:" + WRITER.encode()).decode()}
    assert (await api.call("POST", plans, None, seed, headers=basic))[0] == 401
    status, answer, headers = await api.call("POST", plans, READER, seed)
    assert status == 403 and "plans:write" in answer["detail"]
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    assert (await api.call("POST", "/api/v1/trust-gate", READER, {"plan_id": "plan_x"}))[0] == 403

    bad_bodies: list[tuple[bytes, str]] = [
        (b"{not json", "json"),
        (b"[]", "object"),
        (b'{"directive": 5}', "directive"),
        (b'{"directive": ""}', "directive"),
        (b'{"directive": "x", "extra": true}', "extra"),
        (b'{"directive": "x", "repo": "no slash"}', "repo"),
        (b'{"directive": "x", "environment": "Prod!"}', "environment"),
        (b"\xff\xfe{}", "json"),
        (b"[" * 5000 + b"]" * 5000, "json"),
    ]
    for raw, says in bad_bodies:
        status, answer, _ = await api.call("POST", plans, WRITER, raw=raw)
        assert status == 400, (raw[:40], answer)
        assert says in answer["detail"].lower(), (raw[:40], answer["detail"])
    status, answer, _ = await api.call(
        "POST", plans, WRITER, raw=json.dumps({"directive": "x" * 20_000}).encode()
    )
    assert status == 413
    status, answer, _ = await api.call(
        "POST", plans, WRITER, raw=b"directive=x", headers={"Content-Type": "text/plain"}
    )
    assert status == 415
    status, answer, _ = await api.call(
        "POST", plans, WRITER, {"directive": "Add a banner", "repo": "acme/unknown"}
    )
    assert status == 422 and "not in the constitution" in answer["detail"]
    status, answer, _ = await api.call(
        "POST", plans, WRITER, {"directive": "Deploy to production", "environment": "staging"}
    )
    assert status == 422 and "names production" in answer["detail"]
    status, answer, _ = await api.call(
        "POST", plans, WRITER, seed, headers={"Idempotency-Key": "no spaces allowed"}
    )
    assert status == 400

    for missing in ("plan_0123456789abcdef", "not-a-plan", "plan_..%2F..%2Fetc"):
        status, answer, _ = await api.call("GET", f"{plans}/{missing}", READER)
        assert status == 404, missing

    # A plan of the token's channel is the token's; another channel's token sees nothing.
    status, made, _ = await api.call("POST", plans, WRITER, seed)
    assert status == 201
    mine = f"{plans}/{made['plan_id']}"
    assert (await api.call("GET", mine, READER))[0] == 200
    assert (await api.call("GET", mine, ELSEWHERE))[0] == 404
    gate = {"plan_id": made["plan_id"]}
    assert (await api.call("POST", "/api/v1/trust-gate", ELSEWHERE, gate))[0] == 404
    by_plan = {"plan": made["plan"], "decisions": []}
    assert (await api.call("POST", "/api/v1/trust-gate", ELSEWHERE, by_plan))[0] == 404

    # Nothing was planned by any refused request.
    assert len(fakes.llm.completions()) == 1
    assert len(fakes.slack.channel_messages(CHANNEL, top_level_only=True)) == 1

    refusals = [e for e in await audit_entries(api_app) if e["kind"] == "api.refused"]
    by_status: dict[int, int] = {}
    for entry in refusals:
        by_status[entry["detail"]["status"]] = by_status.get(entry["detail"]["status"], 0) + 1
    assert by_status == {401: 4, 403: 2, 400: 10, 413: 1, 415: 1, 422: 2, 404: 6}, by_status
    actors = {e["actor"] for e in refusals}
    assert actors == {"api:anonymous", "api:dashboard", "api:release-bot", "api:elsewhere"}
    # Tokens never reach the log.
    logged = json.dumps(await audit_entries(api_app))
    assert WRITER not in logged and READER not in logged


async def test_rate_limits_apply_as_in_slack(fakes: Fakes, redis_url: str, tmp_path: Path) -> None:
    rules = constitution_with_tokens(tmp_path, **{"per_user: 6": "per_user: 1"})
    settings = settings_for(
        redis_url,
        tmp_path / "data",
        slack_url=fakes.slack_server.url,
        github_url=fakes.github_server.url,
        llm_url=None,
        constitution=rules,
    )
    app = await start_app(settings)
    try:
        api = await client_for(app)
        first = await api.call("POST", "/api/v1/plans", WRITER, {"directive": SEED})
        assert first[0] == 201
        status, answer, headers = await api.call(
            "POST", "/api/v1/plans", WRITER, {"directive": SEED}, headers={"Idempotency-Key": "k"}
        )
        assert status == 429 and headers["Retry-After"] == "60"
        assert "at most 1 directives per person" in answer["detail"]
        # The refused key is not spent: nothing was planned under it (GET says so).
        assert (await api.call("GET", f"/api/v1/plans/{answer['plan_id']}", READER))[0] == 404
        # The same person in Slack is limited by the same counter.
        body = sr.command_body(SEED, BOB, CHANNEL, f"{fakes.slack_server.url}/respond/r")
        ack = await (await app.command(body)).json()
        assert "directives" in ack["text"] and ack["response_type"] == "ephemeral"
    finally:
        await app.close()


async def test_a_slow_plan_answers_202_then_the_plan(api_app: App, fakes: Fakes) -> None:
    api = await client_for(api_app)
    status, accepted, headers = await api.call(
        "POST", "/api/v1/plans", WRITER, {"directive": SEED}, headers={"Prefer": "respond-async"}
    )
    assert status == 202 and accepted == {
        "plan_id": accepted["plan_id"],
        "status": "planning",
        "links": {"self": headers["Location"]},
    }

    async def planned() -> dict[str, Any] | None:
        status, body, _ = await api.call("GET", headers["Location"], READER)
        assert status == 200
        return body if body["status"] == "pending" and body["card"]["ts"] else None

    body = await eventually(planned, what="the plan")
    assert body["directive"] == SEED and body["staging_url"] is None
    assert body["artifact_urls"] == [] and body["dashboard_url"] is None


async def test_a_plan_that_cannot_be_made_says_why(api_app: App, fakes: Fakes) -> None:
    api = await client_for(api_app)
    fakes.llm.default = content({"not": "a plan"})  # the model keeps answering nonsense
    status, answer, _ = await api.call("POST", "/api/v1/plans", WRITER, {"directive": SEED})
    assert status == 422 and "could not produce a valid plan" in answer["detail"]
    status, body, _ = await api.call("GET", f"/api/v1/plans/{answer['plan_id']}", READER)
    assert status == 200 and body["status"] == "planning_failed"


async def test_redis_down_is_503_not_500(api_app: App, fakes: Fakes, redis_server: Any) -> None:
    api = await client_for(api_app)
    redis_server.kill()
    try:
        status, answer, headers = await api.call(
            "POST", "/api/v1/plans", WRITER, {"directive": SEED}
        )
        assert status == 503 and headers["Retry-After"] == "1", answer
        status, _, _ = await api.call("GET", "/api/v1/plans/plan_0123456789abcdef", READER)
        assert status == 503
    finally:
        redis_server.start()


def test_serve_refuses_a_token_without_its_channel(tmp_path: Path, redis_url: str) -> None:
    path = constitution_with_tokens(tmp_path)
    rules = yaml.safe_load(path.read_text())
    del rules["api"]["tokens"][0]["channel"]
    path.write_text(yaml.safe_dump(rules))
    env = {
        "PATH": "/usr/bin:/bin",
        "SOPHIE_CONSTITUTION": str(path),
        "SOPHIE_DATA_DIR": str(tmp_path / "data"),
        "REDIS_URL": redis_url,
        "PORT": "0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "bot", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "api token release-bot: set channel" in result.stderr, result.stderr
