"""The team's constitution: who may approve what, where, and under which rules.

The LLM can propose; only the constitution decides. It is loaded from YAML,
validated by a closed schema, and its digest is recorded with every decision
so a change to the rules voids approvals given under the old ones.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
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
    # Only the Rollback button and /sophie rollback ask for one, never wording.
    rollback_approval: ApprovalLevel | None = None
    # Who may start a rollback here (default: the constitution's approvers).
    rollback_by: Approvers | None = None
    # What a generated change needs before it deploys here: "checked" (Δ checked the
    # diff; the default outside protected environments) or "reviewed" (the sha is on the
    # default branch, merged after review, or its diff was approved on a second card).
    generated_change: Literal["checked", "reviewed"] | None = None

    def change_requirement(self) -> Literal["checked", "reviewed"]:
        if self.generated_change is not None:
            return self.generated_change
        return "reviewed" if self.protected else "checked"


class Implementer(_Closed):
    """Who writes the code for a plan's change steps, in the pipeline's implement job."""

    # "none": change steps are never implemented here (the ref deploys as it is).
    kind: Literal["sophie", "command", "action", "none"] = "sophie"
    # kind "command": run with the plan file's path as $SOPHIE_PLAN_FILE;
    # kind "action": the `uses:` of an Action given the plan file as its task.
    run: str | None = None


class ChangeLimits(_Closed):
    """Δ refuses a produced change larger than this (files, added + deleted lines)."""

    max_files: int = Field(default=50, ge=1, le=10_000)
    max_lines: int = Field(default=2000, ge=1, le=1_000_000)


class RepoRule(_Closed):
    name: RepoName
    workflow: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,100}\.ya?ml$")]
    default_ref: str = "main"
    # Other refs a plan may run from (glob patterns, e.g. "release/*"); the default always may.
    refs: list[Annotated[str, StringConstraints(min_length=1, max_length=255)]] = Field(
        default_factory=list
    )
    environments: list[str]
    aliases: list[str] = Field(default_factory=list)
    # Every artifact a plan for this repo may build (anything else is refused).
    artifacts: list[str] = Field(default_factory=lambda: ["docker"])
    # Those built when a directive names none (default: all of ``artifacts``).
    default_artifacts: list[str] | None = None
    # How a change is made (see README, "How a change is made"): the command that runs
    # the repo's tests, who implements change steps ("sophie" = `sophie implement`, or a
    # command / an Action given the plan file), the paths no implementer may touch,
    # and the most a generated change may change before Δ refuses it.
    test_command: str | None = None
    implementer: Implementer = Field(default_factory=lambda: Implementer())
    forbidden_paths: list[str] = Field(
        default_factory=lambda: [
            ".github/workflows/**",
            ".github/sophie/**",
            "**/.env",
            "**/.env.*",
            "**/*.pem",
            "**/*.key",
            "**/secrets/**",
            "**/id_rsa*",
        ]
    )
    change_limits: ChangeLimits = Field(default_factory=lambda: ChangeLimits())

    @model_validator(mode="after")
    def _defaults_allowed(self) -> RepoRule:
        extra = set(self.default_artifacts or []) - set(self.artifacts)
        if extra:
            raise ValueError(
                f"repo {self.name}: default_artifacts {sorted(extra)} not in artifacts"
            )
        return self

    @property
    def artifacts_by_default(self) -> list[str]:
        return list(self.artifacts if self.default_artifacts is None else self.default_artifacts)


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

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "distinct_approvers" in data:
            if data["distinct_approvers"] is not True:
                raise ValueError(
                    "separation_of_duties.distinct_approvers was removed: each approval in "
                    "a quorum is always a different person. Delete the line."
                )
            data = {k: v for k, v in data.items() if k != "distinct_approvers"}
        return data


class Freeze(_Closed):
    """A window in which deploys to some environments wait, or need a higher level.

    Either dated (``start``/``end``, ISO 8601 with a zone) or weekly: on each of
    ``days``, from ``from_time`` to ``to_time`` in ``timezone``; a ``to_time`` earlier
    than ``from_time`` runs past midnight into the next day (``days: [fri]``,
    ``"16:00"``–``"08:00"`` is Friday evening to Saturday morning).
    """

    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    environments: list[str] = Field(min_length=1)
    reason: str = "deploy freeze"
    start: datetime | None = None
    end: datetime | None = None
    timezone: str = "UTC"
    days: list[Weekday] = Field(default_factory=list)
    from_time: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] = "00:00"
    to_time: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] = "23:59"
    # "wait": approved deploys wait in the queue until the window ends;
    # "raise": plans made inside the window need at least ``level``.
    effect: Literal["wait", "raise"] = "wait"
    level: ApprovalLevel = ApprovalLevel.SUPERVISION

    @model_validator(mode="after")
    def _one_kind(self) -> Freeze:
        dated = self.start is not None or self.end is not None
        if dated == bool(self.days):
            raise ValueError(f"freeze {self.id}: give either start and end, or days")
        if dated and (self.start is None or self.end is None or self.start >= self.end):
            raise ValueError(f"freeze {self.id}: start must come before end")
        for moment in (self.start, self.end):
            if moment is not None and moment.tzinfo is None:
                raise ValueError(f"freeze {self.id}: start and end need a time zone")
        BusinessHours._known_zone(self.timezone)
        return self


class Deploys(_Closed):
    """One deploy per repo@environment at a time; who may lock; when deploys freeze."""

    # Who may /sophie lock and /sophie unlock (default: the approvers).
    lock_by: Approvers | None = None
    freezes: list[Freeze] = Field(default_factory=list)


class RateLimits(_Closed):
    """Directives one person or one channel may start per window (abuse and cost bound)."""

    per_user: int = Field(default=6, ge=1, le=10_000)
    per_channel: int = Field(default=30, ge=1, le=100_000)
    window_seconds: int = Field(default=60, ge=1, le=86_400)


class TrustRules(_Closed):
    """How trust moves (README, "Trust"). Scores are kept for each repo@environment, each
    model, each requester and each approver; a success raises a score by
    ``success_delta`` × the distance to 1, a failure lowers it by ``failure_delta``, a
    rollback of what it did by ``rollback_delta``. A plan may be autonomous only while
    every relevant score (its repo@environment, its requester, its models) is at least
    ``minimum_for_autonomous``; below it the level rises to notification."""

    initial: float = Field(default=0.5, ge=0, le=1)
    success_delta: float = Field(default=0.05, ge=0, le=1)
    failure_delta: float = Field(default=0.15, ge=0, le=1)
    rollback_delta: float = Field(default=0.25, ge=0, le=1)
    minimum_for_autonomous: float = Field(default=0.8, ge=0, le=1)


def check_cron(schedule: str) -> None:
    """Refuse anything but a valid five-field cron expression (minute hour dom month dow)."""
    from cronsim import CronSim, CronSimError

    if len(schedule.split()) != 5:
        raise ValueError(f"digest schedule {schedule!r}: five fields expected")
    try:
        CronSim(schedule, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValueError(f"digest schedule {schedule!r}: {exc}") from exc


class DigestRules(_Closed):
    """The scheduled digest: posted to ``channel`` on ``schedule`` (five-field cron, in
    ``timezone``), once per slot whatever the number of workers."""

    channel: str | None = None
    schedule: str = "0 9 * * 1-5"
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return BusinessHours._known_zone(value)

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        check_cron(value)  # fail closed: a digest that would never post is refused at load
        return value


ApiScope = Literal["plans:write", "plans:read", "trust-gate"]
API_SCOPES: tuple[ApiScope, ...] = ("plans:write", "plans:read", "trust-gate")


class ApiToken(_Closed):
    """One client of the HTTP API (README, "The HTTP API").

    Only the sha256 of the token is written here, never the token. ``channel`` is where
    the cards of the plans it asks for are posted, and the only channel whose plans it
    may read or query; ``team`` and ``user`` are the Slack identity a plan is requested
    as, so the workspace binding and separation of duties hold as for Slack.
    """

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    scopes: list[ApiScope] = Field(min_length=1)
    channel: Annotated[str, StringConstraints(pattern=r"^[CG][A-Z0-9]{2,20}$")] | None = None
    team: Annotated[str, StringConstraints(pattern=r"^T[A-Z0-9]{2,20}$")] | None = None
    user: SlackUserId | None = None
    enterprise: Annotated[str, StringConstraints(pattern=r"^(E[A-Z0-9]{2,20})?$")] = ""

    @field_validator("sha256", mode="before")
    @classmethod
    def _hex_digest(cls, value: Any) -> Any:
        # `sha256sum` prints lower-case hex; accept "sha256:" and upper case too.
        if isinstance(value, str):
            value = value.strip().lower().removeprefix("sha256:")
        return value

    @model_validator(mode="after")
    def _identity(self) -> ApiToken:
        if self.channel is None:
            raise ValueError(
                f"api token {self.name}: set channel: the Slack channel ID (C… or G…) where "
                "the cards of its plans are posted and whose plans it may read"
            )
        if "plans:write" in self.scopes and (self.team is None or self.user is None):
            raise ValueError(
                f"api token {self.name}: set team (the workspace ID, T…) and user (the Slack "
                "user ID, U… or W…) its plans are requested as: approvals bind to that "
                "workspace and that user may not approve them"
            )
        return self


class ApiRules(_Closed):
    """Who may use the HTTP API (``/api/v1/…``). No tokens: every request is refused."""

    tokens: list[ApiToken] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _distinct(self) -> ApiRules:
        for label, values in (
            ("name", [t.name for t in self.tokens]),
            ("sha256", [t.sha256 for t in self.tokens]),
        ):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"api tokens: {label} {repeated[0]} is used twice")
        return self


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
    rate_limits: RateLimits = RateLimits()
    deploys: Deploys = Deploys()
    # Who may call the HTTP API. Excluded from dumps, so neither from the digest (a new or
    # rotated token voids no approval) nor from the rules sent to workflows and verifiers.
    api: ApiRules = Field(default_factory=lambda: ApiRules(), exclude=True)
    # Folder of conftest-style Rego policies, relative to the constitution file.
    policies_dir: str | None = None
    _policy_sources: dict[str, str] = PrivateAttr(default_factory=dict)
    _source_text: str = PrivateAttr(default="")
    _published: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _consistent(self) -> Constitution:
        for repo in self.repos:
            unknown = set(repo.environments) - set(self.environments)
            if unknown:
                raise ValueError(f"repo {repo.name} names unknown environments {sorted(unknown)}")
        if self.default_repo and self.default_repo not in {r.name for r in self.repos}:
            raise ValueError(f"default_repo {self.default_repo} is not in repos")
        for freeze in self.deploys.freezes:
            unknown = set(freeze.environments) - set(self.environments)
            if unknown:
                raise ValueError(f"freeze {freeze.id} names unknown environments {sorted(unknown)}")
        if self.default_environment not in self.environments:
            raise ValueError(f"default_environment {self.default_environment} is not defined")
        return self

    def bundle(self) -> dict[str, Any]:
        """The rules as published for verifiers: the YAML, its policies and the digest."""
        return {
            "version": self.version,
            "digest": self.digest_hex,
            "yaml": self._published_text(),
            "policies": dict(self._policy_sources),
        }

    def _published_text(self) -> str:
        """The source without its ``api:`` section: who holds API tokens (and their
        digests) is nobody else's business, and the digest does not cover it anyway.
        Where cutting the section out would change anything else, the rules are published
        as JSON instead (which is YAML too)."""
        if self._published is None:
            self._published = self._without_api()
        return self._published

    def _without_api(self) -> str:
        if "api" not in (yaml.safe_load(self._source_text) or {}):
            return self._source_text
        kept, inside = [], False
        for line in self._source_text.splitlines(keepends=True):
            if line[:1] not in ("", " ", "\t", "\r", "\n", "#"):
                inside = line.startswith("api:")
            if not inside:
                kept.append(line)
        text = "".join(kept)
        try:
            same = parse_constitution(text).model_dump() == self.model_dump()
            data = yaml.safe_load(text)
        except (ConstitutionError, yaml.YAMLError):
            same, data = False, None
        if same and isinstance(data, dict) and "api" not in data:
            return text
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)

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
