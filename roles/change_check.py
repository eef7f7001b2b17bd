"""Δ on what was produced: a generated change checked against its plan and the constitution.

Pure. The change is what GitHub's compare API reports between the plan's base commit
and the commit the implementer pushed (``bot/github_gateway.compare``): its files, with
status, added and deleted line counts and the per-file patch. :func:`check_change`
refuses it when

- it is not a clean descendant of the base, is empty, or the plan asked for no change;
- GitHub could not show all of it: a comparison lists at most 300 files, and a file's
  ``patch`` is missing when it is binary or too large. What Δ cannot read, it refuses;
- a file is outside the plan's declared scope (the ``files`` input of its change steps,
  when given) or matches the repo's ``forbidden_paths`` (for a rename, either name);
- it is larger than the repo's ``change_limits`` (files, added + deleted lines);
- an added line matches one of the constitution's ``forbidden`` patterns;
- a Rego policy denies it: policies see the plan as at planning time plus ``change``.

:func:`deploy_allowed` is the rule for what a generated change needs before each
environment: always Δ's check, and where the environment asks for review
(``change_requirement() == "reviewed"``, the default for protected environments) a sha
on the default branch or a diff approved on a second card.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from roles import policies
from roles.canonical import sha256_digest
from roles.constitution import Constitution, EnvironmentRule, RepoRule
from roles.plan import Action, Plan, RuleHit

# Steps that change the repository's contents (what an implementer writes).
CHANGE_ACTIONS = frozenset(
    {
        Action.CODE_CHANGE,
        Action.CONFIG_CHANGE,
        Action.DEPENDENCY_UPDATE,
        Action.FEATURE_FLAG,
        Action.DB_MIGRATION,
    }
)
# What a dependency_update step may touch even when other steps declare their files.
DEPENDENCY_FILES = (
    "**/package.json",
    "**/package-lock.json",
    "**/npm-shrinkwrap.json",
    "**/yarn.lock",
    "**/pnpm-lock.yaml",
    "**/requirements*.txt",
    "**/requirements*.in",
    "**/pyproject.toml",
    "**/poetry.lock",
    "**/uv.lock",
    "**/Pipfile",
    "**/Pipfile.lock",
    "**/setup.cfg",
    "**/Cargo.toml",
    "**/Cargo.lock",
    "**/go.mod",
    "**/go.sum",
    "**/Gemfile",
    "**/Gemfile.lock",
    "**/composer.json",
    "**/composer.lock",
)
# GitHub lists at most this many files of a comparison, on its first page only: "The list
# of changed files is only shown on the first page of results, and it includes up to 300
# changed files for the entire comparison."
# (https://docs.github.com/en/rest/commits/commits#compare-two-commits)
GITHUB_MAX_FILES = 300
FileStatus = Literal["added", "removed", "modified", "renamed", "copied", "changed", "unchanged"]
CompareStatus = Literal["ahead", "behind", "identical", "diverged"]
# The empty blob (git's SHA-1 and SHA-256 object names): an empty file has no diff to read.
EMPTY_BLOBS = frozenset(
    {
        "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391",
        "473a0f4c3be8a93681a267e3b1e9a7dcda1185436fe141f7749120a303721813",
    }
)
_LISTED = 5  # paths named in one reason; the rest are counted
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")
_SPLIT = re.compile(r"[,;\s]+")
_GLOB_CHARS = re.compile(r"[*?\[]")


# -- the change -------------------------------------------------------------------


@dataclass(frozen=True)
class ChangedFile:
    """One file of a comparison, as GitHub's compare API lists it."""

    path: str
    status: str  # added | removed | modified | renamed | copied | changed | unchanged
    additions: int
    deletions: int
    # The unified diff hunks of this file; None when GitHub sent none (binary, too large).
    patch: str | None
    previous_path: str | None = None  # renamed / copied from
    blob_sha: str | None = None  # the file's git blob after the change (GitHub's ``sha``)

    def added_lines(self) -> list[tuple[int, str]]:
        """(line number in the new file, text) of each added line of the patch."""
        return [(n, text) for n, sign, text in _patch_lines(self.patch or "") if sign == "+"]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "additions": self.additions,
            "deletions": self.deletions,
            "patch": self.patch,
            "previous_path": self.previous_path,
            "blob_sha": self.blob_sha,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ChangedFile:
        patch = doc.get("patch")
        previous = doc.get("previous_path")
        blob = doc.get("blob_sha")
        return cls(
            path=str(doc["path"]),
            status=str(doc["status"]),
            additions=int(doc["additions"]),
            deletions=int(doc["deletions"]),
            patch=None if patch is None else str(patch),
            previous_path=None if previous is None else str(previous),
            blob_sha=None if blob is None else str(blob),
        )


@dataclass(frozen=True)
class Change:
    """What a commit changed relative to the plan's base commit."""

    repo: str
    base_sha: str
    head_sha: str
    files: tuple[ChangedFile, ...]
    # GitHub's compare status of head against base: only "ahead" (head descends from base)
    # and "identical" describe a change made on top of the base.
    status: str = "ahead"
    # GitHub listed its maximum number of files: there may be more than ``files``.
    truncated: bool = False

    @property
    def additions(self) -> int:
        return sum(f.additions for f in self.files)

    @property
    def deletions(self) -> int:
        return sum(f.deletions for f in self.files)

    def stat(self) -> dict[str, int]:
        return {"files": len(self.files), "additions": self.additions, "deletions": self.deletions}

    def unified_patch(self) -> str:
        """The whole change as one unified diff (git's headers, GitHub's hunks)."""
        parts = []
        for f in self.files:
            old = f.previous_path or f.path
            before = "/dev/null" if f.status == "added" else f"a/{old}"
            after = "/dev/null" if f.status == "removed" else f"b/{f.path}"
            parts.append(f"diff --git a/{old} b/{f.path}\n--- {before}\n+++ {after}\n")
            if f.patch:
                parts.append(f.patch if f.patch.endswith("\n") else f.patch + "\n")
        return "".join(parts)

    def digest(self) -> str:
        """sha256 of the change as checked (RFC 8785 JSON): what a second card approves."""
        return sha256_digest(
            {
                "repo": self.repo,
                "base": self.base_sha,
                "head": self.head_sha,
                "files": [f.to_json() for f in self.files],
            }
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "base_sha": self.base_sha,
            "head_sha": self.head_sha,
            "status": self.status,
            "truncated": self.truncated,
            "files": [f.to_json() for f in self.files],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Change:
        return cls(
            repo=str(doc["repo"]),
            base_sha=str(doc["base_sha"]),
            head_sha=str(doc["head_sha"]),
            status=str(doc.get("status", "ahead")),
            truncated=bool(doc.get("truncated", False)),
            files=tuple(ChangedFile.from_json(f) for f in doc["files"]),
        )


def _patch_lines(patch: str) -> Iterable[tuple[int, str, str]]:
    """(new-file line number, sign, text) for each +/- line of the hunks in ``patch``.

    Anything before the first ``@@`` hunk header is ignored (GitHub's per-file patch has
    none); ``\\ No newline at end of file`` is not a line.
    """
    line: int | None = None
    for raw in patch.split("\n"):
        header = _HUNK.match(raw)
        if header:
            line = int(header.group(1))
            continue
        if line is None or raw.startswith("\\"):
            continue
        if raw.startswith("+"):
            yield line, "+", raw[1:]
            line += 1
        elif raw.startswith("-"):
            yield line, "-", raw[1:]
        else:
            line += 1


# -- paths ------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _glob(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """A path glob as a regex: ``**/`` any directories (or none), ``**`` anything,
    ``*`` and ``?`` within one path segment, ``[...]`` a character class."""
    p = pattern.strip().lstrip("/")
    out: list[str] = []
    i = 0
    while i < len(p):
        if p.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif p.startswith("**", i):
            out.append(".*")
            i += 2
        elif p[i] == "*":
            out.append("[^/]*")
            i += 1
        elif p[i] == "?":
            out.append("[^/]")
            i += 1
        elif p[i] == "[" and "]" in p[i + 2 :]:
            end = p.index("]", i + 2)
            body = p[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(p[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.IGNORECASE if ignore_case else 0)


def path_matches(path: str, pattern: str, ignore_case: bool = False) -> bool:
    """Whether a repository path matches a glob (``src/**``, ``**/*.pem``, ``.env``)."""
    return _glob(pattern, ignore_case).match(path) is not None


def forbidden_path(path: str, patterns: Sequence[str]) -> str | None:
    """The first of ``patterns`` (a repo's ``forbidden_paths``) that ``path`` matches.

    Matched without regard to case, so ``.GitHub/Workflows/x.yml`` is refused as well.
    """
    return next((p for p in patterns if path_matches(path, p, ignore_case=True)), None)


def _bad_path(path: str) -> str | None:
    if not path or path.startswith("/") or "\\" in path:
        return "is not a relative repository path"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "has an empty, '.' or '..' segment"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "has control characters"
    return None


def declared_scope(plan: Plan) -> list[str] | None:
    """The paths the plan's change steps declare (``files`` inputs), or None when none do.

    An entry without wildcards names a file or a folder (and everything under it). A
    dependency_update step adds the usual manifests and lock files.
    """
    declared: list[str] = []
    for step in plan.steps:
        if step.action in CHANGE_ACTIONS and step.inputs.get("files", "").strip():
            for entry in _SPLIT.split(step.inputs["files"].strip()):
                entry = entry.strip().lstrip("/")
                if not entry:
                    continue
                if _GLOB_CHARS.search(entry):
                    declared.append(entry)
                else:
                    declared += [entry.rstrip("/"), entry.rstrip("/") + "/**"]
    if not declared:
        return None
    if any(s.action == Action.DEPENDENCY_UPDATE for s in plan.steps):
        declared += DEPENDENCY_FILES
    return declared


def change_steps(plan: Plan) -> list[str]:
    """Ids of the plan's steps that change the repository (what an implementer does)."""
    return [s.id for s in plan.steps if s.action in CHANGE_ACTIONS]


# -- the verdict ------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeVerdict:
    denials: list[RuleHit] = field(default_factory=list)
    warnings: list[RuleHit] = field(default_factory=list)
    # What the environment asks of a generated change before it deploys there.
    requirement: Literal["checked", "reviewed"] = "checked"

    @property
    def allowed(self) -> bool:
        return not self.denials

    @property
    def reason(self) -> str:
        """The denials in one line (for the thread); "" when the change passes."""
        return "; ".join(h.message for h in self.denials)


def _hit(rule_id: str, message: str, effect: Literal["deny", "warn"] = "deny") -> RuleHit:
    return RuleHit(id=rule_id, message=message[:480], effect=effect)


def _listed(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:_LISTED])
    more = len(paths) - _LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def plan_input(plan: Plan, constitution: Constitution) -> dict[str, Any]:
    """What Rego policies saw of this plan at planning time (``diff_engine.policy_input``),
    rebuilt from the plan document."""
    return {
        "apiVersion": "sophie/v1",
        "directive": plan.directive,
        "intent": plan.interpretation.intent.value,
        "summary": plan.interpretation.summary,
        "target": {
            "repo": plan.target.repo,
            "environment": plan.target.environment,
            "ref": plan.target.ref,
            "workflow": plan.target.workflow,
        },
        "steps": [
            {"action": s.action.value, "description": s.description, "inputs": dict(s.inputs)}
            for s in plan.steps
        ],
        "artifacts": list(plan.artifacts),
        "risk": plan.risk.model_dump(mode="json"),
        "rollback": {"strategy": plan.rollback.strategy, "description": plan.rollback.description},
        "approval": plan.approval.model_dump(mode="json"),
        "constitution": {"version": constitution.version},
    }


def change_input(change: Change) -> dict[str, Any]:
    """``input.change`` for Rego policies: files (with their patch and added lines),
    totals, and the whole change as one unified diff."""
    return {
        "repo": change.repo,
        "base": change.base_sha,
        "head": change.head_sha,
        "files": [
            {
                "path": f.path,
                "previous_path": f.previous_path,
                "status": f.status,
                "additions": f.additions,
                "deletions": f.deletions,
                "patch": f.patch or "",
                "added": [text for _, text in f.added_lines()],
            }
            for f in change.files
        ],
        "additions": change.additions,
        "deletions": change.deletions,
        "patch": change.unified_patch(),
    }


def policy_document(plan: Plan, constitution: Constitution, change: Change) -> dict[str, Any]:
    return {**plan_input(plan, constitution), "change": change_input(change)}


def _shape(plan: Plan, repo_rule: RepoRule, change: Change) -> list[RuleHit]:
    """Is this a change Δ can read, made on top of the plan's base, that the plan asked for?"""
    hits: list[RuleHit] = []
    if change.repo != plan.target.repo or repo_rule.name != plan.target.repo:
        hits.append(
            _hit(
                "change.repo",
                f"The change is in {change.repo}, but the plan targets {plan.target.repo}",
            )
        )
    if change.status not in ("ahead", "identical"):
        hits.append(
            _hit(
                "change.not-on-base",
                f"Commit {change.head_sha[:12]} is not built on the plan's base "
                f"{change.base_sha[:12]} (GitHub: {change.status})",
            )
        )
    if not change_steps(plan):
        if change.files:
            hits.append(
                _hit(
                    "change.not-planned",
                    f"The plan has no change steps, yet the commit changes "
                    f"{_plural(len(change.files), 'file')}",
                )
            )
    elif not change.files and not change.truncated:
        hits.append(_hit("change.empty", "The commit changes nothing: no step was implemented"))
    if change.truncated or len(change.files) >= GITHUB_MAX_FILES:
        hits.append(
            _hit(
                "change.too-large",
                f"GitHub lists at most {GITHUB_MAX_FILES} files of a comparison and this one "
                "reaches it: too large to check",
            )
        )
    unreadable, miscounted, odd = [], [], []
    for f in change.files:
        if _bad_path(f.path) or (f.previous_path is not None and _bad_path(f.previous_path)):
            odd.append(f.path)
        if f.patch is None:
            # Only a deleted or an empty file may come without a diff: nothing to read.
            if f.status != "removed" and f.blob_sha not in EMPTY_BLOBS:
                unreadable.append(f.path)
            continue
        signs = [sign for _, sign, _ in _patch_lines(f.patch)]
        if (signs.count("+"), signs.count("-")) != (f.additions, f.deletions):
            miscounted.append(f.path)
    if odd:
        hits.append(_hit("change.bad-path", f"Unusable file paths in the change: {_listed(odd)}"))
    if unreadable:
        hits.append(
            _hit(
                "change.unreadable",
                f"GitHub sent no diff for {_listed(unreadable)} (binary or too large): "
                "SOPHIE cannot check what it cannot read",
            )
        )
    if miscounted:
        hits.append(
            _hit(
                "change.patch-incomplete",
                f"The diff of {_listed(miscounted)} does not add up to GitHub's line counts",
            )
        )
    return hits


def _paths(plan: Plan, repo_rule: RepoRule, change: Change) -> list[RuleHit]:
    hits: list[RuleHit] = []
    forbidden: list[str] = []
    rules: list[str] = []
    outside: list[str] = []
    scope = declared_scope(plan)
    for f in change.files:
        names = [f.path] + ([f.previous_path] if f.previous_path else [])
        for name in names:
            rule = forbidden_path(name, repo_rule.forbidden_paths)
            if rule is not None:
                forbidden.append(name)
                rules.append(rule)
            elif scope is not None and not any(path_matches(name, g) for g in scope):
                outside.append(name)
    if forbidden:
        hits.append(
            _hit(
                "change.forbidden-path",
                f"The change touches {_listed(forbidden)}, which no implementer may touch "
                f"(forbidden_paths: {', '.join(dict.fromkeys(rules))})",
            )
        )
    if outside:
        declared = [g for g in scope or [] if not g.endswith("/**")][:_LISTED]
        hits.append(
            _hit(
                "change.out-of-scope",
                f"{_plural(len(outside), 'file')} outside the plan's declared files "
                f"({', '.join(declared)}): {_listed(outside)}",
            )
        )
    return hits


def _size(repo_rule: RepoRule, change: Change) -> list[RuleHit]:
    limits = repo_rule.change_limits
    hits: list[RuleHit] = []
    if len(change.files) > limits.max_files:
        hits.append(
            _hit(
                "change.too-many-files",
                f"The change touches {len(change.files)} files; the limit for "
                f"{repo_rule.name} is {limits.max_files}",
            )
        )
    lines = change.additions + change.deletions
    if lines > limits.max_lines:
        hits.append(
            _hit(
                "change.too-many-lines",
                f"The change adds and deletes {lines} lines; the limit for "
                f"{repo_rule.name} is {limits.max_lines}",
            )
        )
    return hits


def _forbidden_text(constitution: Constitution, change: Change) -> list[RuleHit]:
    """The constitution's forbidden patterns, on every added line (first hit per rule)."""
    hits: list[RuleHit] = []
    for rule in constitution.forbidden:
        pattern = re.compile(rule.pattern, re.IGNORECASE)
        where = next(
            (
                f"{f.path}:{n}"
                for f in change.files
                for n, text in f.added_lines()
                if pattern.search(text)
            ),
            None,
        )
        if where is not None:
            hits.append(
                _hit(f"forbidden.{rule.id}", f"{where} adds forbidden text: {rule.message}")
            )
    return hits


def _policies(
    plan: Plan, constitution: Constitution, change: Change
) -> tuple[list[RuleHit], list[RuleHit]]:
    try:
        result = policies.evaluate(
            constitution.policy_sources, policy_document(plan, constitution, change)
        )
    except policies.PolicyError as exc:
        # A policy that cannot run must not let a change through unchecked.
        return [_hit("policy.error", str(exc)[:300])], []
    # Warnings the plan already carries (shown on its card) are not news about the change.
    seen = {(w.id, w.message) for w in plan.warnings}
    warnings = [w for w in result.warnings if (w.id, w.message) not in seen]
    return list(result.denials), warnings


def check_change(
    plan: Plan,
    repo_rule: RepoRule,
    environment_rule: EnvironmentRule,
    constitution: Constitution,
    change: Change,
) -> ChangeVerdict:
    """Δ's verdict on a produced change: every rule that refuses it, and its warnings."""
    denials = _shape(plan, repo_rule, change)
    denials += _paths(plan, repo_rule, change)
    oversize = _size(repo_rule, change)
    denials += oversize
    warnings: list[RuleHit] = []
    if not oversize and not any(h.id == "change.too-large" for h in denials):
        # Text rules read every added line; policies get the whole diff as input. Both
        # only on a change within the size limits (a larger one is refused already).
        denials += _forbidden_text(constitution, change)
        policy_denials, warnings = _policies(plan, constitution, change)
        denials += policy_denials
    return ChangeVerdict(
        denials=denials,
        warnings=warnings,
        requirement=environment_rule.change_requirement(),
    )


# -- production only from reviewed code -------------------------------------------


@dataclass(frozen=True)
class ChangeStatus:
    """What is known about the sha a generated change produced, at deploy time."""

    checked: bool  # Δ checked its diff and signed the change statement
    on_default_branch: bool  # GitHub: default_ref...sha is "behind" or "identical"
    diff_approved: bool  # its change digest was approved on a second card


def deploy_allowed(environment_rule: EnvironmentRule, status: ChangeStatus) -> str | None:
    """None when the generated change may deploy to this environment; otherwise why not.

    Every environment needs Δ's check; one whose ``change_requirement()`` is "reviewed"
    (by default the protected ones) also needs the sha merged into the default branch
    (after the pull request's review) or its diff approved on a second card.
    """
    if not status.checked:
        return "SOPHIE has not checked this change: nothing built from it deploys"
    if environment_rule.change_requirement() == "checked":
        return None
    if status.on_default_branch or status.diff_approved:
        return None
    return (
        "this environment deploys only reviewed code: approve the diff on the card below, or "
        "review and merge the pull request and ask again to deploy the default branch"
    )


def branch_for(plan_id: str) -> str:
    """The branch a plan's change is implemented on."""
    return f"sophie/{plan_id}"


def report_problem(plan_id: str, branch: str, base: str, run_head: str | None) -> str | None:
    """Why an implement job's own account of its change cannot be used, or None.

    The branch is the plan's, and the base is the commit GitHub says the implement run
    started from (a job that names another base would have Δ read a smaller diff).
    """
    if branch != branch_for(plan_id):
        return f"the change was reported on {branch[:100]!r}, not on {branch_for(plan_id)}"
    if run_head and base != run_head:
        return (
            f"the change is built on {base[:12]}, not on {run_head[:12]} "
            "where the implement run started"
        )
    return None
