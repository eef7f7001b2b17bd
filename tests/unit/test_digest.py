"""The digest's figures, schedule, message and chart, as tables (roles/digest.py,
handlers/digest_blocks.py, bot/chart.py)."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import yaml
from PIL import Image

from bot import chart
from bot.jobs import digest_check_seconds, digest_cron
from handlers import digest_blocks as kit
from roles import digest, jobs
from roles.constitution import Constitution, parse_constitution
from roles.digest import Day, ScheduleError
from roles.outcomes import Outcome
from roles.plan import Plan
from roles.records import Actor, DecisionRecord, PlanRecord, PlanStatus, Thread
from tests.fakes import blockkit
from tests.unit.test_signatures import ROOT, make_plan

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # a Tuesday
T = NOW.timestamp()
REPO = "acme/auth-service"
MIN = 60.0
HOUR = 3600.0
DAY = 86_400.0


def _constitution(**digest_rules: Any) -> Constitution:
    doc = yaml.safe_load((ROOT / "constitution.yml").read_text())
    doc.pop("policies_dir", None)
    doc["digest"] = {"channel": "C0DIGEST01", "schedule": "0 9 * * 1-5", **digest_rules}
    return parse_constitution(yaml.safe_dump(doc))


CONSTITUTION = _constitution()


def out(
    plan_id: str,
    result: str = "succeeded",
    *,
    action: str = "deploy",
    ended: float = T - HOUR,
    lead: float = 5 * MIN,
    decide: float | None = 2 * MIN,
    autonomous: bool = False,
    dry_run: bool = False,
    restored: float = 0.0,
    dispatched: float | None = None,
    summary: str = "Add caching to auth",
    environment: str = "staging",
) -> Outcome:
    directive = ended - lead
    card = directive + 5
    return Outcome(
        plan_id=plan_id,
        repo=REPO,
        environment=environment,
        intent="deploy",
        action=action,
        result=result,  # type: ignore[arg-type]
        summary=summary,
        requester="T0SOPHIE01/U0DAVE0004",
        autonomous=autonomous,
        dry_run=dry_run,
        directive_at=directive,
        card_at=card,
        decided_at=0.0 if decide is None else card + decide,
        dispatched_at=ended - 60 if dispatched is None else dispatched,
        ended_at=ended,
        restored_at=restored,
    )


def _report(outcomes: list[Outcome], **kw: Any) -> digest.DigestReport:
    args: dict[str, Any] = {
        "pending": [],
        "trusts": {},
        "trusts_before": {},
        "now": NOW,
        "since": NOW - timedelta(days=1),
        "constitution": CONSTITUTION,
    }
    args.update(kw)
    return digest.report(outcomes, **args)


# -- the schedule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "timezone", "now", "slot"),
    [
        # A weekday 09:00 in Madrid (UTC+1 in November) is 08:00 UTC.
        ("0 9 * * 1-5", "Europe/Madrid", "2026-11-24T08:00:00+00:00", "2026-11-24T08:00Z"),
        ("0 9 * * 1-5", "Europe/Madrid", "2026-11-24T08:00:59.9+00:00", "2026-11-24T08:00Z"),
        ("0 9 * * 1-5", "Europe/Madrid", "2026-11-24T07:59:59+00:00", "2026-11-23T08:00Z"),
        # Saturday: Friday's slot is the latest.
        ("0 9 * * 1-5", "Europe/Madrid", "2026-11-28T10:00:00+00:00", "2026-11-27T08:00Z"),
        ("0 9 * * 1-5", "UTC", "2026-11-24T09:30:00+00:00", "2026-11-24T09:00Z"),
        ("* * * * *", "UTC", "2026-11-24T09:30:42+00:00", "2026-11-24T09:30Z"),
        ("*/15 * * * *", "America/New_York", "2026-11-24T14:44:00+00:00", "2026-11-24T14:30Z"),
        # Summer time in New York (UTC-4).
        ("0 9 * * *", "America/New_York", "2026-07-01T13:00:00+00:00", "2026-07-01T13:00Z"),
    ],
)
def test_the_latest_slot_is_read_in_the_constitutions_time_zone(
    schedule: str, timezone: str, now: str, slot: str
) -> None:
    found = digest.latest_slot(schedule, timezone, datetime.fromisoformat(now))
    assert found is not None
    assert digest.slot_key("C1", found) == f"digest:C1:{slot}"


def test_previous_and_next_slots() -> None:
    slot = digest.latest_slot("0 9 * * 1-5", "UTC", NOW)
    assert slot is not None and slot.isoformat() == "2026-11-24T09:00:00+00:00"
    before = digest.previous_slot("0 9 * * 1-5", "UTC", slot)
    assert before is not None and before.isoformat() == "2026-11-23T09:00:00+00:00"
    after = digest.next_slot("0 9 * * 1-5", "UTC", NOW)
    assert after is not None and after.isoformat() == "2026-11-25T09:00:00+00:00"


def test_the_two_half_past_ones_of_a_dst_change_are_different_slots() -> None:
    # Europe/London falls back at 02:00 BST on 2026-10-25: 01:30 happens twice.
    first = digest.latest_slot(
        "30 1 * * *", "Europe/London", datetime(2026, 10, 25, 0, 45, tzinfo=UTC)
    )
    assert first is not None
    assert digest.slot_key("C1", first) == "digest:C1:2026-10-25T00:30Z"


@pytest.mark.parametrize(
    "schedule", ["", "0 9 * *", "0 0 9 * * 1-5", "61 * * * *", "0 25 * * *", "nonsense a b c d"]
)
def test_a_schedule_that_is_not_five_field_cron_is_refused(schedule: str) -> None:
    with pytest.raises(ScheduleError):
        digest.check_schedule(schedule)
    with pytest.raises(ScheduleError):
        digest.latest_slot(schedule, "UTC", NOW)


# -- DORA, targets, approval health -----------------------------------------------------------


def test_dora_figures_over_the_window_without_dry_runs() -> None:
    outcomes = [
        out("p1", lead=4 * MIN),
        out("p2", lead=6 * MIN, ended=T - 2 * DAY),
        out("p3", "failed", restored=T - HOUR + 20 * MIN),
        out("p4", "rolled_back", lead=8 * MIN, restored=T - HOUR + 10 * MIN),
        out("p5", dry_run=True, lead=1 * MIN),  # a dry run proves nothing
        out("p6", "vetoed", decide=MIN),  # no run
        out("p7", ended=T - 8 * DAY),  # outside the window
        out("p8", action="build"),  # not a deploy
    ]
    report = _report(outcomes)
    d = report.dora
    assert (d.deploys, d.reached, d.failed) == (4, 3, 2)
    assert d.per_day == pytest.approx(3 / 7)
    assert d.lead_p50_seconds == 6 * MIN  # of p1, p2, p4 (the failed one never went live)
    assert d.change_failure_rate == 0.5
    assert d.restore_p50_seconds == 15 * MIN  # 20 min and 10 min


@pytest.mark.parametrize(
    ("outcomes", "met"),
    [
        ([], [None, None, None]),
        ([out(f"p{i}", lead=5 * MIN) for i in range(20)], [True, True, None]),
        # 19 of 20 is 95 %: the target is *more than* 95 %.
        (
            [out(f"p{i}", lead=5 * MIN) for i in range(19)] + [out("f", "failed")],
            [True, False, None],
        ),
        ([out("slow", lead=12 * MIN)], [False, True, None]),
        (
            [
                out("r1", action="rollback", dispatched=T - HOUR - 90),
                out("r2", action="rollback", dispatched=T - HOUR - 100),
            ],
            [None, None, True],
        ),
        ([out("r3", action="rollback", dispatched=T - HOUR - 300)], [None, None, False]),
        ([out("r4", action="rollback", dispatched=T - HOUR - 10, dry_run=True)], [None] * 3),
    ],
)
def test_the_seeds_targets_against_what_was_measured(
    outcomes: list[Outcome], met: list[bool | None]
) -> None:
    report = _report(outcomes)
    assert [t.met for t in report.targets] == met
    assert [t.name for t in report.targets] == [
        "Directive → live",
        "Deploys that succeed",
        "Rollback",
    ]


def test_approval_health() -> None:
    outcomes = [
        out("a", decide=2 * MIN),
        out("b", decide=6 * MIN, dry_run=True),  # decisions on dry runs are real decisions
        out("c", "vetoed", decide=4 * MIN),
        out("d", autonomous=True, decide=0.0),
        out("e", "rolled_back", autonomous=True, decide=0.0),
        out("f", "expired", decide=None),
    ]
    h = _report(outcomes).health
    assert h.decided == 5 and h.vetoed == 1 and h.veto_rate == pytest.approx(0.2)
    assert h.decide_p50_seconds == 4 * MIN  # a, b, c: people; the bot's are left out
    assert (h.autonomous, h.autonomous_rolled_back) == (2, 1)
    assert h.autonomous_share == pytest.approx(0.4)
    assert h.expired == 1


def test_days_series_in_local_days() -> None:
    # 23:30 UTC on Monday is already Tuesday in Madrid.
    monday_night = datetime(2026, 11, 23, 23, 30, tzinfo=UTC).timestamp()
    outcomes = [
        out("a", ended=monday_night, lead=4 * MIN),
        out("b", ended=T - HOUR, lead=8 * MIN),
        out("c", ended=T - 3 * DAY, lead=2 * MIN),
        out("d", "failed", ended=T - HOUR),  # did not go live: not a deploy of the day
    ]
    report = _report(outcomes, constitution=_constitution(timezone="Europe/Madrid"))
    days = report.days
    assert (
        len(days) == 7 and days[-1].day == date(2026, 11, 24) and days[0].day == date(2026, 11, 18)
    )
    assert (days[-1].deploys, days[-1].lead_p50_seconds) == (2, 6 * MIN)
    assert (days[-4].deploys, days[-4].lead_p50_seconds) == (1, 2 * MIN)
    assert sum(d.deploys for d in days) == 3
    assert days[0].lead_p50_seconds is None


def test_since_the_last_digest_newest_first_with_counts() -> None:
    outcomes = [
        out("old", ended=T - 2 * DAY),
        out("a", ended=T - 3 * HOUR),
        out("b", "failed", ended=T - 2 * HOUR),
        out("c", "vetoed", ended=T - HOUR),
    ]
    report = _report(outcomes, since=NOW - timedelta(hours=4))
    assert [o.plan_id for o in report.ended] == ["c", "b", "a"]
    assert report.ended_counts == {"succeeded": 1, "failed": 1, "vetoed": 1}


@pytest.mark.parametrize(
    ("now", "before", "moved"),
    [
        ({"x@staging": 0.9}, {"x@staging": 0.9}, []),
        ({"x@staging": 0.9}, {"x@staging": 0.85}, [("x@staging", 0.85, 0.9, "")]),
        ({"x@staging": 0.85}, {"x@staging": 0.75}, [("x@staging", 0.75, 0.85, "above")]),
        ({"x@staging": 0.6}, {"x@staging": 0.85}, [("x@staging", 0.85, 0.6, "below")]),
        # New since the last digest: moved from the initial score.
        ({"model:m": 0.55}, {}, [("model:m", 0.5, 0.55, "")]),
        ({"model:m": 0.55}, None, [("model:m", 0.5, 0.55, "")]),
        # Largest move first.
        (
            {"a": 0.6, "b": 0.2},
            {"a": 0.5, "b": 0.5},
            [("b", 0.5, 0.2, ""), ("a", 0.5, 0.6, "")],
        ),
    ],
)
def test_trust_that_moved(
    now: dict[str, float], before: dict[str, float] | None, moved: list[tuple[Any, ...]]
) -> None:
    report = _report([], trusts=now, trusts_before=before)
    assert [(m.key, m.before, m.after, m.crossed) for m in report.trust] == moved


# -- plans waiting ----------------------------------------------------------------------------

_PLAN: list[Plan] = []


def _plan() -> Plan:
    if not _PLAN:
        _PLAN.append(
            asyncio.run(make_plan(CONSTITUTION, "Add caching to auth and deploy to staging"))
        )
    return _PLAN[0]


def _pending(
    plan_id: str,
    age: float,
    ttl: int = 86_400,
    summary: str = "",
    status: PlanStatus = PlanStatus.PENDING,
) -> PlanRecord:
    plan = _plan()
    approval = plan.approval.model_copy(update={"ttl_seconds": ttl})
    interpretation = plan.interpretation.model_copy(
        update={"summary": summary or plan.interpretation.summary}
    )
    changed = plan.model_copy(
        update={
            "id": plan_id,
            "created_at": NOW - timedelta(seconds=age),
            "approval": approval,
            "interpretation": interpretation,
        }
    )
    return PlanRecord(changed, status, Thread("C0DEPLOYS1", "1.1"))


def test_plans_waiting_and_expiring_soon() -> None:
    records = [
        _pending("plan_young", 10 * MIN),
        _pending("plan_old", 5 * HOUR),
        _pending("plan_going", 23 * HOUR),  # 1 h left of 24
        _pending("plan_gone", 25 * HOUR),  # past its expiry, not yet expired by the job
        _pending("plan_done", HOUR, status=PlanStatus.SUCCEEDED),
    ]
    report = _report([], pending=records)
    assert [w.plan_id for w in report.waiting] == [
        "plan_gone",
        "plan_going",
        "plan_old",
        "plan_young",
    ]
    assert [w.plan_id for w in report.expiring] == ["plan_gone", "plan_going"]
    young = report.waiting[-1]
    assert young.age_seconds == 10 * MIN and young.expires_in_seconds == 86_400 - 10 * MIN
    assert young.needed == ("1 more approver",) and young.needs_words == "1 more approver"


def test_who_is_still_needed_counts_the_approvals_given() -> None:
    record = _pending("plan_one", HOUR)
    approve = DecisionRecord(Actor("T0SOPHIE01", "U0ALICE001"), "approve", NOW, {})
    record.decisions.append(approve)
    (waiting,) = _report([], pending=[record]).waiting
    assert waiting.needed == ()


# -- the message -------------------------------------------------------------------------------

EVIL = "<!channel> *pwned* `code` <https://evil.example|click> & more"


def _rich_report(n: int = 3, evil: str = EVIL) -> digest.DigestReport:
    outcomes = [
        out(
            f"plan_{i:03d}",
            ("succeeded", "failed", "rolled_back")[i % 3],
            summary=evil,
            ended=T - i * 600,
        )
        for i in range(n)
    ]
    outcomes.append(out("plan_rb", action="rollback", dispatched=T - HOUR - 80))
    pending = [_pending(f"plan_w{i:03d}", (i + 1) * HOUR, summary=evil) for i in range(n)]
    pending.append(_pending("plan_soon", 23 * HOUR + 30 * MIN))
    trusts = {f"requester:T0SOPHIE01/U{i:09d}": 0.4 for i in range(n)} | {f"{REPO}@staging": 0.7}
    return _report(
        outcomes,
        pending=pending,
        trusts=trusts,
        trusts_before={f"{REPO}@staging": 0.85},
        slot=NOW,
    )


@pytest.mark.parametrize("detail", [True, False])
@pytest.mark.parametrize("n", [0, 3, 400])
def test_the_message_is_valid_block_kit_and_escapes_user_text(detail: bool, n: int) -> None:
    report = _rich_report(n)
    text, body = kit.digest(report, detail=detail)
    assert blockkit.message_problems(text, body, None) == []
    shown = str(body)
    assert "<!channel>" not in shown and "<https://evil" not in shown
    assert "<@" not in shown  # a broadcast mentions nobody
    if detail and n:
        assert "&lt;!channel&gt;" in shown and f"plan_w{n - 1:03d}" in shown
        assert "Trust that moved" in shown and "now below the autonomy floor 0.80" in shown
    if not detail:
        assert "plan_w" not in shown and REPO not in shown and "requester:" not in shown
    if n == 400 and detail:
        assert "… and 391 more" in shown


def test_the_message_names_every_section() -> None:
    report = _rich_report(3)
    _, body = kit.digest(report)
    shown = str(body)
    for words in (
        "Waiting for approval",
        "Approvals expiring within 2 h",
        "Since the last digest",
        "Deployment frequency",
        "Lead time (p50)",
        "Change failure rate",
        "Time to restore (p50)",
        "Directive → live",
        "Deploys that succeed",
        "Rollback",
        "Time to decide (p50)",
        "Veto rate",
        "Decided autonomously",
        "the chart is in the thread",
    ):
        assert words in shown, words
    _, ephemeral = kit.digest(report, chart=False)
    assert "Deploys per day (lead p50): Wed 0 · Thu 0" in str(ephemeral)


def test_an_empty_digest_says_so() -> None:
    report = digest.report([], [], {}, None, NOW, NOW - timedelta(days=1), CONSTITUTION)
    text, body = kit.digest(report)
    assert blockkit.message_problems(text, body, None) == []
    shown = str(body)
    assert "Nothing is waiting" in shown and "No plan ended" in shown and "No score moved" in shown
    assert "not measured yet" in shown
    assert text.startswith("SOPHIE digest: 0 deploys in 7 days")
    assert "Next digest: Wed 25 Nov 09:00" in shown


def test_the_terminal_text() -> None:
    text = kit.as_text(_rich_report(2, evil="deploy <auth> & co"))
    assert "Waiting for approval (3):" in text and "deploy <auth> & co" in text
    assert "Change failure rate:" in text and "Targets:" in text and "Trust that moved:" in text


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (None, "—"),
        (0, "0 s"),
        (42.4, "42 s"),
        (60, "1 min"),
        (390, "6.5 min"),
        (599, "10 min"),
        (1800, "30 min"),
        (3600, "1 h"),
        (4800, "1 h 20 min"),
        (86_400 * 2 + 3 * 3600, "2 d 3 h"),
    ],
)
def test_durations_in_words(seconds: float | None, words: str) -> None:
    assert kit.duration(seconds) == words


@pytest.mark.parametrize(
    ("ratio", "words"),
    [(None, "—"), (0.0, "0 %"), (0.5, "50 %"), (0.947, "94.7 %"), (1.0, "100 %")],
)
def test_percent_in_words(ratio: float | None, words: str) -> None:
    assert kit.percent(ratio) == words


# -- the chart -------------------------------------------------------------------------------


def _days(values: list[tuple[int, float | None]]) -> list[Day]:
    first = date(2026, 11, 18)
    return [Day(first + timedelta(days=i), n, lead) for i, (n, lead) in enumerate(values)]


def _png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        body = data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks.append(kind)
        at += 12 + length
    return chunks


@pytest.mark.parametrize(
    "values",
    [
        [(0, None)] * 7,
        [(2, 420.0), (0, None), (5, 300.0), (3, 900.0), (1, 200.0), (0, None), (4, 350.0)],
        [(250, 86_400.0 * 3)] * 7,
        [(1, 30.0)],
        [],
    ],
)
def test_the_chart_is_a_valid_png_of_the_expected_size(
    values: list[tuple[int, float | None]],
) -> None:
    data = chart.render(_days(values))
    chunks = _png_chunks(data)
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    assert not {b"tIME", b"tEXt", b"iTXt", b"zTXt"} & set(chunks)  # nothing that varies
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.size == (chart.WIDTH, chart.HEIGHT)
    assert chart.render(_days(values)) == data  # deterministic


def test_the_chart_shows_the_bars_where_there_were_deploys() -> None:
    quiet = chart.render(_days([(0, None)] * 7))
    busy = chart.render(_days([(0, None)] * 6 + [(4, 300.0)]))
    with Image.open(io.BytesIO(busy)) as image:
        rgb = image.convert("RGB")
        # The last day's bar, half way up the plot: the bar colour.
        x = int(chart.WIDTH - 56 - (chart.WIDTH - 56 - 44) / 14)
        assert rgb.getpixel((x, chart.HEIGHT - 60)) == (54, 123, 214)
    assert quiet != busy
    assert chart.filename(_days([(0, None)] * 7)) == "sophie-digest-2026-11-24.png"


# -- the job and its schedule check -------------------------------------------------------------


def test_the_digest_job_is_in_the_job_table() -> None:
    assert "digest" in jobs.NAMES
    assert jobs.parse("digest", {}) == jobs.Digest()
    assert jobs.Digest().payload() == {}


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(None, 60), ("", 60), ("1", 1), ("15", 15), ("0", 1), ("600", 60), ("x", 60)],
)
def test_the_digest_check_interval(raw: str | None, seconds: int) -> None:
    env = {} if raw is None else {"SOPHIE_DIGEST_CHECK_SECONDS": raw}
    assert digest_check_seconds(env) == seconds


def test_the_digest_cron_checks_on_every_worker_at_start_and_each_interval() -> None:
    job = digest_cron(15, 120.0)
    assert job.name == "digest" and job.unique and job.run_at_startup and job.max_tries == 1
    assert job.second == {0, 15, 30, 45}
    assert digest_cron(60, 120.0).second == {0}


def test_outcome_helper_round_trips() -> None:
    o = out("p")
    assert Outcome.from_json(o.to_json()) == o and replace(o, result="failed").result == "failed"
