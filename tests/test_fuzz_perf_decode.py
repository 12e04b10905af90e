"""Property-based fuzzing of the perf ring decoder (shim.perf_drain, native/kmperf.c).

Random ring contents, ring geometry (data_offset, data_size, buffer length) and
data_head/data_tail, and well-formed rings of random records placed anywhere in the
ring. Each example is decoded in a forked child whose ring ends at a PROT_NONE guard
page, so a read past the ring kills the child with SIGSEGV (reported with the example)
instead of passing unseen. The decoder must never crash or read out of bounds, and
what it reports must add up: samples == the count returned, the tail moved by exactly
the bytes counted, never past the head, and at most one truncation per call.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import signal
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzzutil import FUZZ, reported  # noqa: E402
from test_perf_decode import (  # noqa: E402
    HEAD, HINT_FAULTS, IBS, LOST, PEBS, SAMPLE, SIZE, TAIL, THROTTLE, UNTHROTTLE,
    record, sample_body)

from kmigratedd import shim  # noqa: E402
from kmigratedd.errors import ShimArgumentError  # noqa: E402

PAGE = mmap.PAGESIZE
U64 = (1 << 64) - 1
SAMPLE_TYPES = [HINT_FAULTS, PEBS, IBS, HINT_FAULTS | shim.PERF_SAMPLE_IDENTIFIER]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def guarded(ring: bytes) -> tuple[mmap.mmap, memoryview]:
    """A writable copy of ``ring`` whose last byte is the last before a PROT_NONE page."""
    pages = (len(ring) + PAGE - 1) // PAGE + 2
    m = mmap.mmap(-1, pages * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    for addr in (base, base + (pages - 1) * PAGE):
        if _libc.mprotect(addr, PAGE, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")
    start = (pages - 1) * PAGE - len(ring)
    view = memoryview(m)[start:start + len(ring)]
    view[:] = ring
    return m, view


def drain_in_child(ring: bytes, sample_type: int, cap: int) -> dict[str, Any]:
    """Decode ``ring`` in a forked child; the child's findings, or how it died."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: nothing but the decode and one write
        try:
            os.close(r)
            _m, view = guarded(ring)
            meta = bytes(view[:min(len(view), SIZE + 8)]).ljust(SIZE + 8, b"\0")
            head, tail = struct.unpack_from("<QQ", meta, HEAD)
            out = shim.SampleBuffer(cap)
            stats = shim.new_perf_stats()
            try:
                n = shim.perf_drain(view, sample_type, out, stats)
                err = None
            except ShimArgumentError as exc:
                n, err = -1, str(exc)
            after = bytes(view[:min(len(view), SIZE + 8)]).ljust(SIZE + 8, b"\0")
            s = shim.read_perf_stats(stats)
            res = {"n": n, "err": err, "out_n": out.n, "head": head, "tail": tail,
                   "tail_after": struct.unpack_from("<Q", after, TAIL)[0],
                   "stats": {f: getattr(s, f) for f in shim.PerfStats.__slots__},
                   "pids": list(out.column("pid"))}
            os.write(w, json.dumps(res).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"signal": signal.Signals(os.WTERMSIG(status)).name}
    return dict(json.loads(data))


def check_consistent(res: dict[str, Any], cap: int) -> None:
    assert "signal" not in res, f"the decoder crashed: {res['signal']}"
    if res["err"] is not None:  # refused geometry: the ring is left alone
        assert res["tail_after"] == res["tail"], res
        return
    s = res["stats"]
    assert 0 <= res["n"] <= cap and res["n"] == res["out_n"] == s["samples"], res
    assert s["truncated"] in (0, 1), res
    moved = (res["tail_after"] - res["tail"]) & U64
    assert moved == s["bytes"], res
    records = s["samples"] + s["lost_records"] + s["throttled"] + s["unthrottled"] + s["unknown"]
    assert records * 8 <= s["bytes"], res
    if res["tail"] < res["head"]:
        assert res["tail"] <= res["tail_after"] <= res["head"], res
        if s["truncated"]:
            assert res["tail_after"] == res["head"], res
    else:
        assert res["tail_after"] == res["tail"] and s["bytes"] == 0, res


# --- random geometry and contents ------------------------------------------------------

u64s = st.one_of(st.integers(0, U64), st.integers(0, 1 << 20),
                 st.sampled_from([0, 8, PAGE, 2 * PAGE, U64, U64 - 7, U64 - PAGE + 1, 1 << 63]))


@st.composite
def random_rings(draw: st.DrawFn) -> tuple[bytes, int, int]:
    length = draw(st.one_of(st.sampled_from([0, 8, 1040, 1055, PAGE, PAGE + 64, PAGE + 256,
                                             2 * PAGE, 5 * PAGE]),
                            st.integers(0, 3 * PAGE)))
    ring = bytearray(draw(st.binary(min_size=0, max_size=512)).ljust(length, b"\0")[:length])
    if length > PAGE:  # random bytes in the data area too
        chunk = draw(st.binary(max_size=1024))
        at = draw(st.integers(PAGE, length))
        ring[at:at + len(chunk)] = chunk[:length - at]
    if length >= SIZE + 8:
        off = draw(st.one_of(st.just(PAGE), u64s))
        size = draw(st.one_of(st.sampled_from([length - PAGE if length > PAGE else 0, 0, 8, 16,
                                               64, 128, PAGE]), u64s))
        head = draw(u64s)
        tail = draw(st.one_of(u64s, st.integers(max(0, head - 4096), head)))
        struct.pack_into("<QQQQ", ring, HEAD, head, tail, off, size)
    st_ = draw(st.sampled_from(SAMPLE_TYPES))
    cap = draw(st.sampled_from([0, 1, 3, 1024]))
    return bytes(ring), st_, cap


def test_random_rings_never_crash_and_add_up(request: pytest.FixtureRequest) -> None:
    with reported(request) as count:
        @FUZZ
        @given(case=random_rings())
        def prop(case: tuple[bytes, int, int]) -> None:
            count()
            ring, sample_type, cap = case
            check_consistent(drain_in_child(ring, sample_type, cap), cap)

        prop()


# --- well-formed rings: every record decoded, wherever it sits -------------------------

records = st.lists(st.one_of(
    st.tuples(st.just(SAMPLE), st.integers(0, 10_000)),
    st.tuples(st.sampled_from([LOST]), st.integers(0, 1 << 32)),
    st.tuples(st.sampled_from([THROTTLE, UNTHROTTLE]), st.just(0)),
    st.tuples(st.integers(10, 1 << 20), st.integers(0, 30))), max_size=60)


def well_formed(recs: list[tuple[int, int]], data_pages: int, start: int,
                sample_type: int) -> None:
    size = data_pages * PAGE
    stream = b""
    want_pids: list[int] = []
    lost = 0
    for type_, v in recs:
        if type_ == SAMPLE:
            rec = record(SAMPLE, sample_body(sample_type, v))
        elif type_ == LOST:
            rec = record(LOST, struct.pack("<QQ", 1, v))
        elif type_ in (THROTTLE, UNTHROTTLE):
            rec = record(type_, struct.pack("<QQQ", 1, 2, 3))
        else:
            rec = record(type_, b"\0" * 8 * v)
        if len(stream) + len(rec) > size:
            break
        stream += rec
        if type_ == SAMPLE:
            want_pids.append(1000 + v)
        elif type_ == LOST:
            lost += v
    ring = bytearray(PAGE + size)
    for k, byte in enumerate(stream):
        ring[PAGE + (start + k) % size] = byte
    struct.pack_into("<QQQQ", ring, HEAD, start + len(stream), start, PAGE, size)
    res = drain_in_child(bytes(ring), sample_type, 1024)
    check_consistent(res, 1024)
    assert res["err"] is None and res["stats"]["truncated"] == 0, res
    assert res["pids"] == want_pids and res["stats"]["lost"] == lost, res
    assert res["tail_after"] == start + len(stream)


def test_well_formed_rings_decode_exactly(request: pytest.FixtureRequest) -> None:
    with reported(request) as count:
        @FUZZ
        @given(recs=records, data_pages=st.sampled_from([1, 2, 4]),
               start=st.integers(0, 1 << 40), sample_type=st.sampled_from(SAMPLE_TYPES))
        def prop(recs: list[tuple[int, int]], data_pages: int, start: int,
                 sample_type: int) -> None:
            count()
            well_formed(recs, data_pages, start, sample_type)

        prop()
