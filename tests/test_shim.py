"""The native shim against the real kernel of this host (one node is enough here;
moves between nodes are proven in the VM: tests/vm)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import subprocess
import sys
from array import array

import pytest

from kmigratedd import shim
from kmigratedd.errors import KmigratedError, MovePagesError, ShimArgumentError

PAGE = shim.PAGE_SIZE


@pytest.fixture
def pages() -> tuple[mmap.mmap, array[int]]:
    n = 64
    m = mmap.mmap(-1, n * PAGE)
    m.write(bytes(range(256)) * (n * PAGE // 256))  # touch every page
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    yield m, array("Q", range(base, base + n * PAGE, PAGE))


def online_nodes() -> list[int]:
    from kmigratedd.kernelfs import KernelFs, parse_cpulist

    return sorted(parse_cpulist(KernelFs().read("/sys/devices/system/node/online")))


def test_query_reports_node_of_own_pages(pages):
    _, addrs = pages
    status = shim.query_nodes(0, addrs)
    assert len(status) == len(addrs)
    assert set(status) <= set(online_nodes())


def test_query_with_own_pid_equals_pid_zero(pages):
    _, addrs = pages
    assert list(shim.query_nodes(os.getpid(), addrs)) == list(shim.query_nodes(0, addrs))


def test_move_to_node0_and_read_statuses_back(pages):
    m, addrs = pages
    before = bytes(m)
    result = shim.move(0, addrs, 0)
    assert result.not_migrated == 0
    assert list(result.status) == [0] * len(addrs)
    assert list(shim.query_nodes(0, addrs)) == [0] * len(addrs)
    assert bytes(m) == before
    counts = shim.count_statuses(result.status)
    assert counts.by_node == {0: len(addrs)} and counts.by_errno == {} and counts.unknown == 0


def test_per_node_array_form(pages):
    _, addrs = pages
    nodes = array("i", [0] * len(addrs))
    result = shim.move(0, addrs, nodes)
    assert list(result.status) == [0] * len(addrs)


def test_unmapped_page_is_a_status_not_an_exception(pages):
    m, addrs = pages
    hole = mmap.mmap(-1, 4 * PAGE)
    hole_addr = ctypes.addressof(ctypes.c_char.from_buffer(hole))
    # A mapping that was never touched has no page: -ENOENT; address 4096 has no VMA: -EFAULT.
    batch = array("Q", [addrs[0], hole_addr, 4096, addrs[1]])
    status = shim.query_nodes(0, batch)
    assert status[0] >= 0 and status[3] >= 0
    assert status[1] in (-errno.ENOENT, -errno.EFAULT)
    assert status[2] in (-errno.ENOENT, -errno.EFAULT)
    result = shim.move(0, batch, 0)
    assert result.status[1] in (-errno.ENOENT, -errno.EFAULT)
    assert result.status[2] in (-errno.ENOENT, -errno.EFAULT)
    counts = shim.count_statuses(result.status).errno_names()
    assert sum(counts.values()) == 2 and set(counts) <= {"ENOENT", "EFAULT"}
    del hole


def test_missing_pid_raises_esrch(pages):
    _, addrs = pages
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid is free (and pid reuse within this test is implausible)
    with pytest.raises(MovePagesError) as info:
        shim.move(child.pid, addrs, 0)
    assert info.value.errno == errno.ESRCH
    assert isinstance(info.value, OSError) and isinstance(info.value, KmigratedError)
    with pytest.raises(OSError) as info2:
        shim.query_nodes(child.pid, addrs)
    assert info2.value.errno == errno.ESRCH


@pytest.mark.parametrize("node", [1, 7, 63, 1023])
def test_missing_node_fails_cleanly(pages, node):
    if node in online_nodes():
        pytest.skip(f"node {node} exists here")
    _, addrs = pages
    with pytest.raises(MovePagesError) as info:
        shim.move(0, addrs, node)
    assert info.value.errno in (errno.ENODEV, errno.EINVAL)


def test_empty_batch_is_a_noop():
    result = shim.move(0, array("Q"), 0)
    assert result.not_migrated == 0 and len(result.status) == 0
    assert len(shim.query_nodes(0, array("Q"))) == 0
    # Even for a pid that does not exist: nothing is asked of the kernel.
    assert len(shim.query_nodes(2**22 + 12345, array("Q"))) == 0


def test_batch_of_100000_pages():
    n = 100_000
    m = mmap.mmap(-1, n * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    for off in range(0, n * PAGE, 64 * PAGE):  # touch one page in 64; the rest stay absent
        m[off] = 1
    addrs = array("Q", range(base, base + n * PAGE, PAGE))
    status = shim.query_nodes(0, addrs)
    counts = shim.count_statuses(status)
    present = sum(counts.by_node.values())
    assert present == len(range(0, n * PAGE, 64 * PAGE))
    assert present + counts.by_errno.get(errno.ENOENT, 0) + counts.by_errno.get(errno.EFAULT, 0) \
        == n
    result = shim.move(0, addrs, 0)
    assert sum(shim.count_statuses(result.status).by_node.values()) == present
    del addrs, status
    m.close()


def test_status_buffer_is_reused(pages):
    _, addrs = pages
    out = array("i", [-1] * len(addrs))
    assert shim.query_nodes(0, addrs, status=out) is out
    assert min(out) >= 0


@pytest.mark.parametrize("call,match", [
    (lambda a: shim.move(-1, a, 0), "pid"),
    (lambda a: shim.move(True, a, 0), "pid"),
    (lambda a: shim.move(0, [1, 2], 0), "addresses"),
    (lambda a: shim.move(0, array("i", [1]), 0), "addresses"),
    (lambda a: shim.move(0, a, -1), "node id"),
    (lambda a: shim.move(0, a, 5000), "node id"),
    (lambda a: shim.move(0, a, array("i", [0])), "nodes: has 1 entries"),
    (lambda a: shim.move(0, a, array("Q", [0] * len(a))), "nodes"),
    (lambda a: shim.move(0, a, 0, flags=1), "flags"),
    (lambda a: shim.query_nodes(0, a, status=array("i", [0])), "status: has 1"),
])
def test_bad_arguments_are_refused_before_the_call(pages, call, match):
    _, addrs = pages
    with pytest.raises(ShimArgumentError, match=match):
        call(addrs)


def test_count_statuses_tallies_in_c():
    status = array("i", [0, 0, 1, -errno.ENOMEM, -errno.EBUSY, -errno.ENOMEM, 2, 0])
    c = shim.count_statuses(status)
    assert c.by_node == {0: 3, 1: 1, 2: 1}
    assert c.errno_names() == {"ENOMEM": 2, "EBUSY": 1}
    assert c.unknown == 0


def test_move_batched_runs_the_calls_back_to_back(pages):
    _, pages = pages
    r = shim.move_batched(0, pages, 0, batch=7)
    assert r.error is None and len(r.result.status) == len(pages)
    assert set(r.result.status) == {0} and r.result.not_migrated == 0
    assert len(r.call_seconds) == -(-len(pages) // 7) and min(r.call_seconds) > 0
    assert set(shim.query_nodes(0, pages)) == {0}


@pytest.mark.parametrize("pid,node,err", [(0, 1000, errno.ENODEV), (2**22 + 12345, 0, errno.ESRCH)])
def test_move_batched_returns_a_whole_call_failure(pages, pid, node, err):
    _, pages = pages
    r = shim.move_batched(pid, pages, node, batch=4)
    assert isinstance(r.error, MovePagesError) and r.error.errno == err
    assert len(r.result.status) == 0 and len(r.call_seconds) == 1  # stopped at the first


@pytest.mark.parametrize("kw,match", [({"batch": 0}, "batch"), ({"node": -1}, "node"),
                                      ({"flags": 99}, "flags")])
def test_move_batched_bad_arguments(pages, kw, match):
    _, pages = pages
    args = {"pid": 0, "addresses": pages, "node": 0, **kw}
    with pytest.raises(ShimArgumentError, match=match):
        shim.move_batched(**args)
