"""Deploy freezes: when the constitution says deploys to an environment wait or need more."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from roles.constitution import WEEKDAYS, Constitution, Freeze


def _clock(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def ends(freeze: Freeze, now: datetime) -> datetime | None:
    """When the window ``now`` falls in ends, or None if ``now`` is outside it."""
    if freeze.start is not None and freeze.end is not None:
        return freeze.end if freeze.start <= now < freeze.end else None
    zone = ZoneInfo(freeze.timezone)
    local = now.astimezone(zone)
    begin, finish = _clock(freeze.from_time), _clock(freeze.to_time)
    overnight = finish <= begin
    # A window opened today, or (past midnight) one opened yesterday.
    for back in (0, 1) if overnight else (0,):
        day = local.date() - timedelta(days=back)
        if WEEKDAYS[day.weekday()] not in freeze.days:
            continue
        opened = datetime.combine(day, begin, zone)
        closes = datetime.combine(day + timedelta(days=1 if overnight else 0), finish, zone)
        if opened <= local < closes:
            return closes
    return None


def active(constitution: Constitution, environment: str, now: datetime) -> list[Freeze]:
    return [
        f for f in constitution.deploys.freezes if environment in f.environments and ends(f, now)
    ]


def holding(constitution: Constitution, environment: str, now: datetime) -> Freeze | None:
    """A freeze that makes approved deploys to ``environment`` wait right now."""
    return next((f for f in active(constitution, environment, now) if f.effect == "wait"), None)
