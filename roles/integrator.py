"""Σ Integrator: turn a proposal into a plan document, and a plan into workflow inputs."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import datetime
from typing import Any

from roles.canonical import canonical_json
from roles.constitution import Constitution
from roles.diff_engine import Verdict
from roles.navigator import Reading
from roles.plan import (
    ConstitutionRef,
    Interpretation,
    Plan,
    Provenance,
    Requester,
    Rollback,
    Step,
)
from roles.ports import Proposal
from roles.records import Actor, ProducedChange

# GitHub's limits for workflow_dispatch inputs.
MAX_INPUTS = 25
MAX_INPUT_CHARS = 65_535

# The pipeline template names each run after its dispatch, correlation id last:
#   run-name: "SOPHIE … ${{ inputs.plan_id }} to … [${{ inputs.correlation_id }}]"
# GitHub reports it as the run's ``display_title`` (REST and webhooks, github.com and GHES).
_CORRELATION = re.compile(r"\[([A-Za-z0-9_.:-]{1,100})\]\s*$")


def correlation_in(run_name: str | None) -> str:
    """The correlation id a run's name carries ("" if it carries none)."""
    found = _CORRELATION.search(run_name or "")
    return found.group(1) if found else ""


def plan_of_correlation(correlation_id: str) -> str:
    """The plan a correlation id belongs to (they are ``<plan id>.<dispatch attempt>``)."""
    plan_id, dot, attempt = correlation_id.rpartition(".")
    return plan_id if dot and attempt.isdigit() else ""


def plan_id_for(event_id: str) -> str:
    """Deterministic per directive event, so a retried planning job finds its own plan."""
    return "plan_" + hashlib.sha256(event_id.encode()).hexdigest()[:16]


def assemble(
    plan_id: str,
    now: datetime,
    reading: Reading,
    requester: Actor,
    proposal: Proposal,
    verdict: Verdict,
    constitution: Constitution,
) -> Plan:
    draft = proposal.draft
    steps = [
        Step(
            id=f"s{i}-{step.action.value.replace('_', '-')}",
            action=step.action,
            description=step.description,
            inputs={item.name: item.value for item in step.inputs},
        )
        for i, step in enumerate(draft.steps, start=1)
    ]
    return Plan(
        id=plan_id,
        created_at=now,
        directive=reading.text or "(empty directive)",
        requester=Requester(
            team_id=requester.team_id,
            user_id=requester.user_id,
            name=requester.name,
            enterprise_id=requester.enterprise_id,
        ),
        # Φ's reading of the intent wins over the model's: it is bounded by the constitution.
        interpretation=Interpretation(
            intent=reading.intent,
            summary=draft.summary,
            assumptions=[a[:500] for a in reading.assumptions][:10],
        ),
        # What runs is the kernel's (roles.what_runs), never the model's.
        target=verdict.runs.target,
        steps=steps,
        artifacts=list(verdict.runs.artifacts)[:10],
        risk=verdict.risk,
        rollback=Rollback(strategy=draft.rollback.strategy, description=draft.rollback.description),
        confidence=round(proposal.confidence, 3),
        approval=verdict.approval,
        provenance=Provenance(
            planner="offline" if proposal.planner == "offline" else "llm",
            models=proposal.models,
            agreement=proposal.agreement,
            disagreements=proposal.disagreements,
        ),
        constitution=ConstitutionRef(version=constitution.version, digest=constitution.digest_hex),
        warnings=[*verdict.warnings, *verdict.denials],
    )


def _b64(doc: Any) -> str:
    return base64.b64encode(canonical_json(doc)).decode()


def constitution_bundle(constitution: Constitution) -> dict[str, Any]:
    """The rules a workflow verifies against, sent with the plan (no call back to SOPHIE).

    The shape of :meth:`Constitution.bundle` (``sophie verify --constitution`` reads it),
    but ``yaml`` holds the parsed rules as JSON, which is YAML too: the exact document
    whose digest every decision signs, so the pipeline's stdlib-only verifier
    (``examples/github/verify.py``) can recompute that digest without the schema.
    """
    rules = constitution.model_dump(mode="json")
    return {
        "version": constitution.version,
        "digest": constitution.digest_hex,
        "yaml": json.dumps(rules, sort_keys=True, ensure_ascii=False),
        "policies": constitution.policy_sources,
    }


def workflow_inputs(
    plan: Plan,
    envelopes: list[dict[str, Any]],
    bundle_url: str | None,
    correlation_id: str = "",
    constitution: Constitution | None = None,
    implementing: bool = False,
    change: ProducedChange | None = None,
) -> dict[str, str]:
    """The workflow_dispatch inputs for a plan, within GitHub's size limits.

    Everything that chooses what runs comes from the plan's target and artifacts,
    which :mod:`roles.what_runs` derived from the constitution (and the approvals
    sign); step fields written by a model never reach the workflow except inside
    the signed plan document. The plan, its envelopes and the constitution they were
    signed under travel inline when they fit (65,535 characters in all), so the
    workflow verifies without reaching SOPHIE; otherwise the workflow gets a URL on
    the bot for the same bundle. A workflow may define only 10 inputs (GitHub
    Enterprise Server; actionlint), so the constitution rides in ``bundle_url`` as a
    ``data:`` URL (RFC 2397): the bundle, inline.

    A plan that implements runs twice: ``implementing`` asks the pipeline to write the
    change (action ``implement``); then the run that builds and deploys the checked
    ``change`` gets its commit as ``deploy_sha`` and its signed change statement in the
    bundle, which the workflow verifies with the approvals.
    """
    target = plan.target
    inputs = {
        "plan_id": plan.id,
        "plan_digest": plan.digest,
        "environment": target.environment,
        "artifacts": ",".join(plan.artifacts),
        "action": target.action,
        "plan": _b64(plan.document()),
        "envelopes": _b64(envelopes),
    }
    if implementing:
        inputs["action"] = "implement"
    statement = change.statement if change is not None and not implementing else None
    if constitution is not None:
        inline: dict[str, Any] = {"constitution": constitution_bundle(constitution)}
        if statement is not None:
            inline["change"] = statement
        inputs["bundle_url"] = "data:application/json;base64," + _b64(inline)
    if correlation_id:
        inputs["correlation_id"] = correlation_id
    if target.sha:
        inputs["deploy_sha"] = target.sha
    if statement is not None and change is not None:
        inputs["deploy_sha"] = change.commit
    if len(json.dumps(inputs)) > MAX_INPUT_CHARS:
        if bundle_url is None:
            raise ValueError("plan and envelopes exceed GitHub's input limit and no bundle URL")
        inputs.pop("plan")
        inputs.pop("envelopes")
        inputs["bundle_url"] = bundle_url
    assert len(inputs) <= MAX_INPUTS
    return inputs


def bundle(
    plan: Plan,
    envelopes: list[dict[str, Any]],
    constitution: Constitution | None = None,
    change_statement: dict[str, Any] | None = None,
) -> str:
    """The JSON a workflow fetches from the bundle URL."""
    doc: dict[str, Any] = {"plan": plan.document(), "envelopes": envelopes}
    if constitution is not None:
        doc["constitution"] = constitution_bundle(constitution)
    if change_statement is not None:
        doc["change"] = change_statement
    return json.dumps(doc, sort_keys=True)
