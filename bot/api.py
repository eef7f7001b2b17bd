"""The HTTP API (``/api/v1/…``): the seed's tools for programs instead of people.

``POST /api/v1/plans`` plans a directive exactly as a Slack message would be planned
(the same intake with its rate limits, the same planning job, the same card in a thread
of the token's channel, the same approvals and audit), ``POST /api/v1/trust-gate`` says
whether a plan may run (the dispatch gate's own checks), and ``GET /api/v1/plans/{id}``
answers the seed's example result. The contract is :mod:`bot.openapi`.

Tokens are granted by the constitution (``api.tokens``), which holds only their sha256;
a token is compared by digest in constant time. Every refusal is audited (anonymous
ones up to :data:`ANONYMOUS_AUDITS_PER_MINUTE`, so that noise cannot flood the log).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
from aiohttp import web
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from slack_sdk.web.async_client import AsyncWebClient

from bot.openapi import (
    BASE,
    Artifact,
    Card,
    Check,
    Links,
    PlanAccepted,
    PlanRequest,
    PlanResult,
    PlanStatusResult,
    Problem,
    ProducedChange,
    TrustGateById,
    TrustGateByPlan,
    TrustGateResult,
    document,
)
from bot.request_body import TooLarge, close_after_response, read_whole
from bot.slack_guard import media_type
from roles import approvals, attestation, integrator, navigator, what_runs
from roles.canonical import sha256_digest
from roles.constitution import ApiScope, ApiToken, Constitution
from roles.flows import changing
from roles.flows.intake import Intake
from roles.plan import ApprovalLevel, Plan
from roles.records import Actor, DecisionRecord, Directive, PlanRecord, PlanStatus, Thread
from roles.sophie import Sophie

log = logging.getLogger("sophie.api")

MAX_PLAN_BODY = 16 * 1024
MAX_GATE_BODY = 1024 * 1024
# How long POST /plans waits for the plan (and its card) before answering 202.
DEFAULT_WAIT_SECONDS = 25.0
MAX_WAIT_SECONDS = 60.0
# What the API remembers about a plan it asked for (for GET while planning, and to
# refuse an Idempotency-Key reused for another request): as long as the planning memo.
MEMO_SECONDS = 24 * 3600
ANONYMOUS_AUDITS_PER_MINUTE = 60
MAX_TOKEN_CHARS = 1024
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
PLAN_ID = re.compile(r"^plan_[a-z0-9]{8,40}$")
# A plan in one of these may not run, whatever its decisions say.
ENDED_UNRUN = {
    PlanStatus.BLOCKED,
    PlanStatus.VETOED,
    PlanStatus.EXPIRED,
    PlanStatus.STALE,
    PlanStatus.SUPERSEDED,
    PlanStatus.ERROR,
}
API_STATUS: dict[PlanStatus, str] = {
    PlanStatus.PENDING: "pending",
    PlanStatus.BLOCKED: "blocked",
    PlanStatus.APPROVED: "approved",
    PlanStatus.DISPATCHING: "running",
    PlanStatus.RUNNING: "running",
    PlanStatus.SUCCEEDED: "completed",
    PlanStatus.FAILED: "failed",
    PlanStatus.VETOED: "vetoed",
    PlanStatus.EXPIRED: "expired",
    PlanStatus.STALE: "stale",
    PlanStatus.SUPERSEDED: "superseded",
    PlanStatus.REVIEW: "review",
    PlanStatus.ERROR: "error",
}


def api_status(status: PlanStatus) -> str:
    """The seed's word for where a plan is ("completed" for a plan that succeeded)."""
    return API_STATUS.get(status, "error" if status.final else "running")


# -- tokens ----------------------------------------------------------------------------


def token_for(tokens: Sequence[ApiToken], authorization: str) -> ApiToken | None:
    """The token an ``Authorization: Bearer …`` header carries, if the constitution
    grants it. Every granted digest is compared, in constant time, whatever matches."""
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or len(credential) > MAX_TOKEN_CHARS:
        return None
    digest = hashlib.sha256(credential.encode("utf-8", "surrogatepass")).hexdigest()
    found = None
    for token in tokens:
        if hmac.compare_digest(digest, token.sha256):
            found = token
    return found


# -- what Φ reads ----------------------------------------------------------------------


@dataclass(frozen=True)
class Refused(Exception):
    """A request SOPHIE answers with a problem (RFC 9457) and, usually, an audit entry."""

    status: int
    title: str
    detail: str
    headers: dict[str, str] = field(default_factory=dict)
    plan_id: str = ""


def directive_text(request: PlanRequest, constitution: Constitution) -> str:
    """The text Φ reads for this request: the directive, with the requested repo and
    environment named in front where the directive names none. Raises :class:`Refused`
    when the request asks for something the constitution does not have, or the
    directive names another target than the request."""
    repos = [r.name for r in constitution.repos]
    rule = constitution.repo(request.repo) if request.repo is not None else None
    if request.repo is not None and rule is None:
        raise Refused(
            422,
            "Unknown repository",
            f"{request.repo} is not in the constitution (its repos: {', '.join(repos)})",
        )
    env = request.environment
    if env is not None and env not in constitution.environments:
        raise Refused(
            422,
            "Unknown environment",
            f"{env} is not an environment of the "
            f"constitution ({', '.join(constitution.environments)})",
        )
    if rule is not None and env is not None and env not in rule.environments:
        raise Refused(
            422,
            "Environment not allowed",
            f"{rule.name} deploys only to {', '.join(rule.environments)}",
        )
    reading = navigator.interpret(request.directive, constitution)
    if not reading.text:
        raise Refused(
            400,
            "Empty directive",
            "the directive is empty once invisible characters and Slack markup are removed",
        )
    named: list[str] = []
    if request.repo is not None:
        if reading.explicit_repo and reading.repo.name != request.repo:
            raise Refused(
                422,
                "Conflicting repository",
                f"the directive names {reading.repo.name}, the request asks for {request.repo}",
            )
        if not reading.explicit_repo:
            named.append(f"Repository {request.repo}")
    if env is not None:
        if reading.explicit_environment and reading.environment != env:
            raise Refused(
                422,
                "Conflicting environment",
                f"the directive names {reading.environment}, the request asks for {env}",
            )
        if not reading.explicit_environment:
            named.append(f"environment {env}")
    if not named:
        return request.directive
    text = f"{', '.join(named)}: {request.directive}"
    again = navigator.interpret(text, constitution)
    if (request.repo and again.repo.name != request.repo) or (env and again.environment != env):
        raise Refused(
            422,
            "Ambiguous target",
            "the directive cannot be read as targeting "
            f"{request.repo or again.repo.name} in {env or again.environment}; "
            "name them in the directive",
        )
    return text


def prefer_wait(header: str) -> float:
    """RFC 7240 ``Prefer``: ``respond-async`` (answer at once) or ``wait=N`` seconds."""
    wait: float | None = None
    is_async = False
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        if name == "respond-async":
            is_async = True
        elif name == "wait":
            try:
                wait = float(value.strip().strip('"'))
            except ValueError:
                continue
    if wait is None:
        wait = 0.0 if is_async else DEFAULT_WAIT_SECONDS
    return max(0.0, min(wait, MAX_WAIT_SECONDS))


def _explain(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:10]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


# -- answers ---------------------------------------------------------------------------


def _answer(
    model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        model.model_dump(mode="json", by_alias=True), status=status, headers=headers
    )


def _problem(refused: Refused) -> web.Response:
    body = Problem(
        title=refused.title,
        status=refused.status,
        detail=refused.detail,
        plan_id=refused.plan_id or None,
    )
    response = web.json_response(
        body.model_dump(mode="json"),
        status=refused.status,
        headers=refused.headers,
        content_type="application/problem+json",
    )
    return response


def _links(plan_id: str) -> Links:
    return Links(self_=f"{BASE}/plans/{plan_id}")


def _needed(record: PlanRecord) -> list[str]:
    if record.status != PlanStatus.PENDING:
        return []
    return approvals.still_needed(record.plan, record.decisions)


def plan_result(record: PlanRecord, card: Card | None) -> PlanResult:
    p = record.plan
    return PlanResult(
        plan_id=p.id,
        plan_digest=p.digest,
        status=api_status(record.status),
        change_summary=p.interpretation.summary,
        confidence_score=p.confidence,
        risk_assessment=p.risk,
        approval_level=p.approval.level,
        approval_required=p.approval.level.rank >= ApprovalLevel.APPROVAL.rank,
        approvals_needed=_needed(record),
        blocked=record.status == PlanStatus.BLOCKED,
        target=p.target,
        artifacts=list(p.artifacts),
        warnings=list(p.warnings),
        assumptions=list(p.interpretation.assumptions),
        plan_yaml=p.to_yaml(),
        plan=p,
        card=card,
        links=_links(p.id),
    )


def status_result(record: PlanRecord, card: Card | None, dry_run: bool) -> PlanStatusResult:
    """The seed's example result for a plan (status, staging URL, artifacts, dashboard)."""
    p, run = record.plan, record.run
    links = [*run.artifacts, *run.release_assets] if run is not None else []
    change = run.change if run is not None else None
    return PlanStatusResult(
        status=api_status(record.status),
        plan_status=record.status.value,
        directive=p.directive,
        plan_id=p.id,
        plan_digest=p.digest,
        repo=p.target.repo,
        environment=p.target.environment,
        staging_url=run.staging_url if run is not None else None,
        artifact_urls=[link.url for link in links],
        dashboard_url=run.html_url if run is not None else None,
        pipeline_id=str(run.run_id) if run is not None and run.run_id else None,
        conclusion=run.conclusion if run is not None else None,
        artifacts=[Artifact(name=link.name, url=link.url) for link in links],
        images=list(run.images) if run is not None else [],
        change=None
        if change is None
        else ProducedChange(
            branch=change.branch,
            commit=change.commit,
            base=change.base,
            pull_request=change.pull_request or None,
            files=change.files,
            additions=change.additions,
            deletions=change.deletions,
            verdict=change.verdict,
            reason=change.reason,
        ),
        approval_level=p.approval.level,
        approvals_needed=_needed(record),
        approvers=[d.actor.user_id for d in record.approvals],
        dry_run=run.dry_run if run is not None else dry_run,
        detail=record.note or (run.detail if run is not None else ""),
        card=card,
        links=_links(p.id),
    )


# -- the routes ------------------------------------------------------------------------

Handler = Callable[[web.Request, ApiToken], Awaitable[web.StreamResponse]]


class Api:
    def __init__(self, sophie: Sophie, slack: AsyncWebClient | None) -> None:
        self.sophie = sophie
        self.slack = slack
        self._workspace_url: str | None = None
        self._workspace_checked = 0.0

    # -- plumbing --------------------------------------------------------------------

    def endpoint(
        self, scope: ApiScope, handler: Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            token: ApiToken | None = None
            try:
                token = await self._authorise(request, scope)
                return await handler(request, token)
            except Refused as refused:
                if token is not None:
                    await self._audit_refusal(request, token.name, refused)
                return _problem(refused)
            except (RedisError, ConnectionError, TimeoutError) as exc:
                log.warning("%s %s: %s", request.method, request.path, exc)
                return _problem(
                    Refused(
                        503, "Try again", "SOPHIE cannot reach its store now", {"Retry-After": "1"}
                    )
                )

        return handle

    async def _authorise(self, request: web.Request, scope: ApiScope) -> ApiToken:
        header = request.headers.get("Authorization", "")
        token = token_for(self.sophie.constitution().api.tokens, header)
        if token is None:
            if header:
                challenge = 'Bearer realm="sophie", error="invalid_token"'
                refused = Refused(
                    401,
                    "Unauthorized",
                    "the token is not one the constitution grants",
                    {"WWW-Authenticate": challenge},
                )
            else:
                refused = Refused(
                    401,
                    "Unauthorized",
                    "send Authorization: Bearer <token>",
                    {"WWW-Authenticate": 'Bearer realm="sophie"'},
                )
            await self._audit_anonymous(request, refused)
            raise refused
        if scope not in token.scopes:
            challenge = f'Bearer realm="sophie", error="insufficient_scope", scope="{scope}"'
            refused = Refused(
                403,
                "Forbidden",
                f"token {token.name} lacks the {scope} scope",
                {"WWW-Authenticate": challenge},
            )
            await self._audit_refusal(request, token.name, refused)
            raise refused
        return token

    async def _audit_refusal(self, request: web.Request, who: str, refused: Refused) -> None:
        detail = {
            "method": request.method,
            "path": request.path[:200],
            "status": refused.status,
            "reason": refused.detail[:300],
        }
        try:
            await self.sophie.store.audit("api.refused", refused.plan_id, f"api:{who}", detail)
        except Exception:
            log.warning("could not audit an API refusal", exc_info=True)

    async def _audit_anonymous(self, request: web.Request, refused: Refused) -> None:
        try:
            fresh = await self.sophie.store.within_rate(
                [("api-anonymous-refusals", ANONYMOUS_AUDITS_PER_MINUTE)], 60
            )
        except Exception:
            fresh = False
        if fresh:
            await self._audit_refusal(request, "anonymous", refused)
        else:
            log.info(
                "API refusal not audited (over %d a minute): %s %s",
                ANONYMOUS_AUDITS_PER_MINUTE,
                request.method,
                request.path[:200],
            )

    async def _body(self, request: web.Request, limit: int) -> bytes:
        if media_type(request.headers.get("Content-Type")) != "application/json":
            raise Refused(415, "Unsupported media type", "send the body as application/json")
        try:
            return await read_whole(request, limit)
        except TooLarge as exc:
            # Up to the app's own limit the rest is read and dropped, so the client (which
            # may still be sending) surely gets the answer; beyond it, the connection closes.
            if (request.content_length or MAX_GATE_BODY + 1) > MAX_GATE_BODY:
                close_after_response(request)
            raise Refused(413, "Body too large", f"the body may be at most {limit} bytes") from exc

    async def card(self, record: PlanRecord) -> Card:
        thread = record.thread
        url = None
        base = await self._workspace() if record.card_ts else None
        if base and record.card_ts:
            url = (
                f"{base}archives/{thread.channel}/p{record.card_ts.replace('.', '')}"
                f"?thread_ts={thread.thread_ts}&cid={thread.channel}"
            )
        return Card(channel=thread.channel, thread_ts=thread.thread_ts, ts=record.card_ts, url=url)

    async def _workspace(self) -> str | None:
        """The workspace's URL (``auth.test``), for links to cards; asked once a minute
        at most until Slack answers, then kept."""
        if self._workspace_url is not None or self.slack is None:
            return self._workspace_url
        if time.monotonic() - self._workspace_checked < 60:
            return None
        self._workspace_checked = time.monotonic()
        try:
            resp = await asyncio.wait_for(self.slack.auth_test(), 2)
            url = str(resp.get("url") or "")
        except Exception:
            log.info("auth.test did not answer; cards are given without links for now")
            return None
        if url.startswith("https://"):
            self._workspace_url = url if url.endswith("/") else url + "/"
        return self._workspace_url

    # -- GET /api/v1/openapi.json --------------------------------------------------------

    async def openapi(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(document())

    # -- POST /api/v1/plans ----------------------------------------------------------

    async def create_plan(self, request: web.Request, token: ApiToken) -> web.StreamResponse:
        body = await self._body(request, MAX_PLAN_BODY)
        try:
            asked = PlanRequest.model_validate_json(body)
        except ValidationError as exc:
            raise Refused(400, "Bad request", _explain(exc)) from exc
        if self.slack is None:
            raise Refused(
                503,
                "No Slack",
                "SOPHIE has no Slack workspace configured; a plan "
                "needs its card in the token's channel",
                {"Retry-After": "60"},
            )
        key = request.headers.get("Idempotency-Key")
        if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
            raise Refused(400, "Bad Idempotency-Key", "use 1-100 letters, digits, _ . : -")
        constitution = self.sophie.constitution()
        text = directive_text(asked, constitution)
        assert token.channel and token.team and token.user  # the constitution insists
        event_id = f"api:{token.name}:{key or uuid.uuid4().hex}"
        plan_id = integrator.plan_id_for(event_id)
        fingerprint = sha256_digest(asked.model_dump(mode="json"))
        memo_key = f"api:{plan_id}"
        memo = await self.sophie.store.memo(memo_key)
        if memo.get("request") and memo["request"] != fingerprint:
            raise Refused(
                422,
                "Idempotency-Key reused",
                "this Idempotency-Key was used for another request",
                plan_id=plan_id,
            )
        for name, value in (
            ("request", fingerprint),
            ("event_id", event_id),
            ("channel", token.channel),
            ("directive", text[:4000]),
            ("refused", ""),
        ):
            await self.sophie.store.set_memo(memo_key, name, value, MEMO_SECONDS)
        directive = Directive(
            text=text,
            requester=Actor(
                team_id=token.team,
                user_id=token.user,
                name=f"api:{token.name}",
                enterprise_id=token.enterprise,
            ),
            # No thread yet: the planning job opens one in the channel, as for /sophie.
            thread=Thread(channel=token.channel, thread_ts=""),
            source="api",
            event_id=event_id,
        )
        outcome = await self.sophie.receive(directive)
        if outcome == Intake.RATE_LIMITED:
            limits = constitution.rate_limits
            # Intake remembers the refused event; forget it so the same key may retry.
            await self.sophie.store.release_event(f"event:{event_id}")
            await self.sophie.store.set_memo(memo_key, "refused", "rate_limited", MEMO_SECONDS)
            raise Refused(
                429,
                "Too many directives",
                f"at most {limits.per_user} directives per person and {limits.per_channel} "
                f"per channel every {limits.window_seconds} s",
                {"Retry-After": str(limits.window_seconds)},
                plan_id,
            )
        if outcome == Intake.ACCEPTED:
            await self.sophie.store.audit(
                "api.plan_requested",
                plan_id,
                f"api:{token.name}",
                {"event_id": event_id, "user": token.user, "channel": token.channel},
            )
        waited = await self._wait_for_plan(
            plan_id, event_id, prefer_wait(request.headers.get("Prefer", ""))
        )
        location = {"Location": f"{BASE}/plans/{plan_id}"}
        if isinstance(waited, str):
            raise Refused(422, "No plan", waited, plan_id=plan_id)
        if waited is None:
            return _answer(PlanAccepted(plan_id=plan_id, links=_links(plan_id)), 202, location)
        status = 201 if outcome == Intake.ACCEPTED else 200
        return _answer(plan_result(waited, await self.card(waited)), status, location)

    async def _wait_for_plan(
        self, plan_id: str, event_id: str, wait: float
    ) -> PlanRecord | str | None:
        """The plan once it and its card exist; why planning failed; or None at the deadline
        (a plan without a card yet, when its card is late)."""
        deadline = time.monotonic() + wait
        delay = 0.02
        while True:
            record = await self.sophie.store.load(plan_id)
            if record is not None and record.card_ts:
                return record
            if record is None:
                # What the planning job remembers under its event (roles/flows/planning.py).
                failed = (await self.sophie.store.memo(f"planning:{event_id}")).get("failed")
                if failed:
                    return failed
            left = deadline - time.monotonic()
            if left <= 0:
                return record
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 1.5, 0.25)

    # -- GET /api/v1/plans/{plan_id} ---------------------------------------------------

    async def get_plan(self, request: web.Request, token: ApiToken) -> web.StreamResponse:
        plan_id = request.match_info["plan_id"]
        unknown = Refused(404, "Not found", "no such plan among this token's", plan_id=plan_id)
        if not PLAN_ID.fullmatch(plan_id):
            raise unknown
        record = await self.sophie.store.load(plan_id)
        if record is not None:
            if record.thread.channel != token.channel:
                raise unknown
            dry_run = self.sophie.ci.dry_run
            return _answer(status_result(record, await self.card(record), dry_run))
        memo = await self.sophie.store.memo(f"api:{plan_id}")
        if memo.get("channel") != token.channel or memo.get("refused"):
            raise unknown
        failed = (await self.sophie.store.memo(f"planning:{memo.get('event_id', '')}")).get(
            "failed", ""
        )
        return _answer(
            PlanStatusResult(
                status="planning_failed" if failed else "planning",
                plan_status=None,
                directive=memo.get("directive", ""),
                plan_id=plan_id,
                plan_digest=None,
                repo=None,
                environment=None,
                staging_url=None,
                artifact_urls=[],
                dashboard_url=None,
                pipeline_id=None,
                conclusion=None,
                artifacts=[],
                images=[],
                change=None,
                approval_level=None,
                approvals_needed=[],
                approvers=[],
                dry_run=self.sophie.ci.dry_run,
                detail=failed,
                card=None,
                links=_links(plan_id),
            )
        )

    # -- POST /api/v1/trust-gate ---------------------------------------------------------

    async def trust_gate(self, request: web.Request, token: ApiToken) -> web.StreamResponse:
        body = await self._body(request, MAX_GATE_BODY)
        try:
            peek = pydantic_core.from_json(body)
        except ValueError as exc:
            raise Refused(400, "Bad request", f"the body is not JSON: {exc}") from exc
        if not isinstance(peek, dict):
            raise Refused(400, "Bad request", "the body must be a JSON object")
        form: TrustGateById | TrustGateByPlan
        try:
            if "plan_id" in peek:
                form = TrustGateById.model_validate_json(body)
            else:
                form = TrustGateByPlan.model_validate_json(body)
        except ValidationError as exc:
            raise Refused(400, "Bad request", _explain(exc)) from exc
        supplied: list[dict[str, Any]] | None = None
        if isinstance(form, TrustGateById):
            plan_id = form.plan_id
            record = await self.sophie.store.load(plan_id)
            if record is None or record.thread.channel != token.channel:
                raise Refused(404, "Not found", "no such plan among this token's", plan_id=plan_id)
            plan = record.plan
        else:
            plan = form.plan if form.plan is not None else _plan_from_yaml(form.plan_yaml or "")
            supplied = [e.model_dump(mode="json") for e in form.decisions]
            record = await self.sophie.store.load(plan.id)
            if record is not None and record.thread.channel != token.channel:
                raise Refused(404, "Not found", "no such plan among this token's", plan_id=plan.id)
        checks, approvers = await self.judge(plan, record, supplied)
        reasons = [c.detail for c in checks if not c.passed]
        approved = not reasons
        audit_ref = await self.sophie.store.audit(
            "api.trust_gate",
            plan.id,
            f"api:{token.name}",
            {
                "approved": approved,
                "digest": plan.digest,
                "reasons": [r[:200] for r in reasons[:5]],
                "decisions": "recorded" if supplied is None else len(supplied),
            },
        )
        return _answer(
            TrustGateResult(
                approved=approved,
                plan_id=plan.id,
                plan_digest=plan.digest,
                approval_level=plan.approval.level,
                reasons=reasons,
                validation_results=checks,
                approvers=approvers,
                audit_ref=audit_ref,
            )
        )

    async def judge(
        self, plan: Plan, record: PlanRecord | None, supplied: list[dict[str, Any]] | None
    ) -> tuple[list[Check], list[str]]:
        """The dispatch gate's checks, one by one: SOPHIE recorded this plan and no veto,
        the signed decisions add up (``approvals.tally``, the bot's keys as verifier),
        what runs is what the constitution derives, no rule denies it, and a produced
        change (if any) may deploy. ``supplied``: envelopes given with the plan instead
        of the recorded decisions. Also who the counted approvals are from."""
        sophie = self.sophie
        constitution = sophie.constitution()
        checks: list[Check] = []

        if record is None:
            recorded = "SOPHIE has no record of this plan, so a veto cannot be ruled out"
        elif record.plan.digest != plan.digest:
            recorded = "this is not the plan SOPHIE recorded under this id (its digest differs)"
        elif record.veto is not None:
            recorded = f"the plan was vetoed by {record.veto.actor.user_id}"
        elif record.status in ENDED_UNRUN:
            note = f": {record.note}" if record.note else ""
            recorded = f"the plan is {record.status.value}{note}"
        else:
            recorded = ""
        ok = f"recorded, {record.status.value}" if record is not None else ""
        checks.append(Check(check="recorded", passed=not recorded, detail=recorded or ok))

        decisions: list[DecisionRecord] = []
        problem = ""
        if supplied is None:
            decisions = list(record.decisions) if record is not None else []
        else:
            for i, envelope in enumerate(supplied, start=1):
                opened = _decision(envelope, sophie)
                if isinstance(opened, str):
                    problem = f"decision {i} does not verify: {opened}"
                    break
                decisions.append(opened)
        approvers: list[str] = []
        if not problem:
            counted = approvals.tally(plan, decisions, constitution, sophie.signer, sophie.clock())
            problem = "" if counted.complete else counted.reason
            approvers = list(counted.approvers)
        signed = f"the signed decisions complete the {plan.approval.level.value} level"
        checks.append(Check(check="signatures", passed=not problem, detail=problem or signed))

        runs = what_runs.mismatch(constitution, plan) or ""
        checks.append(
            Check(
                check="what_runs",
                passed=not runs,
                detail=runs or "what runs is what the constitution derives for this plan",
            )
        )
        denied = [f"{w.id}: {w.message}" for w in plan.warnings if w.effect == "deny"]
        checks.append(
            Check(
                check="policies",
                passed=not denied,
                detail="; ".join(denied) if denied else "no rule of the constitution denies it",
            )
        )
        if record is not None and not recorded:
            change = await changing.change_problem(sophie, record) or ""
            checks.append(
                Check(
                    check="change",
                    passed=not change,
                    detail=change or "nothing stops the produced change, if any, from deploying",
                )
            )
        return checks, approvers


def _plan_from_yaml(text: str) -> Plan:
    try:
        return Plan.from_yaml(text)
    except ValidationError as exc:
        raise Refused(400, "Bad plan_yaml", _explain(exc)) from exc
    except Exception as exc:  # yaml.YAMLError and friends: the text is the caller's
        raise Refused(400, "Bad plan_yaml", f"plan_yaml is not a YAML plan: {exc}"[:300]) from exc


def _decision(envelope: dict[str, Any], sophie: Sophie) -> DecisionRecord | str:
    """A supplied envelope as the decision it signs (verified with the bot's keys)."""
    try:
        pred = attestation.open_envelope(envelope, sophie.signer).predicate
        who = pred["approver"]
        return DecisionRecord(
            actor=Actor(
                team_id=str(who["teamId"]),
                user_id=str(who["userId"]),
                name=str(who.get("name", "")),
                enterprise_id=str(who.get("enterpriseId", "")),
            ),
            decision="veto" if pred.get("decision") == "veto" else "approve",
            at=sophie.clock(),
            envelope=envelope,
            groups=tuple(str(g) for g in who.get("groups", ())),
        )
    except attestation.EnvelopeError as exc:
        return str(exc)
    except (KeyError, TypeError, ValueError, AttributeError):
        return "the signed decision is malformed"


def mount(app: web.Application, sophie: Sophie, slack: AsyncWebClient | None) -> Api:
    """Add the ``/api/v1`` routes to the app."""
    api = Api(sophie, slack)
    app.router.add_get(f"{BASE}/openapi.json", api.openapi)
    app.router.add_post(f"{BASE}/plans", api.endpoint("plans:write", api.create_plan))
    app.router.add_get(f"{BASE}/plans/{{plan_id}}", api.endpoint("plans:read", api.get_plan))
    app.router.add_post(f"{BASE}/trust-gate", api.endpoint("trust-gate", api.trust_gate))
    return api
