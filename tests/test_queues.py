"""Candidate queues: property tests against a Python model (bound, coalescing, drops)."""

from __future__ import annotations

from array import array
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmigratedd.errors import ShimArgumentError
from kmigratedd.queues import CandidateQueues, QueueThreadError, merge
from kmigratedd.shim import NativeQueue

PAGE = 4096

sample = st.tuples(st.integers(1, 4), st.integers(0, 40), st.integers(0, 3), st.integers(1, 5))


class Model:
    """FIFO of (pid, page) with counts; a re-seen page keeps its place."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.d: OrderedDict[tuple[int, int], list[int]] = OrderedDict()
        self.pushed = self.coalesced = self.dropped = 0

    def push(self, pid: int, page: int, t: int, w: int) -> None:
        self.pushed += 1
        key = (pid, page)
        if key in self.d:
            e = self.d[key]
            e[0] += w
            e[2] = max(e[2], t)
            self.coalesced += 1
            return
        if len(self.d) == self.cap:
            self.d.popitem(last=False)
            self.dropped += 1
        self.d[key] = [w, t, t]

    def drain(self, n: int) -> list[tuple[int, int, int, int, int]]:
        out = []
        for _ in range(min(n, len(self.d))):
            (pid, page), (c, f, last) = self.d.popitem(last=False)
            out.append((pid, page * PAGE, c, f, last))
        return out


@settings(max_examples=300, deadline=None)
@given(cap=st.integers(1, 12),
       ops=st.lists(st.one_of(st.lists(sample, max_size=30).map(lambda s: ("push", s)),
                              st.integers(0, 15).map(lambda n: ("drain", n))), max_size=25))
def test_queue_matches_model(cap, ops):
    q, m = NativeQueue(cap, PAGE), Model(cap)
    t = 0
    for op, arg in ops:
        if op == "push":
            pids, addrs, times, weights = array("i"), array("Q"), array("Q"), array("I")
            for pid, page, off, w in arg:
                t += 1
                pids.append(pid)
                addrs.append(page * PAGE + off * 8)  # any address within the page
                times.append(t)
                weights.append(w)
                m.push(pid, page, t, w)
            q.push(pids, addrs, times=times, weights=weights)
        else:
            b = q.drain(arg)
            got = list(zip(b.pids, b.addrs, b.counts, b.first_ns, b.last_ns))
            assert got == m.drain(arg)
        assert len(q) == len(m.d) <= cap  # the bound holds after every operation
        s = q.stats()
        assert (s.pushed, s.coalesced, s.dropped) == (m.pushed, m.coalesced, m.dropped)
        # Every sample is accounted for: in the queue, folded, dropped or drained.
        assert s.pushed - s.coalesced == len(q) + s.dropped + s.drained


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=3000))
def test_heavy_churn_keeps_index_consistent(pages):
    """Many evictions (backward-shift deletes) must never lose or duplicate a key."""
    q, m = NativeQueue(64, PAGE), Model(64)
    q.push(array("i", [7] * len(pages)), array("Q", [p * PAGE for p in pages]))
    for p in pages:
        m.push(7, p, 0, 1)
    b = q.drain(1000)
    assert [(a, c) for a, c in zip(b.addrs, b.counts)] == [(x[1], x[2]) for x in m.drain(1000)]


def test_unknown_node_and_node_update():
    q = NativeQueue(8, PAGE)
    q.push(array("i", [1, 1]), array("Q", [PAGE, PAGE]), nodes=array("i", [-1, 2]))
    b = q.drain(8)
    assert list(b.nodes) == [2] and list(b.counts) == [2]


def test_bad_queue_arguments():
    with pytest.raises(ShimArgumentError):
        NativeQueue(0)
    with pytest.raises(ShimArgumentError):
        NativeQueue(8, 3000)
    q = NativeQueue(8)
    with pytest.raises(ShimArgumentError, match="addrs: has 1 entries for 2 pids"):
        q.push(array("i", [1, 2]), array("Q", [0]))
    with pytest.raises(ShimArgumentError, match="times"):
        q.push(array("i", [1]), array("Q", [0]), times=array("Q", [1, 2]))


def test_per_cpu_queues_drain_fairly_and_stay_bounded():
    qs = CandidateQueues([0, 1, 2, 3], capacity_per_cpu=100, page_size=PAGE)
    for cpu in range(4):
        n = 250
        qs.push(cpu, array("i", [cpu + 1] * n), array("Q", [i * PAGE for i in range(n)]))
    s = qs.stats()
    assert s.depth == 400 and s.dropped == 4 * 150 and s.per_cpu_depth == (100,) * 4
    batches = qs.drain(40)
    b = merge(batches)
    assert len(b) == 40
    assert sorted(set(b.pids)) == [1, 2, 3, 4]  # every CPU got its share
    assert sum(len(x) for x in qs.drain(10_000)) == 360
    assert len(qs) == 0
    assert qs.memory_bytes == 4 * 100 * 48


def test_unknown_cpu_maps_to_a_known_queue():
    qs = CandidateQueues([0, 1], capacity_per_cpu=4, page_size=PAGE)
    qs.push(17, array("i", [1]), array("Q", [0]))
    assert len(qs) == 1


def test_queues_refuse_a_push_from_another_thread():
    """The native queues have no lock: only the thread that created them may use them."""
    from workerfake import offer, pages

    q = CandidateQueues([0], 1 << 10, page_size=PAGE)
    pool = ThreadPoolExecutor(1)
    try:
        with pytest.raises(QueueThreadError):
            pool.submit(offer, q, 5, pages(4)).result()
        with pytest.raises(QueueThreadError):
            pool.submit(q.drain, 10).result()
    finally:
        pool.shutdown()
    offer(q, 5, pages(4))
    assert len(q) == 4
