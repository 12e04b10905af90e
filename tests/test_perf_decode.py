"""perf ring-buffer decoding on synthetic buffers: wrap-around, truncated record,
LOST and THROTTLE records, unknown record types, every sample-type combination we
request (hint faults, PEBS, IBS)."""

from __future__ import annotations

import itertools
import struct

import pytest

from kmigratedd import shim
from kmigratedd.errors import ShimArgumentError

PAGE = 4096
DATA = 4 * PAGE  # ring data size (power of two)
HEAD, TAIL, OFFSET, SIZE = 1024, 1032, 1040, 1048
SAMPLE, LOST, THROTTLE, UNTHROTTLE, MMAP = 9, 2, 5, 6, 1

S = shim
# Fields in the kernel's output order (perf_output_sample) with their bit.
ORDER = [S.PERF_SAMPLE_IDENTIFIER, S.PERF_SAMPLE_IP, S.PERF_SAMPLE_TID, S.PERF_SAMPLE_TIME,
         S.PERF_SAMPLE_ADDR, S.PERF_SAMPLE_ID, S.PERF_SAMPLE_STREAM_ID, S.PERF_SAMPLE_CPU,
         S.PERF_SAMPLE_PERIOD, S.PERF_SAMPLE_WEIGHT, S.PERF_SAMPLE_DATA_SRC,
         S.PERF_SAMPLE_TRANSACTION, S.PERF_SAMPLE_PHYS_ADDR, S.PERF_SAMPLE_CGROUP,
         S.PERF_SAMPLE_DATA_PAGE_SIZE, S.PERF_SAMPLE_CODE_PAGE_SIZE]

HINT_FAULTS = S.PERF_SAMPLE_TID | S.PERF_SAMPLE_TIME | S.PERF_SAMPLE_ADDR | S.PERF_SAMPLE_CPU
PEBS = (HINT_FAULTS | S.PERF_SAMPLE_WEIGHT | S.PERF_SAMPLE_DATA_SRC | S.PERF_SAMPLE_PHYS_ADDR
        | S.PERF_SAMPLE_IP)
IBS = HINT_FAULTS | S.PERF_SAMPLE_PHYS_ADDR | S.PERF_SAMPLE_IP | S.PERF_SAMPLE_DATA_SRC \
    | S.PERF_SAMPLE_WEIGHT_STRUCT


def sample_body(st: int, i: int) -> bytes:
    out = b""
    for bit in ORDER:
        if bit == S.PERF_SAMPLE_WEIGHT and st & S.PERF_SAMPLE_WEIGHT_STRUCT:
            bit = S.PERF_SAMPLE_WEIGHT_STRUCT  # same slot, other layout
        elif not st & bit:
            continue
        if bit == S.PERF_SAMPLE_TID:
            out += struct.pack("<II", 1000 + i, 2000 + i)
        elif bit == S.PERF_SAMPLE_CPU:
            out += struct.pack("<II", i % 4, 0)
        elif bit == S.PERF_SAMPLE_TIME:
            out += struct.pack("<Q", 10**9 + i)
        elif bit == S.PERF_SAMPLE_ADDR:
            out += struct.pack("<Q", 0x7F0000000000 + i * PAGE)
        elif bit == S.PERF_SAMPLE_PHYS_ADDR:
            out += struct.pack("<Q", 0x100000000 + i * PAGE)
        elif bit in (S.PERF_SAMPLE_WEIGHT,):
            out += struct.pack("<Q", 300 + i)
        elif bit == S.PERF_SAMPLE_WEIGHT_STRUCT:
            out += struct.pack("<IHH", 400 + i, 7, 9)  # var1 (latency), var2, var3
        elif bit == S.PERF_SAMPLE_DATA_SRC:
            out += struct.pack("<Q", 0x5080021)
        elif bit == S.PERF_SAMPLE_IP:
            out += struct.pack("<Q", 0xFFFF0000 + i)
        else:
            out += struct.pack("<Q", 0xDEAD)
    return out


def record(type_: int, body: bytes, misc: int = 0) -> bytes:
    return struct.pack("<IHH", type_, misc, 8 + len(body)) + body


class Ring:
    def __init__(self, start: int = 0) -> None:
        self.buf = bytearray(PAGE + DATA)
        struct.pack_into("<QQQQ", self.buf, HEAD, start, start, PAGE, DATA)
        self.head = start

    def write(self, data: bytes) -> None:
        for k, byte in enumerate(data):
            self.buf[PAGE + (self.head + k) % DATA] = byte
        self.head += len(data)
        struct.pack_into("<Q", self.buf, HEAD, self.head)

    @property
    def tail(self) -> int:
        return struct.unpack_from("<Q", self.buf, TAIL)[0]


def drain(ring: Ring, st: int, cap: int = 1024):
    out = shim.SampleBuffer(cap)
    stats = shim.new_perf_stats()
    n = shim.perf_drain(ring.buf, st, out, stats)
    return n, out, shim.read_perf_stats(stats)


def test_hint_fault_samples():
    r = Ring()
    for i in range(10):
        r.write(record(SAMPLE, sample_body(HINT_FAULTS, i)))
    n, out, s = drain(r, HINT_FAULTS)
    assert n == 10 and s.samples == 10
    assert list(out.column("pid")) == [1000 + i for i in range(10)]
    assert list(out.column("tid")) == [2000 + i for i in range(10)]
    assert list(out.column("addr")) == [0x7F0000000000 + i * PAGE for i in range(10)]
    assert list(out.column("cpu")) == [i % 4 for i in range(10)]
    assert list(out.column("time")) == [10**9 + i for i in range(10)]
    assert r.tail == r.head and s.bytes == r.head


@pytest.mark.parametrize("start", [DATA - 8, DATA - 4 - 8, DATA - 24, 3 * DATA - 40])
def test_wrap_around_header_and_body(start):
    r = Ring(start)
    for i in range(5):
        r.write(record(SAMPLE, sample_body(PEBS, i)))
    n, out, s = drain(r, PEBS)
    assert n == 5 and s.truncated == 0
    assert list(out.column("weight")) == [300 + i for i in range(5)]
    assert list(out.column("phys_addr")) == [0x100000000 + i * PAGE for i in range(5)]
    assert list(out.column("ip")) == [0xFFFF0000 + i for i in range(5)]


def test_lost_throttle_and_unknown_records_are_counted():
    r = Ring()
    r.write(record(SAMPLE, sample_body(HINT_FAULTS, 0)))
    r.write(record(LOST, struct.pack("<QQ", 1, 123)))
    r.write(record(THROTTLE, struct.pack("<QQQ", 1, 2, 3)))
    r.write(record(UNTHROTTLE, struct.pack("<QQQ", 1, 2, 3)))
    r.write(record(MMAP, b"\0" * 40))
    r.write(record(77, b"\0" * 16))
    r.write(record(LOST, struct.pack("<QQ", 1, 7)))
    r.write(record(SAMPLE, sample_body(HINT_FAULTS, 1)))
    n, _, s = drain(r, HINT_FAULTS)
    assert n == 2
    assert (s.lost, s.lost_records, s.throttled, s.unthrottled, s.unknown) == (130, 2, 1, 1, 2)
    assert s.truncated == 0 and r.tail == r.head


@pytest.mark.parametrize("bad", [
    struct.pack("<IHH", SAMPLE, 0, 4),        # size smaller than a header
    struct.pack("<IHH", SAMPLE, 0, 12) + b"\0" * 8,  # size not a multiple of 8
    struct.pack("<IHH", SAMPLE, 0, 4096),     # size past the head
    record(SAMPLE, b"\0" * 8),                # body shorter than the sample type needs
    struct.pack("<I", SAMPLE),                # half a header at the head
])
def test_truncated_record_resets_to_head(bad):
    r = Ring()
    r.write(record(SAMPLE, sample_body(HINT_FAULTS, 0)))
    r.write(bad)
    n, _, s = drain(r, HINT_FAULTS)
    assert n == 1 and s.truncated == 1
    assert r.tail == r.head  # nothing after a malformed record is trusted
    # The ring keeps working afterwards.
    r.write(record(SAMPLE, sample_body(HINT_FAULTS, 5)))
    n, out, s = drain(r, HINT_FAULTS)
    assert n == 1 and list(out.column("pid")) == [1005]


def test_output_full_leaves_the_rest_for_next_time():
    r = Ring()
    for i in range(10):
        r.write(record(SAMPLE, sample_body(HINT_FAULTS, i)))
    n, out, _ = drain(r, HINT_FAULTS, cap=4)
    assert n == 4 and r.tail < r.head
    n, out, _ = drain(r, HINT_FAULTS, cap=100)
    assert n == 6 and list(out.column("pid"))[0] == 1004


OPTIONAL = [S.PERF_SAMPLE_IP, S.PERF_SAMPLE_PHYS_ADDR, S.PERF_SAMPLE_WEIGHT,
            S.PERF_SAMPLE_DATA_SRC, S.PERF_SAMPLE_IDENTIFIER, S.PERF_SAMPLE_PERIOD]


@pytest.mark.parametrize("extra", [sum(c) for k in range(len(OPTIONAL) + 1)
                                   for c in itertools.combinations(OPTIONAL, k)])
def test_every_sample_type_combination(extra):
    st = HINT_FAULTS | extra
    r = Ring(DATA - 16)  # and across the wrap
    for i in range(6):
        r.write(record(SAMPLE, sample_body(st, i)))
    n, out, s = drain(r, st)
    assert n == 6 and s.truncated == 0
    assert list(out.column("addr")) == [0x7F0000000000 + i * PAGE for i in range(6)]
    assert list(out.column("pid")) == [1000 + i for i in range(6)]
    if st & S.PERF_SAMPLE_PHYS_ADDR:
        assert list(out.column("phys_addr")) == [0x100000000 + i * PAGE for i in range(6)]
    if st & S.PERF_SAMPLE_WEIGHT:
        assert list(out.column("weight")) == [300 + i for i in range(6)]


def test_ibs_weight_struct_latency():
    r = Ring()
    for i in range(3):
        r.write(record(SAMPLE, sample_body(IBS, i)))
    n, out, _ = drain(r, IBS)
    assert n == 3 and list(out.column("weight")) == [400, 401, 402]
    assert list(out.column("data_src")) == [0x5080021] * 3


def test_unsupported_sample_type_is_refused():
    r = Ring()
    with pytest.raises(ShimArgumentError):
        drain(r, HINT_FAULTS | (1 << 5))  # PERF_SAMPLE_CALLCHAIN
    with pytest.raises(ShimArgumentError):
        shim.perf_open(1, 2, HINT_FAULTS | (1 << 10), cpu=0)  # PERF_SAMPLE_RAW


def test_bad_ring_geometry_is_refused():
    r = Ring()
    struct.pack_into("<Q", r.buf, SIZE, 3 * PAGE)  # not a power of two
    with pytest.raises(ShimArgumentError):
        drain(r, HINT_FAULTS)
