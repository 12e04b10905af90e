"""The native candidate-batch helpers (native/kmcand.c) against plain-Python models."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmigratedd import shim
from kmigratedd.errors import ShimArgumentError

u64 = st.integers(min_value=0, max_value=2**64 - 1)
PAGE_MASK = ~0xFFF


@given(st.lists(st.one_of(u64, st.integers(0, 20)), max_size=300))
def test_sort_unique_matches_sorted_set(values: list[int]) -> None:
    v = array("Q", values)
    shim.sort_unique(v)
    assert list(v) == sorted(set(values))


def test_sort_unique_keeps_sorted_input_and_empty() -> None:
    v = array("Q", range(0, 10 << 12, 1 << 12))
    shim.sort_unique(v)
    assert list(v) == list(range(0, 10 << 12, 1 << 12))
    e = array("Q")
    shim.sort_unique(e)
    assert len(e) == 0
    with pytest.raises(ShimArgumentError):
        shim.sort_unique(array("i", [3, 1]))


@given(st.lists(st.tuples(st.integers(0, 2**40).map(lambda a: a << 12),
                          st.integers(-14, 5), st.integers(-2, 3)), max_size=200),
       st.integers(0, 3))
def test_keys_for_selects_one_target_and_packs_the_node(rows: list[tuple[int, int, int]],
                                                       dst: int) -> None:
    addrs = array("Q", [r[0] for r in rows])
    status = array("i", [r[1] for r in rows])
    tgt = array("i", [r[2] for r in rows])
    want = [a | (s & 0xFFFFFFFF) for a, s, t in rows if t == dst]
    assert list(shim.keys_for(addrs, status, tgt, dst)) == want


def test_keys_for_refuses_short_arrays() -> None:
    with pytest.raises(ShimArgumentError):
        shim.keys_for(array("Q", [0, 4096]), array("i", [1]), array("i", [0, 0]), 0)


@given(st.lists(u64, max_size=200))
def test_split_keys(keys: list[int]) -> None:
    addrs, low = shim.split_keys(array("Q", keys), PAGE_MASK)
    assert list(addrs) == [k & PAGE_MASK & (2**64 - 1) for k in keys]
    assert list(low) == [k & 0xFFF for k in keys]


@given(st.lists(st.integers(0, 50)), st.lists(st.integers(0, 50)))
def test_remove_sorted(values: list[int], remove: list[int]) -> None:
    v = array("Q", sorted(set(values)))
    shim.remove_sorted(v, array("Q", sorted(set(remove))))
    assert list(v) == sorted(set(values) - set(remove))
