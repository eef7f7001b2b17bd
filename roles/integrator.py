"""Σ Integrator: turn a proposal into a plan document, and a plan into workflow inputs."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from typing import Any

from roles.canonical import canonical_json
from roles.constitution import Constitution
from roles.diff_engine import Verdict
from roles.navigator import Reading
from roles.plan import (
    Action,
    ConstitutionRef,
    Interpretation,
    Plan,
    Provenance,
    Requester,
    Rollback,
    Step,
    Target,
)
from roles.ports import Proposal
from roles.records import Actor

# GitHub's limits for workflow_dispatch inputs.
MAX_INPUTS = 25
MAX_INPUT_CHARS = 65_535


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
            team_id=requester.team_id, user_id=requester.user_id, name=requester.name
        ),
        # Φ's reading of the intent wins over the model's: it is bounded by the constitution.
        interpretation=Interpretation(intent=reading.intent, summary=draft.summary),
        target=Target(
            repo=reading.repo.name,
            ref=reading.ref,
            environment=reading.environment,
            workflow=reading.repo.workflow,
        ),
        steps=steps,
        artifacts=list(dict.fromkeys([*reading.artifacts, *draft.artifacts]))[:10],
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


def workflow_action(plan: Plan) -> str:
    """What the pipeline template should do: deploy, build (artifacts only) or rollback."""
    actions = {s.action for s in plan.steps}
    if Action.ROLLBACK in actions:
        return "rollback"
    if Action.DEPLOY in actions:
        return "deploy"
    return "build"


def rollback_sha(plan: Plan) -> str:
    for step in plan.steps:
        if step.action == Action.ROLLBACK and step.inputs.get("sha"):
            return step.inputs["sha"]
    return ""


def workflow_inputs(
    plan: Plan,
    envelopes: list[dict[str, Any]],
    bundle_url: str | None,
    correlation_id: str = "",
) -> dict[str, str]:
    """The workflow_dispatch inputs for a plan, within GitHub's size limits.

    The plan and its envelopes travel inline when they fit; otherwise the
    workflow gets a URL on the bot from which it fetches the same bundle.
    """
    inputs = {
        "plan_id": plan.id,
        "plan_digest": plan.digest,
        "environment": plan.target.environment,
        "artifacts": ",".join(plan.artifacts),
        "action": workflow_action(plan),
        "plan": _b64(plan.document()),
        "envelopes": _b64(envelopes),
    }
    if correlation_id:
        inputs["correlation_id"] = correlation_id
    if rollback_sha(plan):
        inputs["deploy_sha"] = rollback_sha(plan)
    if len(json.dumps(inputs)) > MAX_INPUT_CHARS:
        if bundle_url is None:
            raise ValueError("plan and envelopes exceed GitHub's input limit and no bundle URL")
        inputs.pop("plan")
        inputs.pop("envelopes")
        inputs["bundle_url"] = bundle_url
    assert len(inputs) <= MAX_INPUTS
    return inputs


def bundle(plan: Plan, envelopes: list[dict[str, Any]]) -> str:
    """The JSON a workflow fetches from the bundle URL."""
    return json.dumps({"plan": plan.document(), "envelopes": envelopes}, sort_keys=True)
