"""Token buckets keyed by who asks (an identity id, a peer address), for rate
limits on public rpcs (identity's Challenge). Pure: the caller passes the
clock, so tests need no sleeping.

Each key has a bucket of ``burst`` tokens refilled at ``per_minute``; a call
takes one or is refused. Keys are kept in least-recently-used order and at
most ``max_keys`` of them: a forgotten key starts again with a full bucket,
which only matters to someone able to make max_keys other keys busy, and
the per-peer limit stops one peer from doing that.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    def __init__(self, burst: int, per_minute: float, max_keys: int = 100_000) -> None:
        if burst < 1 or per_minute <= 0 or max_keys < 1:
            raise ValueError("a rate limit needs burst >= 1, a positive rate and room for at least one key")
        self.burst = burst
        self.per_second = per_minute / 60.0
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str, now: float) -> bool:
        """Whether ``key`` may make one more call at ``now`` (monotonic seconds)."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + max(0.0, now - bucket.at) * self.per_second)
        bucket.at = now
        allowed = bucket.tokens >= 1.0
        if allowed:
            bucket.tokens -= 1.0
        self._buckets[key] = bucket
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` has a whole token again (0 if it has one)."""
        bucket = self._buckets.get(key)
        if bucket is None or bucket.tokens >= 1.0:
            return 0.0
        return (1.0 - bucket.tokens) / self.per_second


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string, without the port, so every
    connection from one host shares a bucket: ``ipv4:10.0.0.7:51234`` ->
    ``ipv4:10.0.0.7``, ``ipv6:[::1]:51234`` -> ``ipv6:[::1]``; others as given."""
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv4":
        return f"ipv4:{rest.rpartition(':')[0] or rest}"
    if scheme == "ipv6" and rest.startswith("["):
        return f"ipv6:{rest.partition(']')[0]}]"
    return peer
