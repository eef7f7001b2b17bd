"""The HTTP API's contract: request and response models, and the OpenAPI 3.1 document
built from them (served at ``/api/v1/openapi.json``).

The same pydantic models validate what arrives (closed: an unknown field is an error,
and no type is coerced) and shape what is answered, so the document cannot drift from
the code. The names of the fields follow the seed's tools (``plan_generator``,
``trust_gate``, ``ci_trigger``) and its example result.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.json_schema import models_json_schema

from roles.plan import ApprovalLevel, Identifier, Plan, PlanId, RepoName, Risk, RuleHit, Target

BASE = "/api/v1"
# The longest directive accepted (Φ reads the first 2,000 characters and says so).
MAX_DIRECTIVE = 4000
MAX_DECISIONS = 20


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- requests --------------------------------------------------------------------------


class PlanRequest(_Request):
    """The seed's ``plan_generator``: a directive in natural language."""

    directive: Annotated[str, StringConstraints(min_length=1, max_length=MAX_DIRECTIVE)] = Field(
        description="What should change, as it would be said in Slack.",
        examples=["Add caching to the user authentication system and deploy to staging"],
    )
    repo: RepoName | None = Field(
        default=None,
        description="The repository (owner/name, as the constitution lists it). When the "
        "directive names another one the request is refused; when it names none, this one "
        "is used instead of the constitution's default.",
    )
    environment: Identifier | None = Field(
        default=None,
        description="The environment (as the constitution names it), with the same rule.",
    )


class Signature(_Request):
    keyid: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    sig: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Envelope(_Request):
    """A DSSE envelope over an in-toto Statement v1: one signed decision."""

    payloadType: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    payload: Annotated[str, StringConstraints(min_length=1, max_length=65_536)]
    signatures: list[Signature] = Field(min_length=1, max_length=5)


class TrustGateById(_Request):
    """Judge a plan SOPHIE made, with the decisions SOPHIE recorded on it."""

    plan_id: PlanId


class TrustGateByPlan(_Request):
    """Judge a plan document with the signed decisions that came with it (what a
    workflow received). Give the plan as ``plan`` (JSON) or ``plan_yaml`` (the seed's)."""

    # Not strict inside: the plan's times arrive as ISO 8601 strings.
    model_config = ConfigDict(extra="forbid", frozen=True)

    plan: Plan | None = None
    plan_yaml: Annotated[str, StringConstraints(min_length=1, max_length=262_144)] | None = None
    decisions: list[Envelope] = Field(max_length=MAX_DECISIONS)

    @model_validator(mode="after")
    def _one_plan(self) -> TrustGateByPlan:
        if (self.plan is None) == (self.plan_yaml is None):
            raise ValueError("give the plan either as plan or as plan_yaml")
        return self


# -- responses -------------------------------------------------------------------------

# The seed's words for where a plan is: "completed" is its example result's.
ApiStatus = Literal[
    "planning",
    "planning_failed",
    "pending",
    "blocked",
    "approved",
    "running",
    "completed",
    "failed",
    "vetoed",
    "expired",
    "stale",
    "superseded",
    "review",
    "error",
]


class Problem(_Response):
    """RFC 9457 problem details: what was wrong with the request, in words."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    plan_id: str | None = None


class Card(_Response):
    """Where the plan's card is in Slack (the thread SOPHIE opened in the token's channel)."""

    channel: str
    thread_ts: str
    ts: str | None = Field(description="The card's own message (null until it is posted).")
    url: str | None = Field(description="A link to the card, when the workspace's URL is known.")


class Links(_Response):
    self_: str = Field(alias="self", serialization_alias="self")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PlanResult(_Response):
    """The seed's ``plan_generator`` response, and SOPHIE's plan behind it."""

    plan_id: str
    plan_digest: str = Field(description="sha256 of the plan's RFC 8785 JSON (what approvals sign)")
    status: ApiStatus
    change_summary: str
    confidence_score: float
    risk_assessment: Risk
    approval_level: ApprovalLevel
    approval_required: bool = Field(
        description="True when people must approve before anything runs (approval or "
        "supervision); notification-level plans run unless vetoed, autonomous ones at once."
    )
    approvals_needed: list[str]
    blocked: bool = Field(description="A rule of the constitution refuses the plan outright.")
    target: Target
    artifacts: list[str]
    warnings: list[RuleHit]
    assumptions: list[str]
    plan_yaml: str
    plan: Plan
    card: Card | None
    links: Links


class PlanAccepted(_Response):
    """Planning takes longer than the request waited: ask ``links.self`` later."""

    plan_id: str
    status: Literal["planning"] = "planning"
    links: Links


class Artifact(_Response):
    name: str
    url: str


class ProducedChange(_Response):
    branch: str
    commit: str
    base: str
    pull_request: str | None
    files: int
    additions: int
    deletions: int
    verdict: Literal["reported", "checked", "refused"]
    reason: str


class PlanStatusResult(_Response):
    """The seed's example result (``ci_trigger``'s response), and more."""

    status: ApiStatus
    plan_status: str | None = Field(description="SOPHIE's own status of the plan.")
    directive: str
    plan_id: str
    plan_digest: str | None
    repo: str | None
    environment: str | None
    staging_url: str | None = Field(
        description="The URL the deployment recorded for its environment (the staging URL "
        "for staging)."
    )
    artifact_urls: list[str]
    dashboard_url: str | None = Field(description="The GitHub Actions run.")
    pipeline_id: str | None = Field(description="The GitHub Actions run id.")
    conclusion: str | None
    artifacts: list[Artifact]
    images: list[str]
    change: ProducedChange | None
    approval_level: ApprovalLevel | None
    approvals_needed: list[str]
    approvers: list[str]
    dry_run: bool
    detail: str
    card: Card | None
    links: Links


class Check(_Response):
    check: Literal["recorded", "signatures", "what_runs", "policies", "change"]
    passed: bool
    detail: str


class TrustGateResult(_Response):
    """The seed's ``trust_gate`` response."""

    approved: bool
    plan_id: str
    plan_digest: str
    approval_level: ApprovalLevel
    reasons: list[str] = Field(description="Why the plan may not run (empty when approved).")
    validation_results: list[Check]
    approvers: list[str]
    audit_ref: str = Field(description="The hash of the audit entry recording this answer.")


# -- the document ----------------------------------------------------------------------

_REQUESTS: list[type[BaseModel]] = [PlanRequest, TrustGateById, TrustGateByPlan]
_RESPONSES: list[type[BaseModel]] = [
    Problem,
    PlanResult,
    PlanAccepted,
    PlanStatusResult,
    TrustGateResult,
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str, headers: list[str] | None = None) -> dict[str, Any]:
    media = "application/problem+json" if name == "Problem" else "application/json"
    out: dict[str, Any] = {"description": description, "content": {media: {"schema": _ref(name)}}}
    if headers:
        out["headers"] = {h: {"$ref": f"#/components/headers/{h}"} for h in headers}
    return out


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "The body is not JSON, or does not fit the schema.",
        401: "No token, or one the constitution does not grant.",
        403: "The token does not have the scope this operation needs.",
        404: "No such plan among those the token may see.",
        413: "The body is too large.",
        415: "The body is not application/json.",
        422: "Understood, but the constitution or the store says no.",
        429: "Too many directives from this user or channel (the constitution's rate_limits).",
        503: "SOPHIE cannot answer now (Redis, Slack); try again after Retry-After.",
    }
    headers = {401: ["WWW-Authenticate"], 429: ["Retry-After"], 503: ["Retry-After"]}
    return {str(c): _json("Problem", words[c], headers.get(c)) for c in codes}


def _operation(
    op_id: str, summary: str, description: str, scope: str, responses: dict[str, Any]
) -> dict[str, Any]:
    return {
        "operationId": op_id,
        "summary": summary,
        "description": description + f"\n\nNeeds a token with the `{scope}` scope.",
        "security": [{"bearerAuth": [scope]}],
        "responses": responses,
    }


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of ``/api/v1``."""
    _, top = models_json_schema(
        [(m, "validation") for m in _REQUESTS] + [(m, "serialization") for m in _RESPONSES],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    schemas["TrustGateRequest"] = {
        "oneOf": [_ref("TrustGateById"), _ref("TrustGateByPlan")],
        "description": "Either a plan SOPHIE made (by id) or a plan with its signed decisions.",
    }
    plan_id = {
        "name": "plan_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": r"^plan_[a-z0-9]{8,40}$"},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SOPHIE API",
            "version": "1.0.0",
            "summary": "The seed's tools over HTTP: plan_generator, trust_gate, ci_trigger.",
            "description": (
                "Plans made here are the plans made in Slack: the same card in the token's "
                "channel, the same approvals (Approve / Veto in Slack, signed), the same "
                "audit log. Tokens are granted in the constitution's `api:` section."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "paths": {
            f"{BASE}/plans": {
                "post": _operation(
                    "createPlan",
                    "Plan a directive (plan_generator)",
                    "Reads, plans and checks the directive as a Slack message would be, as the "
                    "token's user, in a new thread of the token's channel, where its card "
                    "asks for the approvals. Answers 201 with the plan once it is made (the "
                    "request waits up to 25 s, or `Prefer: wait=N`, at most 60), else 202 "
                    "with its Location. `Prefer: respond-async` answers 202 at once. An "
                    "`Idempotency-Key` makes a retried request answer the same plan (200).",
                    "plans:write",
                    {
                        "201": _json("PlanResult", "The plan, with its card.", ["Location"]),
                        "200": _json(
                            "PlanResult",
                            "The plan an earlier request with this Idempotency-Key made.",
                            ["Location"],
                        ),
                        "202": _json("PlanAccepted", "Still planning.", ["Location"]),
                        **_errors(400, 401, 403, 413, 415, 422, 429, 503),
                    },
                )
                | {
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,100}$"},
                        },
                        {
                            "name": "Prefer",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "RFC 7240: `respond-async`, or `wait=N` seconds.",
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("PlanRequest")}},
                    },
                }
            },
            f"{BASE}/plans/{{plan_id}}": {
                "get": _operation(
                    "getPlan",
                    "Where a plan is (ci_trigger's response, the seed's result)",
                    "Status, staging URL, artifact URLs and the run's dashboard URL, as the "
                    "seed's example result has them, and the produced change. Only plans "
                    "whose card is in the token's channel.",
                    "plans:read",
                    {
                        "200": _json("PlanStatusResult", "The plan's state."),
                        **_errors(401, 403, 404, 503),
                    },
                )
                | {"parameters": [plan_id]}
            },
            f"{BASE}/trust-gate": {
                "post": _operation(
                    "trustGate",
                    "May this plan run? (trust_gate)",
                    "Re-verifies the signed decisions against the plan and the constitution "
                    "in force (roles/approvals.py `tally`, the dispatch gate's own check), "
                    "checks that what runs is what the constitution derives and that no "
                    "rule denies the plan, and that SOPHIE recorded the plan and no veto. "
                    "Every answer is audited; `audit_ref` names the entry.",
                    "trust-gate",
                    {
                        "200": _json("TrustGateResult", "The verdict (approved or not)."),
                        **_errors(400, 401, 403, 404, 413, 415, 503),
                    },
                )
                | {
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("TrustGateRequest")}},
                    }
                }
            },
            f"{BASE}/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token whose sha256 the constitution's `api.tokens` "
                    "lists, with the scopes plans:write, plans:read and trust-gate.",
                }
            },
            "headers": {
                "Location": {"schema": {"type": "string"}, "description": "The plan's URL."},
                "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."},
                "WWW-Authenticate": {"schema": {"type": "string"}},
            },
        },
    }


def schema_of(name: str) -> dict[str, Any]:
    """One component schema as a standalone JSON Schema (for validating answers in tests)."""
    doc = document()
    return {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
