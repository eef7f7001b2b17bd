"""Table tests for App Home: who sees what, the headline figures, the view, and the binding
of a Home click to the viewer's own Home tab."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from handlers import home, home_blocks
from handlers.home import Viewer
from handlers.home_blocks import DeployLine, HomePage, SlotLine, TrustLine
from roles import memory
from roles.constitution import Constitution, parse_constitution
from roles.headline import Headline, headline
from roles.outcomes import Outcome
from roles.plan import Plan
from roles.records import Actor, DecisionRecord, DeployLock, PlanRecord, PlanStatus, Thread
from tests.fakes.blockkit import view_problems

ROOT = Path(__file__).resolve().parents[2]
TEAM, OTHER_TEAM = "T0SOPHIE01", "T0EVILCORP"
ALICE, BOB, CAROL = "U0ALICE001", "U0BOBBY002", "U0CAROL003"
DAVE, MALLORY, ERIN = "U0DAVE0004", "U0MALLORY9", "U0ERIN0005"
SRE = "S0SRETEAM1"
CHANNEL, PRIVATE, DM = "C0DEPLOYS1", "G0PRIVATE1", "D0DAVEDM01"
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
DAY = 86400.0


@pytest.fixture(scope="module")
def rules() -> Constitution:
    doc = yaml.safe_load((ROOT / "constitution.yml").read_text())
    doc.pop("policies_dir", None)
    return parse_constitution(yaml.safe_dump(doc))


def make_plan(
    rules: Constitution,
    n: int = 1,
    requester: str = DAVE,
    environment: str = "staging",
    level: str = "approval",
    summary: str = "Deploy the auth service",
) -> Plan:
    return Plan.model_validate(
        {
            "id": f"plan_{n:08d}",
            "created_at": NOW - timedelta(minutes=10),
            "directive": "deploy auth",
            "requester": {"team_id": TEAM, "user_id": requester},
            "interpretation": {"intent": "deploy", "summary": summary},
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
                "quorum": {"supervision": 2, "approval": 1}.get(level, 0),
                "ttl_seconds": 3600,
            },
            "provenance": {"planner": "offline"},
            "constitution": {"version": 1, "digest": rules.digest_hex},
        }
    )


def record(
    rules: Constitution,
    n: int = 1,
    channel: str = CHANNEL,
    status: PlanStatus = PlanStatus.PENDING,
    decided: tuple[str, ...] = (),
    **kw: Any,
) -> PlanRecord:
    decisions = [DecisionRecord(Actor(TEAM, who), "approve", NOW, {}) for who in decided]
    return PlanRecord(
        make_plan(rules, n, **kw), status, Thread(channel, "1700000000.000100"), "1.2", decisions
    )


def viewer(
    who: str,
    channels: tuple[str, ...] | None = (),
    team: str = TEAM,
    groups: tuple[str, ...] = (),
) -> Viewer:
    return Viewer(
        Actor(team, who), frozenset(groups), None if channels is None else frozenset(channels)
    )


def where(rules: Constitution, rec: PlanRecord, v: Viewer) -> str:
    shown = home.sections([rec], v, rules)
    for name in ("waiting", "mine", "others"):
        if getattr(shown, name):
            return name
    return "hidden"


# -- who sees what ------------------------------------------------------------------------

SECTION_ROWS: list[tuple[str, dict[str, Any], Viewer, str]] = [
    # (what, plan: channel, status, decided, requester, level), viewer, expected section
    ("an approver: a pending plan waits on them", {}, viewer(ALICE), "waiting"),
    ("an approver through a group", {}, viewer(ERIN, groups=(SRE,)), "waiting"),
    ("the requester: theirs", {}, viewer(DAVE), "mine"),
    (
        "the requester who is an approver: theirs, not to approve",
        {"requester": CAROL},
        viewer(CAROL),
        "mine",
    ),
    ("no role, in the channel", {}, viewer(MALLORY, (CHANNEL,)), "others"),
    ("no role, not in the channel", {}, viewer(MALLORY, (PRIVATE,)), "hidden"),
    ("no role, channels unknown", {}, viewer(MALLORY, None), "hidden"),
    (
        "a DM plan, even with the DM id among channels",
        {"channel": DM},
        viewer(MALLORY, (DM,)),
        "hidden",
    ),
    ("a DM plan waits on an approver", {"channel": DM}, viewer(ALICE), "waiting"),
    ("a DM plan, its requester", {"channel": DM}, viewer(DAVE), "mine"),
    ("another workspace, same user id", {}, viewer(ALICE, (CHANNEL,), team=OTHER_TEAM), "hidden"),
    (
        "approved: the approver who decided",
        {"status": PlanStatus.APPROVED, "decided": (ALICE,)},
        viewer(ALICE),
        "others",
    ),
    (
        "approved DM plan: another approver who did not decide",
        {"channel": DM, "status": PlanStatus.APPROVED, "decided": (ALICE,)},
        viewer(BOB),
        "hidden",
    ),
    (
        "supervision, already approved by them: not waiting",
        {"environment": "production", "level": "supervision", "decided": (ALICE,)},
        viewer(ALICE),
        "others",
    ),
    (
        "supervision, another approver still may",
        {"environment": "production", "level": "supervision", "decided": (ALICE,)},
        viewer(BOB),
        "waiting",
    ),
]


@pytest.mark.parametrize(
    ("what", "plan", "who", "expected"), SECTION_ROWS, ids=[r[0] for r in SECTION_ROWS]
)
def test_sections(
    rules: Constitution, what: str, plan: dict[str, Any], who: Viewer, expected: str
) -> None:
    assert where(rules, record(rules, **plan), who) == expected, what


def test_may_see_is_every_section_and_may_open_needs_no_channel(rules: Constitution) -> None:
    for _, plan, who, expected in SECTION_ROWS:
        rec = record(rules, **plan)
        assert home.may_see(rec, who, rules) == (expected != "hidden")
        opens = expected in ("waiting", "mine") or (
            expected == "others" and home.decided_by(rec, who)
        )
        assert home.may_open(rec, who, rules) == opens


def outcome(
    n: int,
    result: str = "succeeded",
    ended: float = NOW.timestamp() - DAY,
    lead: float = 300.0,
    team: str = TEAM,
    action: str = "deploy",
    dry_run: bool = False,
    environment: str = "staging",
) -> Outcome:
    return Outcome(
        plan_id=f"plan_{n:08d}",
        repo="acme/auth-service",
        environment=environment,
        intent="deploy",
        action=action,
        result=result,  # type: ignore[arg-type]
        summary=f"deploy number {n}",
        requester=f"{team}/{DAVE}",
        dry_run=dry_run,
        directive_at=ended - lead,
        ended_at=ended,
        run_url=f"https://github.com/acme/auth-service/actions/runs/{n}",
    )


def test_recent_deploys_follow_the_same_rule_newest_first(rules: Constitution) -> None:
    records = {
        "plan_00000001": record(rules, 1, status=PlanStatus.SUCCEEDED),
        "plan_00000002": record(rules, 2, channel=DM, status=PlanStatus.SUCCEEDED),
        "plan_00000003": record(rules, 3, channel=PRIVATE, status=PlanStatus.FAILED),
        "plan_00000004": record(rules, 4, status=PlanStatus.VETOED),
    }
    found = [
        outcome(1, ended=NOW.timestamp() - 3 * DAY),
        outcome(2),
        outcome(3, "failed", ended=NOW.timestamp() - 2 * DAY),
        outcome(4, "vetoed"),  # not a deploy
        outcome(5),  # no record: not shown
    ]
    mallory = viewer(MALLORY, (CHANNEL, PRIVATE))
    shown = home.recent_deploys(found, records, mallory, rules)
    assert [d.outcome.plan_id for d in shown] == ["plan_00000003", "plan_00000001"]
    assert shown[1].channel == CHANNEL
    dave = home.recent_deploys(found, records, viewer(DAVE), rules)
    assert [d.outcome.plan_id for d in dave] == ["plan_00000002", "plan_00000003", "plan_00000001"]
    assert home.recent_deploys(found, records, viewer(MALLORY, (CHANNEL,), OTHER_TEAM), rules) == []


def test_a_slot_held_by_a_plan_the_viewer_may_not_see_names_no_plan(rules: Constitution) -> None:
    dm = record(rules, 7, channel=DM, status=PlanStatus.RUNNING)
    lock = DeployLock(by=ALICE, reason="release freeze", at=0.0)
    slot = "acme/auth-service@staging"
    assert home.slot_line(slot, None, None, 0, None, viewer(DAVE), rules) is None
    hidden = home.slot_line(slot, None, dm.plan.id, 2, dm, viewer(MALLORY, (CHANNEL,)), rules)
    assert hidden == SlotLine(slot, None, "", 2)
    mine = home.slot_line(slot, lock, dm.plan.id, 0, dm, viewer(DAVE), rules)
    assert mine == SlotLine(slot, lock, dm.plan.id, 0)
    assert home.slot_line(slot, lock, None, 0, None, viewer(MALLORY), rules) == SlotLine(slot, lock)


def test_trust_lines_are_the_viewers_own_and_what_they_see() -> None:
    scores = {
        memory.requester_key(f"{TEAM}/{DAVE}"): 0.9,
        "acme/auth-service@staging": 0.42,
        "acme/secret@production": 0.1,
    }
    lines = home.trust_lines(
        scores, Actor(TEAM, DAVE), ["acme/auth-service@staging", "acme/web-frontend@staging"], 0.5
    )
    assert lines == [
        TrustLine("requester", "", 0.9, True),
        TrustLine("approver", "", 0.5, False),
        TrustLine("target", "acme/auth-service@staging", 0.42, True),
        TrustLine("target", "acme/web-frontend@staging", 0.5, False),
    ]


# -- the headline figures -----------------------------------------------------------------

HEADLINE_ROWS: list[tuple[str, list[Outcome], Headline]] = [
    ("nothing", [], Headline(7, 0, 0, None)),
    ("one success", [outcome(1)], Headline(7, 1, 1, 300.0)),
    (
        "failures and rollbacks count, not as successes; median of those deployed",
        [outcome(1, lead=100), outcome(2, "failed"), outcome(3, "rolled_back", lead=500)],
        Headline(7, 3, 1, 300.0),
    ),
    (
        "dry runs, vetoes, rollback runs, older than 7 days, other workspaces: left out",
        [
            outcome(1, dry_run=True),
            outcome(2, "vetoed"),
            outcome(3, action="rollback"),
            outcome(4, ended=NOW.timestamp() - 8 * DAY),
            outcome(5, team=OTHER_TEAM),
            outcome(6, lead=60),
        ],
        Headline(7, 1, 1, 60.0),
    ),
]


@pytest.mark.parametrize(
    ("what", "outcomes", "expected"), HEADLINE_ROWS, ids=[r[0] for r in HEADLINE_ROWS]
)
def test_headline(what: str, outcomes: list[Outcome], expected: Headline) -> None:
    assert headline(outcomes, TEAM, NOW.timestamp()) == expected, what


def test_success_rate() -> None:
    assert Headline(7, 0, 0, None).success_rate is None
    assert Headline(7, 4, 3, None).success_rate == 0.75


# -- the view -----------------------------------------------------------------------------

NASTY = "<!channel> *bold* <https://evil.test|click> `code` & more " + "x" * 400


def full_page(rules: Constitution) -> HomePage:
    def many(status: PlanStatus, start: int) -> list[PlanRecord]:
        return [record(rules, n, status=status, summary=NASTY) for n in range(start, start + 30)]

    lock = DeployLock(by=ALICE, reason=NASTY, at=0.0)
    return HomePage(
        owner=f"{TEAM}/{ALICE}",
        waiting=many(PlanStatus.PENDING, 100),
        mine=many(PlanStatus.RUNNING, 200),
        others=many(PlanStatus.SUCCEEDED, 300),
        headline=Headline(7, 12, 11, 4000.0),
        deploys=[
            DeployLine(replace(outcome(n, dry_run=n % 2 == 0), summary=NASTY), CHANNEL)
            for n in range(30)
        ],
        slots=[SlotLine(f"acme/r{n}@staging", lock, "plan_00000001", 3) for n in range(30)],
        trust=[TrustLine("target", f"acme/r{n}@staging", n / 30, True) for n in range(30)],
        note=home_blocks.HOME_NO_CHANNELS,
        flash=NASTY,
    )


def test_a_full_home_is_within_block_kits_limits_and_escapes_what_people_wrote(
    rules: Constitution,
) -> None:
    view = home_blocks.home(full_page(rules))
    assert view_problems(view) == []
    assert len(view["blocks"]) <= home_blocks.MAX_BLOCKS
    text = json.dumps(view, ensure_ascii=False)
    assert "<!channel>" not in text and "<https://evil.test" not in text
    assert "&lt;!channel&gt;" in text
    assert view["private_metadata"] == f"{TEAM}/{ALICE}"


def test_an_empty_home_and_its_section_titles(rules: Constitution) -> None:
    view = home_blocks.home(HomePage(owner=f"{TEAM}/{MALLORY}", headline=Headline(7, 0, 0, None)))
    assert view_problems(view) == []
    titles = [
        b["text"]["text"]
        for b in view["blocks"]
        if b["type"] == "section" and b["text"]["text"].startswith("*")
    ]
    assert titles == [
        "*Last 7 days*",
        "*Waiting on you*",
        "*Your requests*",
        "*From your channels and decisions*",
        "*Recent deploys*",
        "*Locks and queues*",
        "*Trust*",
    ]
    assert "No deploys in the last 7 days." in json.dumps(view)


def buttons(view: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for block in view["blocks"]:
        found += [e for e in block.get("elements", []) if e.get("type") == "button"]
        if block.get("accessory", {}).get("type") == "button":
            found.append(block["accessory"])
    return found


def test_waiting_plans_carry_approve_and_view_notification_plans_only_view(
    rules: Constitution,
) -> None:
    staging = record(rules, 1)
    dev = record(rules, 2, environment="development", level="notification")
    page = HomePage(owner=f"{TEAM}/{ALICE}", waiting=[staging, dev], mine=[record(rules, 3)])
    found = buttons(home_blocks.home(page))
    ids = [b["action_id"] for b in found]
    assert ids == [
        f"{home_blocks.HOME_APPROVE}.plan_00000001",
        f"{home_blocks.HOME_VIEW_PLAN}.plan_00000001",
        f"{home_blocks.HOME_VIEW_PLAN}.plan_00000002",
        f"{home_blocks.HOME_VIEW_PLAN}.plan_00000003",
    ]
    approve = found[0]
    assert approve["value"] == f"{staging.plan.id}|{staging.plan.digest}"
    assert "confirm" in approve  # away from the card, approving asks once more
    assert all(home_blocks.HOME_APPROVE_ACTION.match(i) for i in ids[:1])
    assert all(home_blocks.HOME_VIEW_PLAN_ACTION.match(i) for i in ids[1:])


def test_trust_marks_scores_below_the_autonomy_floor() -> None:
    page = HomePage(
        owner=f"{TEAM}/{DAVE}",
        trust=[
            TrustLine("requester", "", 0.95, True),
            TrustLine("target", "acme/auth-service@staging", 0.5, False),
        ],
        floor=0.8,
    )
    (trust,) = [
        b["text"]["text"]
        for b in home_blocks.home(page)["blocks"]
        if b["type"] == "section" and "Autonomy needs" in b["text"]["text"]
    ]
    mine, target = trust.splitlines()[1:]
    assert "0.95" in mine and "below" not in mine
    assert "0.50" in target and "below the autonomy floor" in target and "no outcome yet" in target


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (45, "45 s"),
        (240, "4 min"),
        (3600, "1 h"),
        (7500, "2 h 5 min"),
        (86400 * 3 + 3600 * 4, "3 d 4 h"),
    ],
)
def test_duration(seconds: float, text: str) -> None:
    assert home_blocks.duration(seconds) == text


# -- a Home click is bound to the clicker's own Home view ---------------------------------

VALUE = "plan_00000001|" + "d" * 64


def click(
    who: str = ALICE,
    owner: str = f"{TEAM}/{ALICE}",
    container: str = "view",
    kind: str = "home",
    view_id: str = "V0000000001",
    container_view: str | None = None,
    action_id: str = f"{home_blocks.HOME_APPROVE}.plan_00000001",
    value: str = VALUE,
) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "team": {"id": TEAM},
        "user": {"id": who, "team_id": TEAM},
        "container": {"type": container, "view_id": container_view or view_id},
        "view": {"id": view_id, "type": kind, "private_metadata": owner},
        "actions": [{"action_id": action_id, "value": value, "type": "button"}],
    }


BINDING_ROWS: list[tuple[str, dict[str, Any], str | None]] = [
    ("their own Home", click(), None),
    ("a message, not a view", click(container="message"), home.NOT_HOME),
    ("a modal", click(kind="modal"), home.NOT_HOME),
    ("the container names another view", click(container_view="V0000000002"), home.NOT_HOME),
    ("a view published to someone else", click(owner=f"{TEAM}/{MALLORY}"), home.NOT_HOME),
    ("same user id, another workspace's view", click(owner=f"{OTHER_TEAM}/{ALICE}"), home.NOT_HOME),
    ("no metadata", click(owner=""), home.NOT_HOME),
]


@pytest.mark.parametrize(
    ("what", "body", "expected"), BINDING_ROWS, ids=[r[0] for r in BINDING_ROWS]
)
def test_home_binding(what: str, body: dict[str, Any], expected: str | None) -> None:
    from handlers.actions import actor_from

    assert home.home_binding_problem(body, actor_from(body)) == expected, what


@pytest.mark.parametrize(
    ("action_id", "value", "expected"),
    [
        (f"{home_blocks.HOME_APPROVE}.plan_00000001", VALUE, ("plan_00000001", "d" * 64)),
        (home_blocks.HOME_APPROVE, VALUE, ("plan_00000001", "d" * 64)),
        (f"{home_blocks.HOME_APPROVE}.plan_00000002", VALUE, home.NO_PLAN),
        (home_blocks.HOME_APPROVE, "plan_00000001", home.NO_PLAN),
        (home_blocks.HOME_APPROVE, "../etc|" + "d" * 64, home.NO_PLAN),
    ],
)
def test_home_click_value(action_id: str, value: str, expected: object) -> None:
    assert home.home_click(click(action_id=action_id, value=value)) == expected


# -- whose Home a change concerns ---------------------------------------------------------

CONCERN_ROWS: list[tuple[str, dict[str, Any], Viewer, bool]] = [
    ("the requester", {}, viewer(DAVE), True),
    ("an approver who may decide", {}, viewer(BOB), True),
    ("an approver through a group", {}, viewer(ERIN, groups=(SRE,)), True),
    ("an approver, after it ended", {"status": PlanStatus.SUCCEEDED}, viewer(BOB), True),
    (
        "the one who decided",
        {"status": PlanStatus.APPROVED, "decided": (ALICE,)},
        viewer(ALICE),
        True,
    ),
    ("no role, even in the channel", {}, viewer(MALLORY, (CHANNEL,)), False),
    ("an approver from another workspace", {}, viewer(BOB, team=OTHER_TEAM), False),
]


@pytest.mark.parametrize(
    ("what", "plan", "who", "expected"), CONCERN_ROWS, ids=[r[0] for r in CONCERN_ROWS]
)
def test_concerns(
    rules: Constitution, what: str, plan: dict[str, Any], who: Viewer, expected: bool
) -> None:
    assert home.concerns(record(rules, **plan), who, rules) == expected, what


def test_remembered_viewers_expire_and_bad_entries_are_skipped() -> None:
    now = NOW.timestamp()
    memo = {
        f"{TEAM}/{ALICE}": json.dumps({"at": now - 60, "enterprise": ""}),
        f"{TEAM}/{BOB}": json.dumps({"at": now - home.REMEMBER_SECONDS - 1}),
        f"{TEAM}/{CAROL}": "not json",
        "nobody": json.dumps({"at": now}),
        f"{TEAM}/{DAVE}": json.dumps({"at": now, "enterprise": "E0ACMEORG1"}),
    }
    assert home.remembered(memo, now) == [
        Actor(TEAM, ALICE),
        Actor(TEAM, DAVE, enterprise_id="E0ACMEORG1"),
    ]
