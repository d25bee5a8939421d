"""Where a projection rebuilt from the events differs from the live one,
with no I/O: rows keyed by their primary key, compared column by column.

A divergence names the projection, the table, the row's key and the column,
and shows both values (ids, times, hashes: the replayed tables hold no PHI).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Divergence:
    projection: str  # "identity", "consent", ...
    table: str
    key: str
    column: str = ""  # empty: the whole row is missing on one side
    rebuilt: str = ""
    live: str = ""

    def describe(self) -> str:
        where = f"{self.projection}.{self.table} {self.key}"
        if not self.column:
            return f"{where}: {'only in the events' if self.live == 'missing' else 'only in the live database'}"
        return f"{where} {self.column}: events say {self.rebuilt}, live has {self.live}"

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


def show(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()[:32] or "(empty)"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def _full(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_full(v) for v in value) + "]"
    return show(value)


def diff_rows(
    projection: str, table: str, key: Sequence[str], rebuilt: Sequence[Row], live: Sequence[Row],
    columns: Sequence[str] | None = None,
) -> list[Divergence]:
    """Every row only on one side, and every column that differs."""
    def keyed(rows: Sequence[Row]) -> dict[tuple[Any, ...], Row]:
        return {tuple(r[k] for k in key): r for r in rows}

    a, b = keyed(rebuilt), keyed(live)
    out: list[Divergence] = []
    for k in sorted(set(a) | set(b), key=lambda t: tuple(show(v) for v in t)):
        name = "/".join(show(v) for v in k)
        if k not in b:
            out.append(Divergence(projection, table, name, rebuilt="present", live="missing"))
            continue
        if k not in a:
            out.append(Divergence(projection, table, name, rebuilt="missing", live="present"))
            continue
        for column in columns or [c for c in a[k].keys() if c not in key]:
            x, y = a[k][column], b[k][column]
            if _full(x) != _full(y):  # compared whole; shown shortened
                out.append(Divergence(projection, table, name, column, show(x), show(y)))
    return out
