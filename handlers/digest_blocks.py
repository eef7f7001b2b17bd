"""The digest as Block Kit (and as plain text for the terminal): pure functions of a
:class:`roles.digest.DigestReport`, within Slack's limits (50 blocks, 3000 characters a
section, 10 fields of 2000), with every piece of user text escaped.

``detail=False`` (``/sophie digest`` outside the digest channel) shows the figures only:
no plan, repository, person or trust line, since the person asking may not be in the
channels those plans came from.

Nobody is @-mentioned: a digest is a broadcast, and a mention would ping people every
morning. People are named by the name Slack gave with their request, or their user id.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from handlers.text import escape, truncate
from roles.digest import DigestReport, Target, TrustMove, Waiting
from roles.outcomes import Outcome

Block = dict[str, Any]

# The most lines one list shows (the rest are counted).
LINES = 10
SECTION = 2900  # under Slack's 3000 for a section's text, with room for "… and N more"

_RESULT = {
    "succeeded": ("✅", "succeeded"),
    "failed": ("❌", "failed"),
    "rolled_back": ("↩️", "rolled back"),
    "vetoed": ("⛔", "vetoed"),
    "expired": ("⌛", "expired"),
    "stale": ("♻️", "stale"),
    "error": ("⚠️", "error"),
}
_RESULT_ORDER = ("succeeded", "failed", "rolled_back", "error", "vetoed", "expired", "stale")


# -- figures in words ----------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """``35 s``, ``6.5 min``, ``1 h 20 min``, ``2 d 3 h``; "—" when not measured."""
    if seconds is None:
        return "—"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f} s"
    if s < 600:
        minutes = f"{s / 60:.1f}".removesuffix(".0")
        return f"{minutes} min"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86_400:
        h, m = divmod(round(s / 60), 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(round(s / 3600), 24)
    return f"{d} d {h} h" if h else f"{d} d"


def percent(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    value = f"{ratio * 100:.1f}".removesuffix(".0")
    return f"{value} %"


def when(moment: datetime) -> str:
    return moment.strftime("%a %d %b %H:%M")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _counts(counts: dict[str, int]) -> str:
    parts = [
        f"{counts[r]} {_RESULT[r][1]}" for r in _RESULT_ORDER if counts.get(r) and r in _RESULT
    ]
    return ", ".join(parts)


def headline(report: DigestReport) -> str:
    """One line: the notification text of the message, and the first line in the terminal."""
    d = report.dora
    return (
        f"SOPHIE digest: {_plural(d.reached, 'deploy')} in {d.days} days "
        f"({d.per_day:.1f}/day), lead time p50 {duration(d.lead_p50_seconds)}, "
        f"change failure rate {percent(d.change_failure_rate)}; "
        f"{len(report.waiting)} waiting for approval, {len(report.expiring)} expiring soon"
    )


# -- lines -----------------------------------------------------------------------------------


def _target(repo: str, environment: str) -> str:
    return f"{escape(repo, 100)} → {escape(environment, 40)}"


def waiting_line(w: Waiting, expiring: bool = False) -> str:
    head = f"`{escape(w.plan_id, 40)}` {_target(w.repo, w.environment)}: {escape(w.summary, 140)}"
    if expiring:
        left = "now" if w.expires_in_seconds <= 0 else f"in {duration(w.expires_in_seconds)}"
        tail = f"expires {left}, needs {escape(w.needs_words, 200)}"
    else:
        tail = (
            f"waiting {duration(w.age_seconds)}, needs {escape(w.needs_words, 200)} "
            f"(asked by {escape(w.requester, 60)})"
        )
    return f"• {head} — {tail}"


def ended_line(o: Outcome) -> str:
    emoji, word = _RESULT.get(o.result, ("•", o.result))
    what = "" if o.action == "deploy" else f" ({o.action})"
    extra = []
    lead = o.lead_seconds
    if lead is not None and o.action == "deploy":
        extra.append(f"lead {duration(lead)}")
    if o.dry_run:
        extra.append("dry run")
    tail = f" — {', '.join(extra)}" if extra else ""
    return (
        f"{emoji} `{escape(o.plan_id, 40)}` {_target(o.repo, o.environment)}{what}: "
        f"{escape(o.summary, 140)} — {word}{tail}"
    )


def trust_line(m: TrustMove) -> str:
    sign = "+" if m.delta >= 0 else "−"
    line = f"• `{escape(m.key, 120)}` {m.before:.2f} → {m.after:.2f} ({sign}{abs(m.delta):.2f})"
    if m.crossed == "below":
        line += f", now below the autonomy floor {m.floor:.2f}"
    elif m.crossed == "above":
        line += f", now at or above the autonomy floor {m.floor:.2f}"
    return line


def target_line(t: Target) -> str:
    mark = "➖" if t.met is None else ("✅" if t.met else "❌")
    if t.measured is None:
        measured = "not measured yet"
    elif t.unit == "ratio":
        measured = percent(t.measured)
    else:
        measured = duration(t.measured)
    return f"{mark} *{t.name}* {t.goal}: {measured} ({_plural(t.samples, 'sample')})"


def _list(title: str, lines: Sequence[str], empty: str) -> Block:
    """A section with a title and up to :data:`LINES` lines, never over Slack's limit."""
    text = title
    if not lines:
        return _section(f"{text}\n{empty}")
    shown = 0
    for line in lines[:LINES]:
        if len(text) + 1 + len(line) > SECTION:
            break
        text += "\n" + line
        shown += 1
    if shown < len(lines):
        text += f"\n… and {len(lines) - shown} more"
    return _section(text)


def _section(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, 3000)}}


def _fields(*texts: str) -> Block:
    return {
        "type": "section",
        "fields": [{"type": "mrkdwn", "text": truncate(t, 2000)} for t in texts[:10]],
    }


def _context(*texts: str) -> Block:
    return {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": truncate(t, 2000)} for t in texts[:10]],
    }


def series_text(report: DigestReport) -> str:
    """The chart's figures in words (for the ephemeral digest, the terminal and alt text)."""
    return " · ".join(
        f"{d.day.strftime('%a')} {d.deploys}"
        + (f" ({duration(d.lead_p50_seconds)})" if d.lead_p50_seconds is not None else "")
        for d in report.days
    )


def chart_alt_text(report: DigestReport) -> str:
    return truncate(
        f"Deploys per day over the last {report.window_days} days, with the median lead time: "
        + series_text(report),
        1000,
    )


# -- the message ------------------------------------------------------------------------------


def digest(
    report: DigestReport, detail: bool = True, chart: bool = True
) -> tuple[str, list[Block]]:
    """(fallback text, blocks) of the digest. ``chart``: the chart image is posted in the
    message's thread (scheduled and CLI digests); otherwise its figures are given in words."""
    title = "SOPHIE digest — " + when(report.slot or report.now)
    blocks: list[Block] = [
        {"type": "header", "text": {"type": "plain_text", "text": truncate(title, 150)}},
        _context(
            f"Since the last digest ({when(report.since)}); figures over the last "
            f"{report.window_days} days; times in {escape(report.timezone, 60)}"
        ),
    ]
    counts = _counts(report.ended_counts)
    if detail:
        blocks.append(
            _list(
                f"*Waiting for approval* ({len(report.waiting)})",
                [waiting_line(w) for w in report.waiting],
                "_Nothing is waiting._",
            )
        )
        if report.expiring:
            blocks.append(
                _list(
                    f"*Approvals expiring within 2 h* ({len(report.expiring)})",
                    [waiting_line(w, expiring=True) for w in report.expiring],
                    "",
                )
            )
        blocks.append(
            _list(
                f"*Since the last digest*: {counts or 'nothing ended'}",
                [ended_line(o) for o in report.ended],
                "_No plan ended._",
            )
        )
    else:
        blocks.append(
            _section(
                f"*Waiting for approval*: {len(report.waiting)} "
                f"({len(report.expiring)} expiring within 2 h)\n"
                f"*Since the last digest*: {counts or 'nothing ended'}\n"
                "_Plans, repositories and trust are listed in the digest channel._"
            )
        )
    d = report.dora
    blocks.append({"type": "divider"})
    blocks.append(
        _fields(
            f"*Deployment frequency*\n{d.per_day:.1f}/day ({d.reached} in {d.days} days)",
            f"*Lead time (p50)*\n{duration(d.lead_p50_seconds)}",
            f"*Change failure rate*\n{percent(d.change_failure_rate)} ({d.failed} of {d.deploys})",
            f"*Time to restore (p50)*\n{duration(d.restore_p50_seconds)}",
        )
    )
    blocks.append(
        _section("*The seed's targets*\n" + "\n".join(target_line(t) for t in report.targets))
    )
    h = report.health
    autonomous = f"{percent(h.autonomous_share)} ({h.autonomous})"
    if h.autonomous:
        autonomous += f", {h.autonomous_rolled_back} of them rolled back"
    blocks.append(
        _fields(
            f"*Time to decide (p50)*\n{duration(h.decide_p50_seconds)}",
            f"*Veto rate*\n{percent(h.veto_rate)} ({h.vetoed} of {h.decided})",
            f"*Decided autonomously*\n{autonomous}",
            f"*Expired unanswered*\n{h.expired}",
        )
    )
    if detail:
        blocks.append(
            _list(
                "*Trust that moved*",
                [trust_line(m) for m in report.trust],
                "_No score moved._",
            )
        )
    notes = []
    if chart:
        notes.append("Deploys and lead time per day: the chart is in the thread.")
    else:
        notes.append("Deploys per day (lead p50): " + series_text(report))
    if report.next_at is not None:
        notes.append(f"Next digest: {when(report.next_at)}")
    if report.truncated:
        notes.append("Only the newest outcomes were read: the figures cover those.")
    blocks.append(_context(*notes))
    return headline(report), blocks


def as_text(report: DigestReport) -> str:
    """The digest for a terminal (``sophie digest --now`` without Slack)."""
    d, h = report.dora, report.health
    out = [
        f"SOPHIE digest — {when(report.now)} ({report.timezone})",
        f"since the last digest: {when(report.since)}; figures over the last "
        f"{report.window_days} days",
        "",
        f"Waiting for approval ({len(report.waiting)}):",
    ]
    out += [f"  {_plain(waiting_line(w))}" for w in report.waiting] or ["  nothing"]
    out.append(f"Expiring within 2 h ({len(report.expiring)}):")
    out += [f"  {_plain(waiting_line(w, True))}" for w in report.expiring] or ["  nothing"]
    out.append(f"Since the last digest: {_counts(report.ended_counts) or 'nothing ended'}")
    out += [f"  {_plain(ended_line(o))}" for o in report.ended]
    out += [
        "",
        f"Deployment frequency: {d.per_day:.1f}/day ({d.reached} in {d.days} days)",
        f"Lead time (p50):      {duration(d.lead_p50_seconds)}",
        f"Change failure rate:  {percent(d.change_failure_rate)} ({d.failed} of {d.deploys})",
        f"Time to restore (p50): {duration(d.restore_p50_seconds)}",
        "",
        "Targets:",
    ]
    out += [f"  {_plain(target_line(t))}" for t in report.targets]
    out += [
        "",
        f"Time to decide (p50): {duration(h.decide_p50_seconds)}; veto rate "
        f"{percent(h.veto_rate)} ({h.vetoed} of {h.decided}); decided autonomously "
        f"{percent(h.autonomous_share)} ({h.autonomous}, {h.autonomous_rolled_back} rolled back)"
        f"; expired {h.expired}",
        "Trust that moved:",
    ]
    out += [f"  {_plain(trust_line(m))}" for m in report.trust] or ["  none"]
    out.append("Deploys per day (lead p50): " + series_text(report))
    return "\n".join(out) + "\n"


def _plain(line: str) -> str:
    """A Slack line for the terminal: no entities, no marks."""
    return (
        line.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
        .replace("\u200b", "")
        .replace("*", "")
        .replace("`", "")
        .removeprefix("• ")
    )
