"""The plan document (``apiVersion: sophie/v1``, ``kind: Plan``).

A plan is what a person approves and what a workflow executes, so its schema
is closed: unknown fields are rejected, actions come from an allow-list, and
its digest (sha256 of RFC 8785 JSON) is what approvals bind to.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints

from roles.canonical import sha256_digest

API_VERSION: Literal["sophie/v1"] = "sophie/v1"


class Action(enum.StrEnum):
    """The closed list of step actions a plan may contain."""

    CODE_CHANGE = "code_change"
    CONFIG_CHANGE = "config_change"
    DEPENDENCY_UPDATE = "dependency_update"
    FEATURE_FLAG = "feature_flag"
    DB_MIGRATION = "db_migration"
    BUILD = "build"
    TEST = "test"
    SECURITY_SCAN = "security_scan"
    BUILD_ARTIFACT = "build_artifact"
    PUBLISH_ARTIFACT = "publish_artifact"
    DEPLOY = "deploy"
    SMOKE_TEST = "smoke_test"
    ROLLBACK = "rollback"
    NOTIFY = "notify"


class Intent(enum.StrEnum):
    FEATURE = "feature"
    FIX = "fix"
    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    BUILD = "build"
    CONFIG = "config"
    MIGRATION = "migration"
    DEPENDENCY = "dependency"


class RiskLevel(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RISK_ORDER.index(self)


_RISK_ORDER = [RiskLevel.LOW, RiskLevel.MEDIUM, RiskLevel.HIGH, RiskLevel.CRITICAL]


class ApprovalLevel(enum.StrEnum):
    AUTONOMOUS = "autonomous"
    NOTIFICATION = "notification"
    APPROVAL = "approval"
    SUPERVISION = "supervision"

    @property
    def rank(self) -> int:
        return _APPROVAL_ORDER.index(self)


_APPROVAL_ORDER = [
    ApprovalLevel.AUTONOMOUS,
    ApprovalLevel.NOTIFICATION,
    ApprovalLevel.APPROVAL,
    ApprovalLevel.SUPERVISION,
]


def max_risk(*levels: RiskLevel) -> RiskLevel:
    return max(levels, key=lambda lvl: lvl.rank)


def max_approval(*levels: ApprovalLevel) -> ApprovalLevel:
    return max(levels, key=lambda lvl: lvl.rank)


Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
RepoName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")
]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=500)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=4000)]
PlanId = Annotated[str, StringConstraints(pattern=r"^plan_[a-z0-9]{8,40}$")]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class Requester(_Closed):
    team_id: str
    user_id: str
    name: str = ""
    enterprise_id: str = ""


class Interpretation(_Closed):
    intent: Intent
    summary: LongText
    # What Φ had to assume (a default repo or environment, truncated text, a name that
    # only looked like a known one): said plainly on the card.
    assumptions: list[ShortText] = Field(default_factory=list)


WorkflowAction = Literal["deploy", "build", "rollback"]
Sha = Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{40}|[0-9a-f]{64})?$")]


class Target(_Closed):
    """What runs: derived by :func:`roles.what_runs.derive` from the constitution alone."""

    repo: RepoName
    ref: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    environment: Identifier
    workflow: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,100}\.ya?ml$")]
    action: WorkflowAction = "deploy"
    # The exact commit a rollback restores (from the deployment history); "" = the ref's head.
    sha: Sha = ""
    # The pipeline implements the plan's change steps on ``sophie/<plan id>`` before it
    # builds; False: the change steps are descriptive and the ref deploys as it is.
    implement: bool = False


class Step(_Closed):
    id: Identifier
    action: Action
    description: LongText
    inputs: dict[Identifier, Annotated[str, StringConstraints(max_length=1000)]] = Field(
        default_factory=dict
    )


class RiskFactor(_Closed):
    id: Identifier
    message: ShortText
    weight: float = Field(ge=0.0, le=1.0)


class Risk(_Closed):
    level: RiskLevel
    score: float = Field(ge=0.0, le=1.0)
    factors: list[RiskFactor] = Field(default_factory=list)
    mitigations: list[ShortText] = Field(default_factory=list)


class Rollback(_Closed):
    strategy: Literal["redeploy_previous", "revert_commit", "feature_flag_off", "restore_backup"]
    description: LongText
    target_sha: str | None = None


class RuleHit(_Closed):
    """A constitution rule (or policy) that fired for this plan, shown on the card."""

    id: str
    message: ShortText
    effect: Literal["deny", "warn", "raise_approval", "info"]


class Approval(_Closed):
    level: ApprovalLevel
    quorum: int = Field(ge=0, le=10)
    ttl_seconds: int = Field(gt=0)
    reasons: list[RuleHit] = Field(default_factory=list)
    # Supervision may need one approver from each of these Slack user groups.
    distinct_groups: list[Annotated[str, StringConstraints(pattern=r"^S[A-Z0-9]{2,20}$")]] = Field(
        default_factory=list
    )


class Provenance(_Closed):
    planner: Literal["offline", "llm"]
    models: list[str] = Field(default_factory=list)
    agreement: float | None = Field(default=None, ge=0.0, le=1.0)
    disagreements: list[ShortText] = Field(default_factory=list)


class ConstitutionRef(_Closed):
    version: int
    digest: str


class Plan(_Closed):
    apiVersion: Literal["sophie/v1"] = API_VERSION
    kind: Literal["Plan"] = "Plan"
    id: PlanId
    created_at: datetime
    directive: LongText
    requester: Requester
    interpretation: Interpretation
    target: Target
    steps: list[Step] = Field(min_length=1, max_length=30)
    artifacts: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.+-]{0,30}$")]] = (
        Field(default_factory=list, max_length=10)
    )
    risk: Risk
    rollback: Rollback
    confidence: float = Field(ge=0.0, le=1.0)
    approval: Approval
    provenance: Provenance
    constitution: ConstitutionRef
    warnings: list[RuleHit] = Field(default_factory=list)
    # A revision after "request changes": which plan it replaces and what was asked.
    revision: int = Field(default=1, ge=1, le=100)
    revises: PlanId | None = None
    changes_requested: LongText | None = None
    _digest: str | None = PrivateAttr(default=None)

    def document(self) -> dict[str, Any]:
        """The plan as plain JSON-compatible data (what is hashed and shown)."""
        return self.model_dump(mode="json")

    def __eq__(self, other: object) -> bool:
        # Equal content, equal plan (the cached digest is not content).
        return isinstance(other, Plan) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    @property
    def digest(self) -> str:
        # The model is frozen, so the digest of its content can be computed once.
        if self._digest is None:
            self._digest = sha256_digest(self.document())
        return self._digest

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.document(), sort_keys=False, allow_unicode=True, width=100)

    @classmethod
    def from_yaml(cls, text: str) -> Plan:
        return cls.model_validate(yaml.safe_load(text))

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Plan:
        return cls.model_validate(doc)
