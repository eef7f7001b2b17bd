"""The team's constitution: who may approve what, where, and under which rules.

The LLM can propose; only the constitution decides. It is loaded from YAML,
validated by a closed schema, and its digest is recorded with every decision
so a change to the rules voids approvals given under the old ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    field_validator,
    model_validator,
)

from roles.canonical import sha256_digest
from roles.plan import Action, ApprovalLevel, RepoName

SlackUserId = Annotated[str, StringConstraints(pattern=r"^[UW][A-Z0-9]{2,20}$")]
SlackGroupId = Annotated[str, StringConstraints(pattern=r"^S[A-Z0-9]{2,20}$")]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Approvers(_Closed):
    users: list[SlackUserId] = Field(default_factory=list)
    groups: list[SlackGroupId] = Field(default_factory=list)


class EnvironmentRule(_Closed):
    approval: ApprovalLevel
    quorum: int = Field(default=1, ge=1, le=10)
    veto_window_seconds: int = Field(default=300, ge=0, le=86400)
    # Supervision may demand approvers from distinct groups (e.g. one SRE, one security).
    distinct_groups: list[SlackGroupId] = Field(default_factory=list)
    protected: bool = False
    aliases: list[str] = Field(default_factory=list)
    # Rollbacks restore a known good state: teams often let them through faster.
    rollback_approval: ApprovalLevel | None = None


class RepoRule(_Closed):
    name: RepoName
    workflow: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,100}\.ya?ml$")]
    default_ref: str = "main"
    environments: list[str]
    aliases: list[str] = Field(default_factory=list)
    # Artifacts built when a directive does not name any.
    artifacts: list[str] = Field(default_factory=lambda: ["docker"])


class ForbiddenPattern(_Closed):
    id: str
    pattern: str
    message: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        re.compile(value)
        return value


class RiskThresholds(_Closed):
    medium: float = 0.3
    high: float = 0.55
    critical: float = 0.8


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class BusinessHours(_Closed):
    """Changes outside these hours carry extra risk (fewer people around to fix them)."""

    timezone: str = "UTC"
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS[:5]))
    start: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] = "09:00"
    end: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] = "17:00"
    weight: float = Field(default=0.15, ge=0, le=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value


class RiskRules(_Closed):
    thresholds: RiskThresholds = RiskThresholds()
    business_hours: BusinessHours | None = None
    # Below this confidence a plan needs at least ``approval``.
    low_confidence: float = Field(default=0.6, ge=0, le=1)
    # Risk level at or above which the approval level is raised.
    raise_to_supervision_at: Literal["high", "critical"] = "critical"
    raise_to_approval_at: Literal["medium", "high", "critical"] = "medium"


class SeparationOfDuties(_Closed):
    no_self_approval: bool = True
    distinct_approvers: bool = True


class TrustRules(_Closed):
    initial: float = Field(default=0.5, ge=0, le=1)
    success_delta: float = 0.05
    failure_delta: float = 0.15
    minimum_for_autonomous: float = Field(default=0.8, ge=0, le=1)


class DigestRules(_Closed):
    channel: str | None = None
    schedule: str = "0 9 * * 1-5"


class Constitution(_Closed):
    apiVersion: Literal["sophie/v1"] = "sophie/v1"
    kind: Literal["Constitution"] = "Constitution"
    version: int = Field(ge=1)
    approvers: Approvers
    environments: dict[str, EnvironmentRule]
    separation_of_duties: SeparationOfDuties = SeparationOfDuties()
    repos: list[RepoRule] = Field(min_length=1)
    default_repo: RepoName | None = None
    default_environment: str = "staging"
    actions: list[Action] = Field(default_factory=lambda: list(Action))
    forbidden: list[ForbiddenPattern] = Field(default_factory=list)
    risk: RiskRules = RiskRules()
    approval_ttl_seconds: int = Field(default=86400, gt=0, le=30 * 86400)
    trust: TrustRules = TrustRules()
    digest: DigestRules = DigestRules()
    # Folder of conftest-style Rego policies, relative to the constitution file.
    policies_dir: str | None = None
    _policy_sources: dict[str, str] = PrivateAttr(default_factory=dict)
    _source_text: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _consistent(self) -> Constitution:
        for repo in self.repos:
            unknown = set(repo.environments) - set(self.environments)
            if unknown:
                raise ValueError(f"repo {repo.name} names unknown environments {sorted(unknown)}")
        if self.default_repo and self.default_repo not in {r.name for r in self.repos}:
            raise ValueError(f"default_repo {self.default_repo} is not in repos")
        if self.default_environment not in self.environments:
            raise ValueError(f"default_environment {self.default_environment} is not defined")
        return self

    def bundle(self) -> dict[str, Any]:
        """The rules as published for verifiers: the YAML, its policies and the digest."""
        return {
            "version": self.version,
            "digest": self.digest_hex,
            "yaml": self._source_text,
            "policies": dict(self._policy_sources),
        }

    @property
    def policy_sources(self) -> dict[str, str]:
        return dict(self._policy_sources)

    @property
    def digest_hex(self) -> str:
        # Policies are part of the rules: editing one voids approvals like editing this file.
        doc: Any = self.model_dump(mode="json")
        if self._policy_sources:
            doc = {"constitution": doc, "policies": self._policy_sources}
        return sha256_digest(doc)

    def repo(self, name: str) -> RepoRule | None:
        return next((r for r in self.repos if r.name == name), None)

    def main_repo(self) -> RepoRule:
        chosen = self.repo(self.default_repo) if self.default_repo else None
        return chosen or self.repos[0]

    def environment(self, name: str) -> EnvironmentRule:
        return self.environments[name]

    def is_named_approver(self, user_id: str) -> bool:
        return user_id in self.approvers.users


class ConstitutionError(ValueError):
    """The constitution file is missing or invalid."""


def parse_constitution(text: str, policies: dict[str, str] | None = None) -> Constitution:
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConstitutionError(f"constitution is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConstitutionError("constitution must be a YAML mapping")
    try:
        constitution = Constitution.model_validate(data)
    except ValueError as exc:
        raise ConstitutionError(f"constitution is invalid: {exc}") from exc
    if policies:
        from roles import policies as rego

        try:
            rego.check(policies)
        except rego.PolicyError as exc:
            raise ConstitutionError(f"a policy does not compile: {exc}") from exc
        constitution._policy_sources = dict(policies)
    constitution._source_text = text
    return constitution


def from_bundle(doc: Any) -> Constitution:
    """A constitution published by :meth:`Constitution.bundle`, checked against its digest."""
    if not isinstance(doc, dict) or not isinstance(doc.get("yaml"), str):
        raise ConstitutionError("not a constitution bundle (expected yaml, policies, digest)")
    policies = doc.get("policies") or {}
    if not isinstance(policies, dict):
        raise ConstitutionError("bundle policies must be a mapping of file name to text")
    constitution = parse_constitution(doc["yaml"], {str(k): str(v) for k, v in policies.items()})
    if doc.get("digest") and doc["digest"] != constitution.digest_hex:
        raise ConstitutionError("bundle digest does not match its contents")
    return constitution


def load_constitution(path: str | Path) -> Constitution:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConstitutionError(f"cannot read constitution {path}: {exc}") from exc
    return parse_constitution(text, _read_policies(Path(path), text))


def _read_policies(path: Path, text: str) -> dict[str, str]:
    data = yaml.safe_load(text)
    folder = data.get("policies_dir") if isinstance(data, dict) else None
    if not folder:
        return {}
    directory = (path.parent / str(folder)).resolve()
    if not directory.is_dir():
        raise ConstitutionError(f"policies_dir {folder!r} is not a folder next to {path.name}")
    try:
        return {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.glob("*.rego"))}
    except OSError as exc:
        raise ConstitutionError(f"cannot read policies in {directory}: {exc}") from exc
