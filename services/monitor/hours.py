"""Organizations' working hours, for the unusual-hours rule. Pure (zoneinfo's
time-zone database is the only thing read).

``MEDLEDGER_MONITOR_WORKING_HOURS`` lists schedules separated by ``;``, each
``<organization id or *>=<days> <HH:MM>-<HH:MM> <IANA time zone>``, e.g.
``*=Mon-Fri 07:00-19:00 Europe/Paris; 0190c2d4-...=Mon-Sun 06:00-22:00 UTC``.
``*`` is every organization not listed. Days are a range (``Mon-Fri``, ``Sat-Sun``)
or a comma list (``Mon,Wed,Fri``); an end at or before the start is a shift past
midnight (``22:00-06:00``), which belongs to the day it starts; ``24:00`` is midnight
at the end of the day. A read for an organization with no schedule is never unusual.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EVERY_ORGANIZATION = "*"
_ENTRY = re.compile(r"^(?P<days>[A-Za-z,-]+)\s+(?P<start>\d{2}:\d{2})-(?P<end>\d{2}:\d{2})\s+(?P<zone>\S+)$")


@dataclass(frozen=True)
class Schedule:
    """Working hours: on ``days`` (0 = Monday) from ``start`` to ``end`` minutes
    after local midnight, in ``zone``."""

    days: frozenset[int]
    start: int
    end: int
    zone: ZoneInfo

    def covers(self, at_ms: int) -> bool:
        local = datetime.fromtimestamp(at_ms / 1000, self.zone)
        minute = local.hour * 60 + local.minute
        today = local.weekday()
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        yesterday = (local - timedelta(days=1)).weekday()
        return (today in self.days and minute >= self.start) or (yesterday in self.days and minute < self.end)


@dataclass(frozen=True)
class WorkingHours:
    """Each organization's schedule, and the one for every other organization."""

    schedules: Mapping[str, Schedule]

    @property
    def enabled(self) -> bool:
        return bool(self.schedules)

    def outside(self, organization_id: str, at_ms: int) -> bool:
        """Whether a read for this organization at this instant is outside its hours."""
        schedule = self.schedules.get(organization_id) or self.schedules.get(EVERY_ORGANIZATION)
        return schedule is not None and bool(organization_id) and not schedule.covers(at_ms)


def parse_working_hours(text: str) -> WorkingHours:
    """The setting's schedules; ValueError naming the entry that is wrong."""
    schedules: dict[str, Schedule] = {}
    for entry in (e.strip() for e in text.split(";")):
        if not entry:
            continue
        organization, sep, spec = entry.partition("=")
        organization = organization.strip()
        if not sep or not organization:
            raise ValueError(f"{entry!r}: expected <organization id or *>=<days> <HH:MM>-<HH:MM> <time zone>")
        if organization in schedules:
            raise ValueError(f"{organization!r} has two schedules")
        schedules[organization] = _schedule(entry, spec.strip())
    return WorkingHours(schedules)


def _schedule(entry: str, spec: str) -> Schedule:
    match = _ENTRY.match(spec)
    if match is None:
        raise ValueError(f"{entry!r}: expected <days> <HH:MM>-<HH:MM> <time zone>, e.g. Mon-Fri 07:00-19:00 UTC")
    try:
        zone = ZoneInfo(match["zone"])
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{entry!r}: unknown time zone {match['zone']!r}") from None
    start, end = _minute(entry, match["start"]), _minute(entry, match["end"])
    if start == 24 * 60:
        raise ValueError(f"{entry!r}: a shift cannot start at 24:00")
    return Schedule(_days(entry, match["days"]), start, end, zone)


def _minute(entry: str, text: str) -> int:
    hours, minutes = int(text[:2]), int(text[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"{entry!r}: {text} is not a time of day")
    return hours * 60 + minutes


def _day(entry: str, name: str) -> int:
    try:
        return DAYS.index(name.strip().lower())
    except ValueError:
        raise ValueError(f"{entry!r}: {name!r} is not a day (Mon..Sun)") from None


def _days(entry: str, text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        a = _day(entry, first)
        b = _day(entry, last) if dash else a
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)
