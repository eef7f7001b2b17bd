"""The offline planner: deterministic plans for common directives, no LLM needed.

It is what SOPHIE uses when no LLM key is configured, and what the card
labels as such. Same reading in, same draft out.
"""

from __future__ import annotations

import re

from roles.draft import DraftInput, DraftRisk, DraftRiskFactor, DraftRollback, DraftStep, PlanDraft
from roles.navigator import Reading
from roles.plan import Action, Intent, RiskLevel
from roles.ports import Proposal

OFFLINE_MODEL = "sophie-offline-planner"

_SECRETS = re.compile(r"\b(secret|credential|password|api[ _-]?key|token|certificate)s?\b", re.I)
_CACHE = re.compile(r"\b(cach\w*|redis|memcache\w*)\b", re.I)
_DATA = re.compile(r"\b(database|schema|table|column|index|migrat\w*)\b", re.I)


def _step(action: Action, description: str, **inputs: str) -> DraftStep:
    return DraftStep(
        action=action,
        description=description,
        inputs=[DraftInput(name=k, value=v) for k, v in inputs.items()],
    )


def _delivery(reading: Reading) -> list[DraftStep]:
    """Build, verify, package and ship: the tail shared by most plans."""
    env = reading.environment
    steps = [
        _step(Action.TEST, "Run the unit and integration test suites", suite="all"),
        _step(Action.SECURITY_SCAN, "Scan dependencies and the container image for known CVEs"),
        _step(Action.BUILD, f"Build {reading.repo.name} at {reading.ref}", ref=reading.ref),
    ]
    for artifact in reading.artifacts:
        steps.append(
            _step(Action.BUILD_ARTIFACT, f"Package the {artifact} artifact", format=artifact)
        )
    steps.append(
        _step(Action.DEPLOY, f"Deploy the build to {env}", environment=env, strategy="rolling")
    )
    steps.append(_step(Action.SMOKE_TEST, f"Smoke-test {env}: health checks and key user journeys"))
    return steps


def _change_steps(reading: Reading) -> list[DraftStep]:
    text, component = reading.text, reading.component
    steps = [
        _step(
            Action.CODE_CHANGE,
            f"Implement the change in {component}: {text[:300]}",
            component=component[:200],
        )
    ]
    if _CACHE.search(text):
        steps.append(
            _step(
                Action.CONFIG_CHANGE,
                f"Configure the cache backend (Redis) and TTLs for {reading.environment}",
                key="cache",
            )
        )
    if _DATA.search(text):
        steps.append(
            _step(
                Action.DB_MIGRATION,
                "Apply the schema migration after taking a backup",
                backup="true",
            )
        )
    return steps


def _risk(reading: Reading, steps: list[DraftStep]) -> DraftRisk:
    actions = {s.action for s in steps}
    factors = []
    mitigations = ["Deploy is verified by smoke tests", "Rollback plan prepared before deploy"]
    if Action.DB_MIGRATION in actions:
        factors.append(DraftRiskFactor(id="data-migration", message="Schema change touches data"))
        mitigations.append("Backup taken before the migration")
    if _SECRETS.search(reading.text):
        factors.append(DraftRiskFactor(id="secrets", message="Directive mentions secrets"))
    if _CACHE.search(reading.text):
        factors.append(
            DraftRiskFactor(id="stale-data", message="Caching can serve stale or cross-user data")
        )
        mitigations.append("Cache keys scoped per user; short TTL")
    level = RiskLevel.MEDIUM if factors else RiskLevel.LOW
    if reading.environment == "production":
        level = RiskLevel.HIGH
    return DraftRisk(level=level, factors=factors, mitigations=mitigations)


def offline_draft(reading: Reading) -> PlanDraft:
    intent = reading.intent
    env = reading.environment
    rollback = DraftRollback(
        strategy="redeploy_previous",
        description=f"Redeploy the last successful {env} deployment",
    )
    if intent == Intent.ROLLBACK:
        steps = [
            _step(
                Action.ROLLBACK, f"Redeploy the last known good {env} deployment", environment=env
            ),
            _step(Action.SMOKE_TEST, f"Smoke-test {env} after the rollback"),
        ]
        rollback = DraftRollback(
            strategy="redeploy_previous",
            description="Redeploy the version that was live before this rollback",
        )
        summary = f"Roll {reading.repo.name} in {env} back to its last known good deployment"
    elif intent == Intent.BUILD:
        steps = [
            _step(Action.BUILD, f"Build {reading.repo.name} at {reading.ref}", ref=reading.ref),
            _step(Action.TEST, "Run the unit and integration test suites", suite="all"),
            *[
                _step(Action.BUILD_ARTIFACT, f"Package the {a} artifact", format=a)
                for a in reading.artifacts
            ],
            _step(Action.PUBLISH_ARTIFACT, "Publish the artifacts to the workflow run"),
        ]
        summary = f"Build {', '.join(reading.artifacts) or 'the'} artifacts of {reading.repo.name}"
    elif intent == Intent.DEPLOY:
        steps = _delivery(reading)
        summary = f"Deploy {reading.repo.name}@{reading.ref} to {env}"
    elif intent == Intent.CONFIG:
        steps = [
            _step(Action.CONFIG_CHANGE, f"Apply the configuration change: {reading.text[:300]}"),
            _step(Action.TEST, "Validate the configuration and run the test suites"),
            _step(Action.DEPLOY, f"Roll the configuration out to {env}", environment=env),
            _step(Action.SMOKE_TEST, f"Smoke-test {env}"),
        ]
        rollback = DraftRollback(
            strategy="revert_commit", description="Revert the configuration commit and redeploy"
        )
        summary = f"Change configuration of {reading.repo.name} in {env}"
    elif intent == Intent.MIGRATION:
        steps = [
            _step(Action.CODE_CHANGE, f"Write the migration: {reading.text[:300]}"),
            _step(Action.TEST, "Run the migration against a copy of the data and the test suites"),
            _step(
                Action.DB_MIGRATION, f"Back up, then apply the migration in {env}", backup="true"
            ),
            *_delivery(reading)[2:],
        ]
        rollback = DraftRollback(
            strategy="restore_backup",
            description="Restore the pre-migration backup and redeploy the previous version",
        )
        summary = f"Apply a database migration to {reading.repo.name} in {env}"
    elif intent == Intent.DEPENDENCY:
        steps = [
            _step(Action.DEPENDENCY_UPDATE, f"Update dependencies: {reading.text[:300]}"),
            *_delivery(reading),
        ]
        summary = f"Update dependencies of {reading.repo.name} and deploy to {env}"
    else:  # feature or fix
        steps = [*_change_steps(reading), *_delivery(reading)]
        verb = "Fix" if intent == Intent.FIX else "Implement"
        summary = f"{verb} '{reading.text[:200]}' in {reading.repo.name} and deploy to {env}"
    return PlanDraft(
        intent=intent,
        summary=summary,
        steps=steps,
        artifacts=reading.artifacts,
        risk=_risk(reading, steps),
        rollback=rollback,
    )


class OfflinePlanner:
    """Implements :class:`roles.ports.Planner` without any model."""

    offline = True

    async def propose(
        self, reading: Reading, constitution: object, precedent: list[str]
    ) -> Proposal:
        draft = offline_draft(reading)
        # Keyword matching is honest about what it knows: weaker when nothing matched.
        return Proposal(
            draft=draft,
            planner="offline",
            models=[OFFLINE_MODEL],
            confidence=0.75 if reading.intent_matched else 0.5,
            notes=["Planned by the offline planner (no LLM configured)."],
        )


def pin_rollback(draft: PlanDraft, sha: str, ref: str) -> PlanDraft:
    """Name the exact commit a rollback redeploys (found in the deployment history)."""
    steps = []
    for step in draft.steps:
        if step.action == Action.ROLLBACK:
            kept = [i for i in step.inputs if i.name not in ("sha", "ref")]
            step = step.model_copy(
                update={
                    "description": f"Redeploy {sha[:12]} ({ref}), the last known good deployment",
                    "inputs": [
                        *kept,
                        DraftInput(name="sha", value=sha),
                        DraftInput(name="ref", value=ref[:200]),
                    ][:10],
                }
            )
        steps.append(step)
    return draft.model_copy(
        update={"steps": steps, "summary": f"{draft.summary} ({sha[:12]})"[:1000]}
    )
