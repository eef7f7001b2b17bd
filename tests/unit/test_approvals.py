"""Table tests for roles.approvals: who may decide, and what signed decisions add up to.

Every row is one attempt, as a person or a forger would make it; the expected
answer is None/complete for the legitimate ones and a reason for the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nacl.signing import SigningKey

from bot.signer import KeyRing
from roles import approvals
from roles.approvals import Act
from roles.attestation import decision_statement, sign_statement
from roles.constitution import Constitution, parse_constitution
from roles.plan import Plan
from roles.records import Actor, Decision, DecisionRecord

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TEAM, OTHER_TEAM = "T0SOPHIE01", "T0EVILCORP"
ORG, OTHER_ORG = "E0ACMEORG1", "E0EVILORG1"
ALICE, BOB, CAROL = "U0ALICE001", "U0BOBBY002", "U0CAROL003"
DAVE = "U0DAVE0004"  # requests, is not an approver
MALLORY = "U0MALLORY9"  # no role at all
ERIN = "U0ERIN0005"  # an approver through the SRE group only
FRANK = "U0FRANK006"  # an approver through the security group only
SRE, SEC = "S0SRETEAM1", "S0SECURITY1"

CONSTITUTION = f"""
apiVersion: sophie/v1
kind: Constitution
version: 1
approvers:
  users: [{ALICE}, {BOB}, {CAROL}]
  groups: [{SRE}, {SEC}]
environments:
  development: {{approval: notification}}
  staging: {{approval: approval}}
  production:
    approval: supervision
    quorum: 2
    distinct_groups: [{SRE}, {SEC}]
    rollback_by: {{users: [{CAROL}]}}
default_environment: staging
repos:
  - name: acme/auth-service
    workflow: sophie-pipeline.yml
    environments: [development, staging, production]
    artifacts: [docker, deb]
"""


@pytest.fixture(scope="module")
def rules() -> Constitution:
    return parse_constitution(CONSTITUTION)


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing(SigningKey.generate(), {})


def make_plan(
    rules: Constitution,
    level: str = "approval",
    environment: str = "staging",
    quorum: int | None = None,
    groups: tuple[str, ...] = (),
    requester: str = DAVE,
    team: str = TEAM,
    enterprise: str = "",
    directive: str = "deploy auth",
    constitution_digest: str | None = None,
) -> Plan:
    default_quorum = {"supervision": 2, "approval": 1}.get(level, 0)
    return Plan.model_validate(
        {
            "id": "plan_abcdef12",
            "created_at": NOW - timedelta(minutes=10),
            "directive": directive,
            "requester": {"team_id": team, "user_id": requester, "enterprise_id": enterprise},
            "interpretation": {"intent": "deploy", "summary": "Deploy the auth service"},
            "target": {
                "repo": "acme/auth-service",
                "ref": "main",
                "environment": environment,
                "workflow": "sophie-pipeline.yml",
            },
            "steps": [{"id": "deploy", "action": "deploy", "description": "Deploy it"}],
            "artifacts": ["docker"],
            "risk": {"level": "low", "score": 0.1},
            "rollback": {"strategy": "redeploy_previous", "description": "Redeploy"},
            "confidence": 0.9,
            "approval": {
                "level": level,
                "quorum": default_quorum if quorum is None else quorum,
                "ttl_seconds": 3600,
                "distinct_groups": list(groups),
            },
            "provenance": {"planner": "offline"},
            "constitution": {
                "version": 1,
                "digest": constitution_digest or rules.digest_hex,
            },
        }
    )


def person(user: str, team: str = TEAM, enterprise: str = "") -> Actor:
    return Actor(team_id=team, user_id=user, name=user.lower(), enterprise_id=enterprise)


def bot(ring: KeyRing) -> Actor:
    return Actor(team_id=approvals.BOT_TEAM, user_id=f"sophie:{ring.keyid}", name="SOPHIE")


Edit = Callable[[dict[str, Any]], None]


def signed(
    plan: Plan,
    rules: Constitution,
    signer: KeyRing,
    actor: Actor,
    decision: Decision = "approve",
    groups: tuple[str, ...] = (),
    at: datetime = NOW - timedelta(minutes=5),
    ttl: timedelta = timedelta(hours=1),
    edit: Edit | None = None,
) -> DecisionRecord:
    """A decision as the bot signs it; ``edit`` changes the statement before signing."""
    statement = decision_statement(plan, actor, decision, at, ttl, rules.digest_hex, groups=groups)
    if edit is not None:
        edit(statement)
    return DecisionRecord(
        actor=actor,
        decision=decision,
        at=at,
        groups=groups,
        envelope=sign_statement(statement, signer),
    )


def predicate(**changes: Any) -> Edit:
    def edit(statement: dict[str, Any]) -> None:
        statement["predicate"].update(changes)

    return edit


def drop_approver(statement: dict[str, Any]) -> None:
    del statement["predicate"]["approver"]


# --- may_decide -------------------------------------------------------------------------


@dataclass(frozen=True)
class May:
    name: str
    actor: Actor
    act: Act
    expect: str | None  # a fragment of the refusal, or None when allowed
    groups: frozenset[str] = frozenset()
    requester: str = DAVE
    environment: str = "staging"
    plan_enterprise: str = ""
    decided: tuple[str, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


MAY = [
    May("named approver approves", person(ALICE), "approve", None),
    May("named approver vetoes", person(BOB), "veto", None),
    May("group approver approves", person(ERIN), "approve", None, frozenset({SRE})),
    May("group member outside any approver group", person(ERIN), "approve", "not an approver"),
    May("stranger approves", person(MALLORY), "approve", "not an approver"),
    May("stranger vetoes", person(MALLORY), "veto", "not an approver"),
    May(
        "requester approves their own plan",
        person(ALICE),
        "approve",
        "separation of duties",
        requester=ALICE,
    ),
    May(
        "requester who is an approver vetoes own plan", person(ALICE), "veto", None, requester=ALICE
    ),
    May("already decided", person(ALICE), "approve", "already decided", decided=(ALICE,)),
    May("someone else decided", person(BOB), "approve", None, decided=(ALICE,)),
    May("other workspace", person(ALICE, OTHER_TEAM), "approve", "another Slack workspace"),
    May("empty workspace", person(ALICE, ""), "approve", "another Slack workspace"),
    May(
        "other enterprise org",
        person(ALICE, TEAM, OTHER_ORG),
        "approve",
        "another Slack workspace",
        plan_enterprise=ORG,
    ),
    May(
        "no enterprise where the directive had one",
        person(ALICE, TEAM, ""),
        "approve",
        "another Slack workspace",
        plan_enterprise=ORG,
    ),
    May("same enterprise org", person(ALICE, TEAM, ORG), "approve", None, plan_enterprise=ORG),
    May("bot actor", Actor(approvals.BOT_TEAM, "sophie:abc"), "approve", "bot"),
    May("bot actor in the requester's team", Actor(TEAM, "sophie:abc"), "approve", "bot"),
    May("no user at all", person(""), "approve", "no Slack user"),
    May("rollback by an approver (default rule)", person(ALICE), "rollback", None),
    May(
        "rollback by a group approver (default rule)",
        person(ERIN),
        "rollback",
        None,
        frozenset({SRE}),
    ),
    May("rollback by a stranger (default rule)", person(MALLORY), "rollback", "may not roll back"),
    May("rollback by the requester (default rule)", person(DAVE), "rollback", "may not roll back"),
    May(
        "rollback by rollback_by user",
        person(CAROL),
        "rollback",
        None,
        environment="production",
    ),
    May(
        "rollback by an approver not in rollback_by",
        person(ALICE),
        "rollback",
        "may not roll back production",
        environment="production",
    ),
    May(
        "rollback by rollback_by user from another workspace",
        person(CAROL, OTHER_TEAM),
        "rollback",
        "another Slack workspace",
        environment="production",
    ),
    May("requester asks for changes", person(DAVE), "request_changes", None),
    May(
        "requester asks for changes after deciding",
        person(DAVE),
        "request_changes",
        None,
        decided=(DAVE,),
    ),
    May("stranger asks for changes", person(MALLORY), "request_changes", "not an approver"),
    May("approver asks for changes", person(BOB), "request_changes", None),
    May(
        "requester asks from another workspace",
        person(DAVE, OTHER_TEAM),
        "request_changes",
        "another Slack workspace",
    ),
]


@pytest.mark.parametrize("row", MAY, ids=[r.name for r in MAY])
def test_may_decide(row: May, rules: Constitution) -> None:
    level = "supervision" if row.environment == "production" else "approval"
    plan = make_plan(
        rules,
        level=level,
        environment=row.environment,
        requester=row.requester,
        enterprise=row.plan_enterprise,
    )
    decisions = [
        DecisionRecord(actor=person(u), decision="approve", at=NOW, envelope={})
        for u in row.decided
    ]
    why = approvals.may_decide(rules, plan, decisions, row.actor, set(row.groups), row.act)
    if row.expect is None:
        assert why is None, why
    else:
        assert why is not None and row.expect in why, why


# --- tally ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Given:
    """One decision in a tally row: who, what, with which signed groups, how forged."""

    actor: Actor
    decision: Decision = "approve"
    groups: tuple[str, ...] = ()
    edit: Edit | None = None
    ttl: timedelta = timedelta(hours=1)
    other_key: bool = False  # signed with a key the verifier does not know
    other_plan: bool = False  # an envelope for another plan (another digest)
    bot: bool = False  # the bot's own decision (actor ignored)
    retired_key: bool = False  # signed with a known but different key than it claims


@dataclass(frozen=True)
class Row:
    name: str
    level: str
    given: tuple[Given, ...]
    complete: bool
    reason: str = ""  # a fragment of Tally.reason when incomplete
    environment: str = "staging"
    groups: tuple[str, ...] = ()
    quorum: int | None = None
    requester: str = DAVE
    now: datetime = NOW
    stale_constitution: bool = False


A, B, C = Given(person(ALICE)), Given(person(BOB)), Given(person(CAROL))
E = Given(person(ERIN), groups=(SRE,))
F = Given(person(FRANK), groups=(SEC,))
BOT = Given(person(""), bot=True)


def sup(name: str, given: tuple[Given, ...], complete: bool, reason: str = "") -> Row:
    """Production: supervision, quorum 2, one approver from each of SRE and security."""
    return Row(name, "supervision", given, complete, reason, "production", (SRE, SEC))


TALLY = [
    # Each level, as it should work.
    Row("autonomous, signed by the bot", "autonomous", (BOT,), True),
    Row("autonomous without any decision", "autonomous", (), False, "no signed decision"),
    Row(
        "notification, bot after the window",
        "notification",
        (BOT,),
        True,
        environment="development",
    ),
    Row("notification, vetoed", "notification", (Given(person(BOB), "veto"),), False, "vetoed"),
    Row("approval, one approver", "approval", (A,), True),
    Row("approval, nobody yet", "approval", (), False, "1 more approver"),
    Row("approval, the bot does not count", "approval", (BOT,), False, "1 more approver"),
    Row("approval, group approver", "approval", (E,), True),
    sup("supervision, one of two", (E,), False, "1 more approver"),
    sup("supervision, two from distinct groups", (E, F), True),
    sup("supervision, two named but no groups", (A, B), False, f"an approver from group {SRE}"),
    sup(
        "supervision, same group twice",
        (E, Given(person(ALICE), groups=(SRE,))),
        False,
        f"group {SEC}",
    ),
    sup(
        "supervision, one approver in both groups and one in one",
        (Given(person(ALICE), groups=(SRE, SEC)), E),
        True,
    ),
    Row("supervision, no groups asked", "supervision", (A, B), True, environment="production"),
    Row(
        "supervision, an edited quorum of 1 still needs 2",
        "supervision",
        (A,),
        False,
        "1 more approver",
        environment="production",
        quorum=1,
    ),
    Row(
        "approval, an edited quorum of 0 still needs 1",
        "approval",
        (),
        False,
        "1 more approver",
        quorum=0,
    ),
    # Forgeries and stale envelopes.
    Row(
        "envelope over another plan's digest",
        "approval",
        (Given(person(ALICE), other_plan=True),),
        False,
        "plan changed",
    ),
    Row(
        "signed for another plan id",
        "approval",
        (Given(person(ALICE), edit=predicate(planId="plan_zzzzzzzz")),),
        False,
        "another plan",
    ),
    Row(
        "another repo",
        "approval",
        (Given(person(ALICE), edit=predicate(repo="acme/web-frontend")),),
        False,
        "target changed",
    ),
    Row(
        "another environment",
        "approval",
        (Given(person(ALICE), edit=predicate(environment="production")),),
        False,
        "target changed",
    ),
    Row(
        "another ref",
        "approval",
        (Given(person(ALICE), edit=predicate(ref="evil")),),
        False,
        "target changed",
    ),
    Row(
        "another workflow",
        "approval",
        (Given(person(ALICE), edit=predicate(workflow="x.yml")),),
        False,
        "target changed",
    ),
    Row(
        "another action",
        "approval",
        (Given(person(ALICE), edit=predicate(action="rollback")),),
        False,
        "what runs changed",
    ),
    Row(
        "another sha",
        "approval",
        (Given(person(ALICE), edit=predicate(sha="a" * 40)),),
        False,
        "what runs changed",
    ),
    Row(
        "other artifacts",
        "approval",
        (Given(person(ALICE), edit=predicate(artifacts=["docker", "deb"])),),
        False,
        "what runs changed",
    ),
    Row(
        "another constitution digest",
        "approval",
        (Given(person(ALICE), edit=predicate(constitutionDigest="0" * 64)),),
        False,
        "another constitution",
    ),
    Row(
        "expired approval",
        "approval",
        (Given(person(ALICE), ttl=timedelta(minutes=1)),),
        False,
        "expired",
    ),
    Row(
        "expiry without a timezone",
        "approval",
        (Given(person(ALICE), edit=predicate(expiresAt="2099-01-01T00:00:00")),),
        False,
        "no valid expiry",
    ),
    Row(
        "expiry that is not a date",
        "approval",
        (Given(person(ALICE), edit=predicate(expiresAt="soon")),),
        False,
        "no valid expiry",
    ),
    Row(
        "forged signature (unknown key)",
        "approval",
        (Given(person(ALICE), other_key=True),),
        False,
        "does not verify",
    ),
    sup("a veto among approvals", (E, Given(person(BOB), "veto"), F), False, "vetoed"),
    Row(
        "the same user twice",
        "supervision",
        (A, A),
        False,
        "approved twice",
        environment="production",
    ),
    Row(
        "approver from another workspace",
        "approval",
        (Given(person(ALICE, OTHER_TEAM)),),
        False,
        "another Slack workspace",
    ),
    Row(
        "signed for a person who is not an approver",
        "approval",
        (Given(person(MALLORY)),),
        False,
        "not an approver",
    ),
    Row(
        "signed groups the constitution does not name",
        "approval",
        (Given(person(MALLORY), groups=("S0NOTAGROUP",)),),
        False,
        "not an approver",
    ),
    Row(
        "the requester's own approval",
        "approval",
        (A,),
        False,
        "separation of duties",
        requester=ALICE,
    ),
    Row(
        "a decision that is neither approve nor veto",
        "approval",
        (Given(person(ALICE), edit=predicate(decision="maybe")),),
        False,
        "unknown decision",
    ),
    Row(
        "a decision without an approver",
        "approval",
        (Given(person(ALICE), edit=drop_approver),),
        False,
        "names no approver",
    ),
    Row(
        "a bot decision signed by another known key",
        "autonomous",
        (Given(person(""), bot=True, retired_key=True),),
        False,
        "another key",
    ),
    Row(
        "a bot decision in a person's team",
        "autonomous",
        (
            Given(
                person(""),
                bot=True,
                edit=predicate(approver={"teamId": TEAM, "userId": "sophie:x", "groups": []}),
            ),
        ),
        False,
        "another key",
    ),
    # The plan itself.
    Row(
        "the plan's time-to-live has passed",
        "approval",
        (A,),
        False,
        "time-to-live",
        now=NOW + timedelta(hours=2),
    ),
    Row(
        "the constitution changed since the plan",
        "approval",
        (A,),
        False,
        "constitution changed",
        stale_constitution=True,
    ),
]


@pytest.mark.parametrize("row", TALLY, ids=[r.name for r in TALLY])
def test_tally(row: Row, rules: Constitution, ring: KeyRing) -> None:
    plan = make_plan(
        rules,
        level=row.level,
        environment=row.environment,
        quorum=row.quorum,
        groups=row.groups,
        requester=row.requester,
        constitution_digest="f" * 64 if row.stale_constitution else None,
    )
    other_plan = make_plan(rules, level=row.level, directive="deploy auth, but another plan")
    stranger = KeyRing(SigningKey.generate(), {})
    retired = SigningKey.generate()
    verifier = KeyRing(ring.signing, {KeyRing(retired, {}).keyid: retired.verify_key})
    decisions = []
    for given in row.given:
        signer = ring
        if given.other_key:
            signer = stranger
        elif given.retired_key:
            signer = KeyRing(retired, {})
        decisions.append(
            signed(
                other_plan if given.other_plan else plan,
                rules,
                signer,
                bot(ring) if given.bot else given.actor,
                given.decision,
                given.groups,
                ttl=given.ttl,
                edit=given.edit,
            )
        )
    counted = approvals.tally(plan, decisions, rules, verifier, row.now)
    assert counted.complete is row.complete, counted.reason
    if not row.complete:
        assert row.reason in counted.reason, counted.reason


def test_a_malformed_envelope_is_refused_not_raised(rules: Constitution, ring: KeyRing) -> None:
    plan = make_plan(rules)
    good = signed(plan, rules, ring, person(ALICE))
    for envelope in ({}, {"payloadType": 1}, {**good.envelope, "signatures": "x"}):
        bad = DecisionRecord(person(ALICE), "approve", NOW, envelope)
        counted = approvals.tally(plan, [bad], rules, ring, NOW)
        assert not counted.complete and "does not verify" in counted.reason


def test_the_tally_names_who_approved_with_their_groups(rules: Constitution, ring: KeyRing) -> None:
    plan = make_plan(rules, "supervision", "production", groups=(SRE, SEC))
    decisions = [
        signed(plan, rules, ring, person(ERIN), groups=(SRE,)),
        signed(plan, rules, ring, person(FRANK), groups=(SEC,)),
    ]
    counted = approvals.tally(plan, decisions, rules, ring, NOW)
    assert counted.complete and counted.approvers == {ERIN: (SRE,), FRANK: (SEC,)}


@pytest.mark.parametrize(
    ("approvers", "groups", "missing"),
    [
        ([], [SRE, SEC], [SRE, SEC]),
        ([(SRE,)], [SRE, SEC], [SEC]),
        ([(SRE, SEC), (SRE,)], [SRE, SEC], []),  # a greedy count would miss this one
        ([(SRE, SEC)], [SRE, SEC], [SEC]),  # one person stands for one group only
        ([(SEC,), (SEC,)], [SRE, SEC], [SRE]),
        ([("S0OTHER01",)], [SRE], [SRE]),
    ],
)
def test_distinct_groups_are_a_matching(
    approvers: list[tuple[str, ...]], groups: list[str], missing: list[str], rules: Constitution
) -> None:
    plan = make_plan(rules, "supervision", "production", quorum=0, groups=tuple(groups))
    by_user = {f"U0PERSON{i:02d}": g for i, g in enumerate(approvers)}
    words = approvals.needed(plan, by_user)
    assert [w.removeprefix("an approver from group ") for w in words if "group" in w] == missing
