"""What runs on GitHub for a plan, derived from the constitution alone.

:func:`derive` is the one place that fixes the workflow, action, ref, sha,
environment and artifacts a plan dispatches: from the constitution, the target
Φ read (bounded by the constitution) and the kind of request. Model-written
steps never choose any of them; :func:`step_problems` checks each step's inputs
against a closed schema per action, and :func:`mismatch` re-derives a stored
plan at the dispatch gate.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

from roles.change_check import CHANGE_ACTIONS
from roles.constitution import Constitution, RepoRule
from roles.draft import DraftStep
from roles.plan import Action, Intent, Plan, RuleHit, Target, WorkflowAction

Kind = Literal["directive", "rollback"]


@dataclass(frozen=True)
class Request:
    """What kind of request a plan answers: a directive, or the explicit rollback command."""

    kind: Kind = "directive"
    # Φ: the directive asks for a deployment, not only for artifacts.
    deploys: bool = True
    # Rollback only: the deployment the history names (never from a model or from wording).
    rollback_sha: str = ""
    rollback_ref: str = ""
    # A directive that named a ref (checked against the constitution); "" = the default.
    ref: str = ""
    # The plan's change steps are to be implemented by the pipeline (see :func:`implements`).
    implement: bool = False


@dataclass(frozen=True)
class Derived:
    target: Target
    artifacts: tuple[str, ...]
    refusals: list[RuleHit] = field(default_factory=list)


def ref_allowed(repo: RepoRule, ref: str) -> bool:
    """The repo's default ref, or one matching a pattern the constitution declares."""
    return ref == repo.default_ref or any(fnmatchcase(ref, p) for p in repo.refs)


def _deny(rule: str, message: str) -> RuleHit:
    return RuleHit(id=rule, message=message[:500], effect="deny")


def derive(
    constitution: Constitution,
    repo: RepoRule,
    environment: str,
    requested_artifacts: Sequence[str],
    request: Request,
) -> Derived:
    refusals: list[RuleHit] = []
    action: WorkflowAction
    implement = False
    if request.kind == "rollback":
        action, sha, ref = "rollback", request.rollback_sha, request.rollback_ref
        artifacts: tuple[str, ...] = ()  # a rollback redeploys what was built then
        if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha or ""):
            refusals.append(
                _deny("rollback.no-target", "No earlier successful deployment to restore")
            )
            sha = ""
        ref = ref or repo.default_ref
    else:
        action = "deploy" if request.deploys else "build"
        sha, ref = "", request.ref or repo.default_ref
        implement = request.implement and repo.implementer.kind != "none"
        allowed = set(repo.artifacts)
        artifacts = tuple(dict.fromkeys(requested_artifacts))
        for name in artifacts:
            if name not in allowed:
                refusals.append(
                    _deny(
                        "artifacts.not-allowed",
                        f"Artifact '{name[:30]}' is not built for {repo.name} "
                        f"(the constitution lists: {', '.join(repo.artifacts) or 'none'})",
                    )
                )
        artifacts = tuple(a for a in artifacts if a in allowed)
    if environment not in repo.environments or environment not in constitution.environments:
        refusals.append(
            _deny(
                "target.environment-not-allowed",
                f"{repo.name} may not be deployed to '{environment}' under the constitution",
            )
        )
    if not ref_allowed(repo, ref):
        refusals.append(
            _deny("target.ref-not-allowed", f"Ref '{ref[:80]}' is not allowed for {repo.name}")
        )
        ref = repo.default_ref
    target = Target(
        repo=repo.name,
        ref=ref,
        environment=environment,
        workflow=repo.workflow,
        action=action,
        sha=sha,
        implement=implement,
    )
    return Derived(target=target, artifacts=artifacts, refusals=refusals)


def request_of(plan: Plan) -> Request:
    """The request a stored plan answered, as far as it can be re-derived."""
    t = plan.target
    if plan.interpretation.intent == Intent.ROLLBACK:
        return Request("rollback", True, t.sha, t.ref)
    return Request("directive", t.action == "deploy", ref=t.ref, implement=t.implement)


def implements(repo: RepoRule, actions: Iterable[Action], model_ready: bool) -> tuple[bool, str]:
    """Whether the pipeline implements a plan's change steps, and if not, why (for the card).

    Only steps that change the repository are implemented; the repo's implementer
    decides who writes them, and SOPHIE's own implementer needs a model. A plan whose
    change steps cannot be implemented deploys its ref as it is, and its card says so.
    """
    if not any(a in CHANGE_ACTIONS for a in actions):
        return False, ""
    if repo.implementer.kind == "none":
        return False, f"the constitution implements no changes in {repo.name}"
    if repo.implementer.kind == "sophie" and not model_ready:
        return False, "no model is configured (set SOPHIE_LLM_API_KEY)"
    return True, ""


StepEffect = Literal["implemented", "performed", "descriptive"]

_PERFORMED_BY: dict[Action, tuple[WorkflowAction, ...]] = {
    Action.BUILD: ("deploy", "build"),
    Action.BUILD_ARTIFACT: ("deploy", "build"),
    Action.PUBLISH_ARTIFACT: ("deploy", "build"),
    Action.TEST: ("deploy", "build"),  # the build job runs the repo's tests
    Action.DEPLOY: ("deploy",),
    Action.ROLLBACK: ("rollback",),
}


def step_effect(target: Target, action: Action) -> StepEffect:
    """What happens to a step: the implementer writes it, the pipeline performs it, or it
    only describes (nothing runs it). The card says which, so approvers know what runs."""
    if action in CHANGE_ACTIONS:
        return "implemented" if target.implement else "descriptive"
    if action == Action.NOTIFY:
        return "performed"  # SOPHIE reports in the thread
    if target.action in _PERFORMED_BY.get(action, ()):
        return "performed"
    return "descriptive"


def mismatch(constitution: Constitution, plan: Plan) -> str | None:
    """Why a plan's target is not what the constitution derives for it now, or None."""
    repo = constitution.repo(plan.target.repo)
    if repo is None:
        return f"{plan.target.repo} is not in the constitution"
    derived = derive(constitution, repo, plan.target.environment, plan.artifacts, request_of(plan))
    if derived.refusals:
        return derived.refusals[0].message
    if derived.target != plan.target or list(derived.artifacts) != list(plan.artifacts):
        return "what the plan would run is not what the constitution derives for it"
    if plan.target.implement and not any(s.action in CHANGE_ACTIONS for s in plan.steps):
        return "the plan would implement a change but has no change step"
    return None


# -- step inputs: a closed schema per action ------------------------------------------

Check = Callable[[str, Target, Sequence[str]], str | None]


def _equals(field_name: str) -> Check:
    def check(value: str, target: Target, _: Sequence[str]) -> str | None:
        want = str(getattr(target, field_name))
        return None if value.strip() == want else f"must be '{want[:60]}'"

    return check


def _one_of(*options: str) -> Check:
    def check(value: str, _t: Target, _a: Sequence[str]) -> str | None:
        return None if value.strip().lower() in options else f"must be one of {', '.join(options)}"

    return check


def _artifact(value: str, _t: Target, artifacts: Sequence[str]) -> str | None:
    return None if value.strip() in artifacts else "must be one of the plan's artifacts"


def _text(limit: int) -> Check:
    def check(value: str, _t: Target, _a: Sequence[str]) -> str | None:
        return None if len(value) <= limit else f"must be at most {limit} characters"

    return check


_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,99}$")


def _identifier(value: str, _t: Target, _a: Sequence[str]) -> str | None:
    return None if _IDENT.match(value.strip()) else "must be a plain name"


_ENV = _equals("environment")
STEP_INPUTS: dict[Action, dict[str, Check]] = {
    Action.CODE_CHANGE: {"component": _text(200), "files": _text(500)},
    Action.CONFIG_CHANGE: {"key": _identifier, "value": _text(200), "environment": _ENV},
    Action.DEPENDENCY_UPDATE: {"package": _identifier, "version": _identifier},
    Action.FEATURE_FLAG: {"flag": _identifier, "state": _one_of("on", "off"), "environment": _ENV},
    Action.DB_MIGRATION: {"backup": _one_of("true", "false"), "environment": _ENV},
    Action.BUILD: {"ref": _equals("ref")},
    Action.TEST: {"suite": _identifier},
    Action.SECURITY_SCAN: {"scope": _identifier},
    Action.BUILD_ARTIFACT: {"format": _artifact},
    Action.PUBLISH_ARTIFACT: {"format": _artifact},
    Action.DEPLOY: {
        "environment": _ENV,
        "strategy": _one_of("rolling", "blue_green", "canary", "recreate"),
    },
    Action.SMOKE_TEST: {"environment": _ENV},
    Action.ROLLBACK: {"environment": _ENV, "sha": _equals("sha"), "ref": _equals("ref")},
    Action.NOTIFY: {},
}

# Steps that change what runs in an environment must agree with the derived action.
_NEEDS_ACTION: dict[Action, tuple[WorkflowAction, ...]] = {
    Action.DEPLOY: ("deploy",),
    Action.ROLLBACK: ("rollback",),
    Action.DB_MIGRATION: ("deploy",),
}


def step_problems(
    constitution: Constitution,
    target: Target,
    artifacts: Sequence[str],
    steps: Sequence[DraftStep],
) -> list[RuleHit]:
    """Every way the steps stray from the closed schema and from what runs."""
    hits: list[RuleHit] = []
    allowed = set(constitution.actions)
    for n, step in enumerate(steps, start=1):
        action = step.action
        where = f"Step {n} ({action.value})"
        if action not in allowed:
            hits.append(
                _deny(
                    "actions.not-allowed",
                    f"Action '{action.value}' is not allowed by the constitution",
                )
            )
            continue
        runs = _NEEDS_ACTION.get(action)
        if runs is not None and target.action not in runs:
            why = (
                "only the Rollback button or /sophie rollback can roll back"
                if action == Action.ROLLBACK
                else f"this request {_describe(target.action)}"
            )
            hits.append(_deny("steps.action-not-requested", f"{where} is not allowed: {why}"))
        schema = STEP_INPUTS.get(action, {})
        for item in step.inputs:
            check = schema.get(item.name)
            if check is None:
                hits.append(
                    _deny(
                        "steps.input-unknown",
                        f"{where} has an input '{item.name[:40]}' ('{item.value[:60]}') that "
                        f"{action.value} does not take (allowed: {', '.join(schema) or 'none'})",
                    )
                )
                continue
            problem = check(item.value, target, artifacts)
            if problem:
                hits.append(
                    _deny(
                        "steps.input-invalid",
                        f"{where}: input '{item.name}' = '{item.value[:40]}' {problem}",
                    )
                )
    return hits


def _describe(action: WorkflowAction) -> str:
    return {
        "deploy": "deploys",
        "build": "only builds artifacts",
        "rollback": "is a rollback",
    }[action]
