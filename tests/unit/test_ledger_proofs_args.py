"""Which status a caller gets for which proof arguments (docs/architecture.md, Ledger contract)."""

from __future__ import annotations

import pytest

from medledger.ledger.proofs import check_consistency, check_inclusion
from medledger.runtime.errors import InvalidArgument, OutOfRange


@pytest.mark.parametrize(
    ("index", "size", "current", "error"),
    [(0, 11, 10, OutOfRange), (10, 10, 10, OutOfRange), (5, 3, 10, InvalidArgument), (0, 0, 0, OutOfRange)],
)
def test_inclusion_arguments(index: int, size: int, current: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        check_inclusion(index, size, current)


def test_inclusion_arguments_inside_the_tree_pass() -> None:
    check_inclusion(9, 10, 10)
    check_inclusion(0, 1, 10)


@pytest.mark.parametrize(
    ("first", "second", "current", "error"),
    [(3, 11, 10, OutOfRange), (11, 11, 10, OutOfRange), (5, 3, 10, InvalidArgument), (0, 3, 10, InvalidArgument)],
)
def test_consistency_arguments(first: int, second: int, current: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        check_consistency(first, second, current)


def test_consistency_arguments_inside_the_tree_pass() -> None:
    check_consistency(3, 10, 10)
    check_consistency(10, 10, 10)
