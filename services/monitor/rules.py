"""The access monitor's rules (docs/architecture.md, Access monitor). Pure: no
Kafka, no faust, no clock; the adapter (app.py) hands in what a rule reads and
writes the changes it returns.

Every rule counts *observations* (an event reduced to who, what, which event,
when) for one subject over windows of event time, aligned to multiples of their
step since the epoch. State lives in tumbling *buckets* of one step per subject
(a faust windowed table, one per rule): a hopping window of size W and step S is
the W/S consecutive buckets it covers. So each observation writes one bucket,
not every window that contains it, and a window's count is the union of its
buckets.

A bucket keeps at most threshold + 1 distinct items: a window that holds that
many has crossed its threshold whatever else arrives, so state stays bounded
under attack. Items are distinct per window, so an event counted twice (faust
delivers at least once) counts once.

One alert per overlapping episode: when a window crosses its threshold, the
bucket where it starts is marked, and no window of the same rule and subject
that overlaps a marked window fires. Windows are tried earliest first, so a
burst fires for the earliest window that contains it, whose end is at most one
step after the burst.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

MS = 1000


@dataclass(frozen=True)
class Observation:
    """One event a rule counts, reduced to ids and a time (no PHI)."""

    subject: str  # whom the rule counts for: a practitioner or a requester
    item: str  # what the window counts once: a patient id (breadth) or an event id
    event_id: str
    patient_id: str
    at_ms: int  # the event's occurred_at, in Unix milliseconds


@dataclass(frozen=True)
class Counted:
    """An item as a bucket keeps it."""

    item: str
    event_id: str
    patient_id: str

    @classmethod
    def of(cls, observation: Observation) -> Counted:
        return cls(observation.item, observation.event_id, observation.patient_id)


@dataclass(frozen=True)
class Bucket:
    """One step of one subject's state: what it counted, in arrival order, and
    whether the window starting here raised an alert."""

    counted: tuple[Counted, ...] = ()
    fired: bool = False

    def holds(self, item: str) -> bool:
        return any(c.item == item for c in self.counted)

    def to_json(self) -> list[object]:
        return [[[c.item, c.event_id, c.patient_id] for c in self.counted], self.fired]

    @classmethod
    def from_json(cls, value: Any) -> Bucket:
        """The table's value, or an empty bucket for a key never written."""
        if not value:
            return cls()
        items, marked = value
        return cls(tuple(Counted(*c) for c in items), bool(marked))


EMPTY = Bucket()


@dataclass(frozen=True)
class Windows:
    """Hopping windows of ``size_s`` seconds every ``step_s`` seconds, aligned to
    multiples of the step since the epoch, made of tumbling buckets of one step."""

    size_s: int
    step_s: int

    def __post_init__(self) -> None:
        if self.step_s <= 0 or self.size_s <= 0 or self.size_s % self.step_s:
            raise ValueError(f"a window of {self.size_s} s is not a whole number of {self.step_s} s steps")

    @property
    def buckets(self) -> int:
        return self.size_s // self.step_s

    def bucket_of(self, at_ms: int) -> int:
        """Start (Unix seconds) of the bucket holding this instant."""
        return (at_ms // (self.step_s * MS)) * self.step_s

    def containing(self, at_ms: int) -> list[int]:
        """Starts of the windows that contain this instant, earliest first."""
        last = self.bucket_of(at_ms)
        return [last - k * self.step_s for k in range(self.buckets - 1, -1, -1)]

    def covering(self, start: int) -> range:
        """Bucket starts of the window starting at ``start``."""
        return range(start, start + self.size_s, self.step_s)

    def overlapping(self, start: int) -> range:
        """Starts of the windows that overlap the one starting at ``start``."""
        return range(start - self.size_s + self.step_s, start + self.size_s, self.step_s)


@dataclass(frozen=True)
class Firing:
    """A rule fired for a subject and window: what an AccessAlert reports."""

    rule: str
    subject: str
    window_start_s: int
    window_end_s: int
    threshold: int
    counted: tuple[Counted, ...]


class StagedBuckets:
    """One subject's buckets of one rule while a batch is counted: read through
    ``read`` once each, changed here, written by the adapter afterwards.

    ``writes()`` lists buckets carrying a new alert mark first. Every bucket of a
    subject lives in the same changelog partition, where a write lands only after
    the ones before it; so a crash can lose a batch's counts but never keep them
    without the mark of an alert they raised (which the adapter publishes before
    writing anything), and a replay of the batch cannot fire that alert twice.
    """

    def __init__(self, read: Callable[[int], Bucket]) -> None:
        self._read = read
        self._seen: dict[int, Bucket] = {}
        self._changed: dict[int, Bucket] = {}
        self._marked: set[int] = set()

    def get(self, start: int) -> Bucket:
        bucket = self._seen.get(start)
        if bucket is None:
            bucket = self._seen[start] = self._read(start)
        return bucket

    def put(self, start: int, bucket: Bucket) -> None:
        if bucket.fired and not self.get(start).fired:
            self._marked.add(start)
        self._seen[start] = self._changed[start] = bucket

    def writes(self) -> list[tuple[int, Bucket]]:
        marked = [(s, b) for s, b in self._changed.items() if s in self._marked]
        return marked + [(s, b) for s, b in self._changed.items() if s not in self._marked]


@dataclass(frozen=True)
class CountingRule:
    """More than ``threshold`` distinct items for one subject within one window."""

    name: str
    windows: Windows
    threshold: int

    @property
    def cap(self) -> int:
        """Items a bucket keeps at most."""
        return self.threshold + 1

    @property
    def reach_s(self) -> int:
        """How far back from the newest bucket the rule still reads a bucket: the
        overlapping windows' marks. The table may forget older buckets."""
        return 2 * self.windows.size_s

    def count(self, buckets: StagedBuckets, observation: Observation) -> Firing | None:
        """Count one observation; the Firing when it makes a window cross the threshold."""
        windows = self.windows
        start = windows.bucket_of(observation.at_ms)
        bucket = buckets.get(start)
        if bucket.holds(observation.item) or len(bucket.counted) >= self.cap:
            return None
        buckets.put(start, replace(bucket, counted=bucket.counted + (Counted.of(observation),)))
        candidates = windows.containing(observation.at_ms)
        span = range(candidates[0], candidates[-1] + windows.size_s, windows.step_s)
        if len(_distinct(buckets.get(s) for s in span)) <= self.threshold:
            return None  # the common case: no window that holds this event is near its threshold
        for window in candidates:
            if any(buckets.get(s).fired for s in windows.overlapping(window)):
                continue
            counted = _distinct(buckets.get(s) for s in windows.covering(window))
            if len(counted) > self.threshold:
                buckets.put(window, replace(buckets.get(window), fired=True))
                return Firing(
                    self.name, observation.subject, window, window + windows.size_s, self.threshold,
                    tuple(counted[: self.cap]),
                )
        return None


@dataclass(frozen=True)
class QuietPeriodRule:
    """The first observation of a subject after ``lookback_s`` without any: an
    off-hours read by a practitioner who had none in the previous 30 days."""

    name: str
    bucket_s: int
    lookback_s: int

    def __post_init__(self) -> None:
        if self.bucket_s <= 0 or self.lookback_s <= 0 or self.lookback_s % self.bucket_s:
            raise ValueError(f"a look-back of {self.lookback_s} s is not a whole number of {self.bucket_s} s buckets")

    @property
    def reach_s(self) -> int:
        return self.lookback_s + self.bucket_s

    def count(self, buckets: StagedBuckets, observation: Observation) -> Firing | None:
        """Keep the first observation of each bucket; fire when no bucket of the
        look-back before it holds one."""
        start = (observation.at_ms // (self.bucket_s * MS)) * self.bucket_s
        if buckets.get(start).counted:
            return None
        buckets.put(start, Bucket((Counted.of(observation),)))
        earlier = range(start - self.lookback_s, start, self.bucket_s)
        if any(buckets.get(s).counted for s in earlier):
            return None
        return Firing(
            self.name, observation.subject, start - self.lookback_s, start + self.bucket_s, 0,
            (Counted.of(observation),),
        )


Rule = CountingRule | QuietPeriodRule


def _distinct(buckets: Iterable[Bucket]) -> list[Counted]:
    """Each item once, in window order: bucket by bucket, each in arrival order."""
    seen: set[str] = set()
    out: list[Counted] = []
    for bucket in buckets:
        for c in bucket.counted:
            if c.item not in seen:
                seen.add(c.item)
                out.append(c)
    return out


@dataclass
class Tally:
    """What counting a batch produced: firings to publish, then bucket writes."""

    firings: list[Firing] = field(default_factory=list)
    writes: dict[str, list[tuple[str, int, Bucket]]] = field(default_factory=dict)  # rule -> (subject, start, bucket)


def tally(
    rules: Sequence[Rule],
    observations: Iterable[tuple[str, Observation]],
    read: Callable[[str, str, int], Bucket],
) -> Tally:
    """Count a batch of (rule name, observation) in order. ``read(rule, subject,
    start)`` gives a stored bucket. Publish every firing (and wait for the
    broker's acknowledgement) before applying the writes, in the order given."""
    by_name = {rule.name: rule for rule in rules}
    staged: dict[tuple[str, str], StagedBuckets] = {}
    result = Tally()
    for name, observation in observations:
        rule = by_name.get(name)
        if rule is None:
            continue
        key = (name, observation.subject)
        buckets = staged.get(key)
        if buckets is None:
            buckets = staged[key] = StagedBuckets(_reader(read, name, observation.subject))
        firing = rule.count(buckets, observation)
        if firing is not None:
            result.firings.append(firing)
    for (name, subject), buckets in staged.items():
        result.writes.setdefault(name, []).extend((subject, start, b) for start, b in buckets.writes())
    return result


def _reader(read: Callable[[str, str, int], Bucket], rule: str, subject: str) -> Callable[[int], Bucket]:
    return lambda start: read(rule, subject, start)

