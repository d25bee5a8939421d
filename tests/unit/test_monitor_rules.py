"""The access monitor's rules (services/monitor/rules.py): what fires, once, for
which window, and that a replay after a crash never fires twice or loses one."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from medledger.monitor.rules import (
    Bucket, Counted, CountingRule, Observation, QuietPeriodRule, StagedBuckets, Windows, tally,
)

HOUR_MS = 3600 * 1000
T0 = 1_800_000_000 * 1000  # a multiple of every step used here
BREADTH = CountingRule("breadth", Windows(3600, 300), 50)
PROBING = CountingRule("probing", Windows(600, 60), 20)
QUIET = QuietPeriodRule("unusual-hours", 3600, 30 * 24 * 3600)


class Store:
    """The tables as the adapter keeps them: (rule, subject, bucket start) -> bucket."""

    def __init__(self) -> None:
        self.buckets: dict[tuple[str, str, int], Bucket] = {}

    def read(self, rule: str, subject: str, start: int) -> Bucket:
        return self.buckets.get((rule, subject, start), Bucket())

    def count(self, rules: list[CountingRule | QuietPeriodRule], batch: list[tuple[str, Observation]], keep: int | None = None) -> list:
        """Count a batch and apply its writes (only the first ``keep``: a crash mid-way)."""
        result = tally(rules, batch, self.read)
        writes = [(rule, w) for rule, ws in result.writes.items() for w in ws]
        for rule, (subject, start, bucket) in writes[:keep]:
            self.buckets[(rule, subject, start)] = bucket
        return result.firings


def read(subject: str, patient: str, at_ms: int, n: int = 0) -> Observation:
    return Observation(subject, patient, f"event-{patient}-{at_ms}-{n}", patient, at_ms)


def denial(subject: str, n: int, at_ms: int) -> Observation:
    return Observation(subject, f"event-{n}", f"event-{n}", f"patient-{n}", at_ms)


def test_breadth_fires_once_when_the_51st_distinct_patient_is_read() -> None:
    store = Store()
    batch = [("breadth", read("dr-a", f"p{i}", T0 + i * 1000)) for i in range(60)]
    fired = [store.count([BREADTH], [b]) for b in batch]
    assert [i for i, f in enumerate(fired) if f] == [50]
    (firing,) = fired[50]
    assert firing.subject == "dr-a" and firing.threshold == 50
    assert [c.patient_id for c in firing.counted] == [f"p{i}" for i in range(51)]
    # the earliest window holding the burst: it ends one step after the burst's bucket
    assert (firing.window_start_s, firing.window_end_s) == (T0 // 1000 - 3300, T0 // 1000 + 300)


def test_breadth_counts_each_patient_once_and_each_practitioner_apart() -> None:
    store = Store()
    same_patients = [("breadth", read("dr-a", f"p{i % 10}", T0 + i * 1000, i)) for i in range(200)]
    assert store.count([BREADTH], same_patients) == []
    others = [("breadth", read(f"dr-{i}", f"p{i}", T0)) for i in range(100)]
    assert store.count([BREADTH], others) == []


def test_reads_more_than_a_window_apart_never_add_up() -> None:
    store = Store()
    early = [("breadth", read("dr-a", f"early-{i}", T0 + i)) for i in range(40)]
    late = [("breadth", read("dr-a", f"late-{i}", T0 + HOUR_MS + 300_000 + i)) for i in range(40)]
    assert store.count([BREADTH], early + late) == []


def test_reads_across_buckets_of_one_window_add_up() -> None:
    store = Store()
    spread = [("breadth", read("dr-a", f"p{i}", T0 + i * 60_000)) for i in range(51)]  # 51 minutes, 11 buckets
    (firing,) = store.count([BREADTH], spread)
    assert firing.window_start_s <= T0 // 1000 and firing.window_end_s > (T0 + 50 * 60_000) // 1000


def test_sustained_abuse_raises_one_alert_per_window_length_not_per_window() -> None:
    store = Store()
    batch = [("probing", denial("r", n, T0 + n * 10_000)) for n in range(360)]  # one denial every 10 s for an hour
    firings = store.count([PROBING], batch)
    windows = [(f.window_start_s, f.window_end_s) for f in firings]
    # 60 denials per 10 minutes: every window crosses 20, but alerts come back to
    # back, each from the end of the last (seven 10-minute windows span the hour).
    assert len(windows) == 7
    assert all(b[0] == a[1] for a, b in zip(windows, windows[1:])), windows
    for f in firings:
        at = [int(c.event_id.split("-")[1]) * 10 + T0 // 1000 for c in f.counted]
        assert all(f.window_start_s <= t < f.window_end_s for t in at)


def test_an_event_delivered_twice_counts_once() -> None:
    store = Store()
    twenty = [("probing", denial("r", n, T0)) for n in range(20)]
    assert store.count([PROBING], twenty + twenty) == []
    assert len(store.count([PROBING], [("probing", denial("r", 20, T0))])) == 1


def test_a_bucket_keeps_at_most_threshold_plus_one_items() -> None:
    store = Store()
    store.count([PROBING], [("probing", denial("r", n, T0)) for n in range(5000)])
    assert max(len(b.counted) for b in store.buckets.values()) == PROBING.cap


def test_marks_are_written_before_the_counts_that_raised_them() -> None:
    staged = StagedBuckets(lambda start: Bucket())
    staged.put(10, Bucket((Counted("a", "e1", "p"),)))
    staged.put(20, Bucket((), fired=True))
    staged.put(30, Bucket((Counted("b", "e2", "p"),)))
    assert [start for start, _ in staged.writes()] == [20, 10, 30]


@settings(max_examples=60, deadline=None)
@given(total=st.integers(min_value=21, max_value=60), crash_after=st.integers(min_value=0, max_value=40))
def test_a_replay_after_a_crash_at_any_point_fires_the_identical_alert_or_none(total: int, crash_after: int) -> None:
    """The adapter publishes firings, then writes; a crash may persist any prefix
    of the writes. Counting the batch again must fire nothing new, or exactly
    the alert already published (same window, same counted events)."""
    batch = [("probing", denial("r", n, T0 + n * 1000)) for n in range(total)]
    store = Store()
    (first,) = store.count([PROBING], batch, keep=crash_after)
    again = store.count([PROBING], batch)
    assert again in ([], [first])
    assert store.count([PROBING], batch) == []  # once recorded, never again
    # and the alert stays recorded: a denial just after its window (every window
    # holding it overlaps the alerted one) raises nothing
    later = denial("r", 10_000, first.window_end_s * 1000)
    assert store.count([PROBING], [("probing", later)]) == []


def test_quiet_period_fires_on_the_first_read_after_30_quiet_days() -> None:
    store = Store()
    day = 24 * HOUR_MS
    first = store.count([QUIET], [("unusual-hours", read("dr-a", "e1", T0))])
    assert len(first) == 1 and first[0].threshold == 0 and len(first[0].counted) == 1
    assert first[0].window_end_s - first[0].window_start_s == 30 * 24 * 3600 + 3600
    assert store.count([QUIET], [("unusual-hours", read("dr-a", "e2", T0 + 60_000))]) == []
    assert store.count([QUIET], [("unusual-hours", read("dr-a", "e3", T0 + 20 * day))]) == []
    assert len(store.count([QUIET], [("unusual-hours", read("dr-a", "e4", T0 + 51 * day))])) == 1
    assert len(store.count([QUIET], [("unusual-hours", read("dr-b", "e5", T0))])) == 1


def test_windows_are_aligned_and_whole() -> None:
    w = Windows(3600, 300)
    assert w.bucket_of(T0 + 299_999) == T0 // 1000 and w.bucket_of(T0 + 300_000) == T0 // 1000 + 300
    assert len(w.containing(T0)) == 12 and w.containing(T0)[-1] == T0 // 1000
    for bad in ((3600, 7), (0, 60), (60, 0)):
        try:
            Windows(*bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")
