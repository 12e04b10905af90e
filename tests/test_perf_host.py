"""The perf sampling path against this host's real kernel: software page-fault
events, one ring per CPU, decoded and queued in C. (NUMA hinting faults need two
tiers: proven in the VM.)"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys

import pytest

from kmigratedd import config, samplers, shim
from kmigratedd.errors import SamplerUnavailableError
from kmigratedd.kernelfs import KernelFs
from kmigratedd.procfs import online_cpus
from kmigratedd.queues import CandidateQueues, merge
from kmigratedd.samplers.base import SamplerContext
from kmigratedd.samplers.perf import (HINT_FAULT_SAMPLE_TYPE, PERF_COUNT_SW_PAGE_FAULTS,
                                      PERF_TYPE_SOFTWARE, PerfRings)
from kmigratedd.scope import Scope
from kmigratedd.topology import discover

TOUCHER = """
import mmap, ctypes, sys, json, time
n = int(sys.argv[1])
m = mmap.mmap(-1, n * 4096)
m.madvise(mmap.MADV_NOHUGEPAGE)      # one fault per 4 KiB page, not one per THP
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
sys.stdin.readline()                 # wait until the sampler is open
for i in range(n):
    m[i * 4096] = 1                  # one page fault per page
print(json.dumps([base + i * 4096 for i in range(n)]), flush=True)
sys.stdin.readline()
"""


def drain_until_line(rings: PerfRings, child: subprocess.Popen[str]) -> str:
    """Drain the rings every 2 ms until the child prints a line, and return it.  The
    queues are pushed from one thread only, this one, as the daemon's event loop does
    on wakeups; draining this often keeps a busy machine (a compiler next door) from
    overflowing the rings during the test."""
    assert child.stdout is not None
    while not select.select([child.stdout], [], [], 0.002)[0]:
        rings.drain_all()
    line = child.stdout.readline()
    rings.drain_all()
    return line


def ctx_for(cfg: config.Config | None = None) -> SamplerContext:
    cfg = cfg or config.Config()
    fs = KernelFs()
    return SamplerContext(cfg, fs, discover(fs), CandidateQueues(online_cpus(fs), 1 << 14),
                          Scope(cfg.scope, fs))


def perf_allowed() -> bool:
    try:
        os.close(shim.perf_open(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS,
                                HINT_FAULT_SAMPLE_TYPE, cpu=0))
        return True
    except OSError:
        return False


needs_perf = pytest.mark.skipif(not perf_allowed(), reason="perf_event_open not permitted")


@needs_perf
def test_page_faults_of_a_child_land_in_the_queues():
    ctx = ctx_for()
    rings = PerfRings(ctx, type_=PERF_TYPE_SOFTWARE, config=PERF_COUNT_SW_PAGE_FAULTS, config1=0,
                      sample_type=HINT_FAULT_SAMPLE_TYPE, sample_period=1, precise_ip=0,
                      ring_pages=64, by_phys_node=False)
    child = subprocess.Popen([sys.executable, "-c", TOUCHER, "512"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        rings.open()
        child.stdin.write("go\n")
        child.stdin.flush()
        addrs = set(json.loads(drain_until_line(rings, child)))
        got = merge(ctx.queues.drain(1 << 20))
        mine = {a for p, a in zip(got.pids, got.addrs) if p == child.pid}
        assert len(mine & addrs) >= 0.99 * len(addrs)
        assert os.getpid() not in set(got.pids)  # the daemon's own faults are filtered
        st = rings.stats()
        assert st["samples"] >= len(addrs) and st["truncated"] == 0
    finally:
        rings.close()
        child.kill()
        child.wait()


@needs_perf
def test_scope_allow_list_keeps_only_those_pids():
    ctx = ctx_for()
    rings = PerfRings(ctx, type_=PERF_TYPE_SOFTWARE, config=PERF_COUNT_SW_PAGE_FAULTS, config1=0,
                      sample_type=HINT_FAULT_SAMPLE_TYPE, sample_period=1, precise_ip=0,
                      ring_pages=16, by_phys_node=False)
    child = subprocess.Popen([sys.executable, "-c", TOUCHER, "256"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        rings.set_scope([child.pid])
        rings.open()
        child.stdin.write("go\n")
        child.stdin.flush()
        drain_until_line(rings, child)
        got = merge(ctx.queues.drain(1 << 20))
        assert set(got.pids) == {child.pid}
        assert rings.stats()["filtered"] >= 0
    finally:
        rings.close()
        child.kill()
        child.wait()


def test_auto_on_a_one_tier_host_says_what_is_missing_for_each():
    ctx = ctx_for()
    if len(ctx.topology.tiers) > 1:
        pytest.skip("this host has a slower tier")
    with pytest.raises(SamplerUnavailableError) as info:
        samplers.create("auto", ctx)
    msg = str(info.value)
    assert "\n" not in msg
    for name in ("pebs:", "ibs:", "hint-faults:"):
        assert name in msg
    with pytest.raises(SamplerUnavailableError, match="sampler 'hint-faults' cannot run here: "
                                                       "the kernel puts every node in one"):
        samplers.create("hint-faults", ctx)
    with pytest.raises(SamplerUnavailableError, match="not known"):
        samplers.create("psychic", ctx)


def test_pmu_event_parsing_from_a_fake_sysfs(tmp_path):
    from kmigratedd.samplers.perf import PmuSampler, set_format_field

    base = tmp_path / "sys/bus/event_source/devices/cpu"
    (base / "events").mkdir(parents=True)
    (base / "format").mkdir()
    (base / "type").write_text("4\n")
    (base / "events/mem-loads").write_text("event=0xcd,umask=0x1,ldlat=3\n")
    (base / "format/event").write_text("config:0-7\n")
    (base / "format/umask").write_text("config:8-15\n")
    (base / "format/ldlat").write_text("config1:0-15\n")
    fs = KernelFs(tmp_path)
    pmu, (type_, cfg0, cfg1) = PmuSampler.find_event(fs, "pebs")
    assert (pmu, type_, cfg0, cfg1) == ("cpu", 4, 0x1CD, 3)
    configs = [cfg0, cfg1]
    set_format_field(fs, "cpu", "ldlat", configs, 64)
    assert configs == [0x1CD, 64]
    assert PmuSampler.find_event(fs, "ibs") is None


def test_sysctl_guard_saves_before_and_restores(tmp_path):
    from kmigratedd.sysctl import SysctlGuard, recover

    root = tmp_path / "root"
    (root / "proc/sys/kernel").mkdir(parents=True)
    nb = root / "proc/sys/kernel/numa_balancing"
    rl = root / "proc/sys/kernel/numa_balancing_promote_rate_limit_MBps"
    nb.write_text("1\n")
    rl.write_text("65536\n")
    state = tmp_path / "state/sysctl.json"
    fs = KernelFs(root)
    wanted = {"/proc/sys/kernel/numa_balancing": "2",
              "/proc/sys/kernel/numa_balancing_promote_rate_limit_MBps": "0"}
    g = SysctlGuard(fs, state, wanted)
    g.apply()
    assert json.loads(state.read_text()) == {"/proc/sys/kernel/numa_balancing": "1",
                                             "/proc/sys/kernel/numa_balancing_promote_rate_limit_MBps": "65536"}
    assert nb.read_text() == "2" and rl.read_text() == "0"
    # A crash: the daemon's next start restores from the state file first.
    assert recover(fs, state).restored == {"kernel.numa_balancing": "1",
                                           "kernel.numa_balancing_promote_rate_limit_MBps": "65536"}
    g2 = SysctlGuard(fs, state, wanted)
    assert nb.read_text() == "1" and rl.read_text() == "65536" and not state.exists()
    g2.apply()
    g2.restore()
    assert nb.read_text() == "1" and not state.exists()
    g2.restore()  # idempotent
    # The writes happened in order: save first, then change, then restore.
    assert [w for w in fs.writes][:2] == [("/proc/sys/kernel/numa_balancing", "2"),
                                         ("/proc/sys/kernel/numa_balancing_promote_rate_limit_MBps", "0")]


@pytest.mark.parametrize("before,mode", [("0", "2"), ("1", "3"), ("2", "2"), ("3", "3"),
                                         ("", "2"), (None, "2")])
def test_hint_faults_keep_normal_numa_balancing_on(tmp_path, before, mode):
    from kmigratedd.samplers.perf import tiering_mode

    root = tmp_path / "root"
    (root / "proc/sys/kernel").mkdir(parents=True)
    if before is not None:
        (root / "proc/sys/kernel/numa_balancing").write_text(before + "\n")
    assert tiering_mode(KernelFs(root)) == mode
