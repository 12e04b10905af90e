"""perf_event_open samplers: NUMA hinting faults (no PMU needed), Intel PEBS, AMD IBS.

One event per online CPU, system wide (pid = -1), each with an mmap'd ring
buffer. The event loop watches the fds (``add_reader``: a ring that passed its
wakeup watermark is readable) and a timer drains what stays below the watermark;
the native shim decodes records into flat arrays, filters them and pushes them
into that CPU's candidate queue — no Python loop per sample.

``hint-faults``: with ``kernel.numa_balancing = 2`` (3 where normal balancing was on) the kernel
makes only slow-tier pages take a NUMA hinting fault on their next touch, and the
software page-fault event with PERF_SAMPLE_ADDR records exactly those pages.
``numa_balancing_promote_rate_limit_MBps = 0`` stops the kernel from promoting
them itself — except while the target node has more than max(1 GiB, 1/16 of the
node) free above its high watermark (``pgdat_free_space_enough()`` in
kernel/sched/fair.c), when the kernel promotes in the faulting task regardless.
The sampler watches /proc/vmstat ``pgpromote_success`` and reports that regime.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mmap
import os
import re
from array import array

from .. import shim, sysctl
from ..kernelfs import KernelFs
from ..procfs import online_cpus, vmstat
from ..sysctl import SysctlGuard
from .base import SamplerBase, SamplerContext

log = logging.getLogger("kmigratedd.sampler")

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_PAGE_FAULTS = 2
PERF_TYPE_RAW = 4

NUMA_BALANCING = sysctl.NUMA_BALANCING.kpath
PROMOTE_RATE_LIMIT = sysctl.PROMOTE_RATE_LIMIT.kpath
PMU_DIR = "/sys/bus/event_source/devices"

HINT_FAULT_SAMPLE_TYPE = (shim.PERF_SAMPLE_TID | shim.PERF_SAMPLE_TIME | shim.PERF_SAMPLE_ADDR
                          | shim.PERF_SAMPLE_CPU)
PMU_SAMPLE_TYPE = (HINT_FAULT_SAMPLE_TYPE | shim.PERF_SAMPLE_WEIGHT | shim.PERF_SAMPLE_DATA_SRC
                   | shim.PERF_SAMPLE_PHYS_ADDR)


def perf_error_hint(err: int) -> str:
    if err in (errno.EACCES, errno.EPERM):
        return ("needs CAP_PERFMON (or CAP_SYS_ADMIN), or kernel.perf_event_paranoid <= 0 "
                "for system-wide events")
    if err in (errno.ENOENT, errno.EOPNOTSUPP, errno.ENODEV):
        return "the event is not supported by this kernel or CPU (no PMU in a VM?)"
    if err == errno.EMFILE:
        return "out of file descriptors (one event per CPU): raise LimitNOFILE"
    return os.strerror(err)


class PerfRings:
    """One perf event and ring per CPU, drained into the candidate queues."""

    def __init__(self, ctx: SamplerContext, *, type_: int, config: int, config1: int,
                 sample_type: int, sample_period: int, precise_ip: int, ring_pages: int,
                 by_phys_node: bool) -> None:
        self.ctx = ctx
        self.type_, self.config, self.config1 = type_, config, config1
        self.sample_type = sample_type
        self.sample_period = sample_period
        self.precise_ip = precise_ip
        self.ring_pages = ring_pages
        self.by_phys_node = by_phys_node
        self.cpus = online_cpus(ctx.fs)
        self.fds: dict[int, int] = {}
        self.maps: dict[int, mmap.mmap] = {}
        self.page_size = ctx.topology.page_size
        ring_bytes = ring_pages * self.page_size
        # A sample record is at least 8 + 4 fields * 8 bytes; size the output for a full ring.
        self.buf = shim.SampleBuffer(max(1024, ring_bytes // 40))
        self.nodes = array("i", [0]) * self.buf.capacity
        self.stats_c = shim.new_perf_stats()
        self.counters = {"filtered": 0, "candidates_offered": 0}
        self.deny = array("i", sorted({os.getpid(), *ctx.config.scope.exclude_pids}))
        self.allow: array[int] | None = None
        self._block_shift, self._block_table = ctx.topology.block_node_table()
        self._slow_mask = ctx.topology.slow_node_mask()

    def open(self) -> None:
        wakeup = self.ring_pages * self.page_size // 4
        try:
            for cpu in self.cpus:
                fd = shim.perf_open(self.type_, self.config, self.sample_type, cpu=cpu,
                                    sample_period=self.sample_period, config1=self.config1,
                                    precise_ip=self.precise_ip, wakeup_bytes=wakeup)
                self.fds[cpu] = fd
                self.maps[cpu] = mmap.mmap(fd, (1 + self.ring_pages) * self.page_size,
                                           mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            self.close()
            raise

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        for cpu, fd in self.fds.items():
            loop.add_reader(fd, self.drain_cpu, cpu)

    def set_scope(self, allow: list[int] | None) -> None:
        """Restrict samples to these pids (None: every pid but the denied ones)."""
        self.allow = None if allow is None else array("i", sorted(allow))

    def drain_cpu(self, cpu: int) -> int:
        """Decode one CPU's ring into its queue; returns candidates added."""
        ring = self.maps.get(cpu)
        if ring is None:
            return 0
        added = 0
        while True:
            self.buf.clear()
            n = shim.perf_drain(ring, self.sample_type, self.buf, self.stats_c)
            if n == 0:
                return added
            if self.allow is not None:
                filtered = shim.samples_filter(self.buf, self.allow, allow=True)
            else:
                filtered = shim.samples_filter(self.buf, self.deny, allow=False)
            nodes = None
            if self.by_phys_node:
                filtered += shim.samples_by_node(self.buf, self._block_shift, self._block_table,
                                                 self._slow_mask, self.nodes)
                nodes = memoryview(self.nodes)[: self.buf.n]
            self.counters["filtered"] += filtered
            if self.buf.n:
                added += self.ctx.queues.push(cpu, self.buf.column("pid"),
                                              self.buf.column("addr"), nodes,
                                              self.buf.column("time"))
                self.counters["candidates_offered"] += self.buf.n
            if n < self.buf.capacity:
                return added

    def drain_all(self) -> int:
        return sum(self.drain_cpu(cpu) for cpu in list(self.maps))

    def close(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        for fd in self.fds.values():
            if loop is not None:
                loop.remove_reader(fd)
        for m in self.maps.values():
            m.close()
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        self.maps.clear()

    def stats(self) -> dict[str, int]:
        s = shim.read_perf_stats(self.stats_c)
        return {"samples": s.samples, "samples_lost": s.lost, "lost_records": s.lost_records,
                "throttled": s.throttled, "truncated": s.truncated,
                "unknown_records": s.unknown, **self.counters}


class _PerfSampler(SamplerBase[list[int] | None]):
    """The rings are drained on the event loop (``add_reader`` wakeups, and every
    round for what stays below the watermark); a round's executor part reads the
    scope and whatever a subclass watches (:meth:`tick`)."""

    name = "perf"

    def __init__(self, ctx: SamplerContext, rings: PerfRings,
                 counters: tuple[str, ...] = ()) -> None:
        super().__init__(ctx, counters)
        self.rings = rings
        self._loop: asyncio.AbstractEventLoop | None = None

    def _scope_pids(self) -> list[int] | None:
        scope = self.ctx.config.scope
        if not (scope.pids or scope.cgroups or scope.commands or scope.exclude_commands):
            return None
        return list(self.ctx.scope.pids())

    def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.rings.set_scope(self._scope_pids())
        self.rings.open()
        self.rings.watch(self._loop)

    def collect(self) -> list[int] | None:
        self.tick()
        return self._scope_pids()

    def deliver(self, result: list[int] | None) -> None:
        self.rings.drain_all()
        self.rings.set_scope(result)

    def tick(self) -> None:
        """Per-round kernel reads of a subclass (in the executor)."""

    def close(self) -> None:
        if self.rings.fds:
            self.rings.drain_all()
        self.rings.close(self._loop)
        self._loop = None

    def stats(self) -> dict[str, int]:
        return {**self.rings.stats(), **super().stats()}


def tiering_mode(fs: KernelFs) -> str:
    """The kernel.numa_balancing value the sampler sets: 2 (memory tiering), or 3 (tiering
    and normal balancing) when normal NUMA balancing (bit 0) is on, as distributions enable
    it on multi-socket machines: the sampler adds tiering without switching off the
    operator's balancing of tasks and pages between CPU nodes."""
    text = (fs.read_optional(NUMA_BALANCING) or "0").strip()
    return "3" if text.isdigit() and int(text) & 1 else "2"


class HintFaultSampler(_PerfSampler):
    name = "hint-faults"

    def __init__(self, ctx: SamplerContext) -> None:
        cfg = ctx.config.sampler.hint_faults
        rings = PerfRings(ctx, type_=PERF_TYPE_SOFTWARE, config=PERF_COUNT_SW_PAGE_FAULTS,
                          config1=0, sample_type=HINT_FAULT_SAMPLE_TYPE, sample_period=1,
                          precise_ip=0, ring_pages=cfg.ring_pages, by_phys_node=False)
        super().__init__(ctx, rings, ("kernel_promoted_pages",))
        self.guard = SysctlGuard(ctx.fs, cfg.state_file,
                                 {NUMA_BALANCING: tiering_mode(ctx.fs), PROMOTE_RATE_LIMIT: "0"})
        self.kernel_promoting = False
        self._last_promote: int | None = None

    @staticmethod
    def probe(ctx: SamplerContext) -> str | None:
        if not ctx.fs.exists(NUMA_BALANCING):
            return "the kernel has no NUMA balancing (CONFIG_NUMA_BALANCING)"
        if not ctx.fs.exists(PROMOTE_RATE_LIMIT):
            return ("the kernel has no numa_balancing tiering mode "
                    "(numa_balancing_promote_rate_limit_MBps; needs Linux >= 6.0)")
        if ctx.topology.tier_source != "kernel" or len(ctx.topology.tiers) < 2:
            return ("the kernel puts every node in one memory tier, so numa_balancing=2 "
                    "makes no page fault; use another sampler or fix the tiers (HMAT)")
        if not os.access(ctx.fs.path(NUMA_BALANCING), os.W_OK):
            return "writing kernel.numa_balancing needs root"
        try:
            fd = shim.perf_open(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS,
                                HINT_FAULT_SAMPLE_TYPE, cpu=online_cpus(ctx.fs)[0])
            os.close(fd)
        except OSError as exc:
            return f"perf_event_open(page-faults): {perf_error_hint(exc.errno or 0)}"
        return None

    def open(self) -> None:
        # The daemon ran sysctl.recover() at its start; apply() keeps the originals
        # of a state file that is still there (a restore that failed).
        self.guard.apply()
        try:
            self._last_promote = vmstat(self.ctx.fs, "pgpromote_success").get(
                "pgpromote_success")
            super().open()
        except BaseException:
            self.guard.restore()
            raise

    def tick(self) -> None:
        now = vmstat(self.ctx.fs, "pgpromote_success").get("pgpromote_success")
        if now is None or self._last_promote is None:
            return
        delta = now - self._last_promote
        self._last_promote = now
        if delta > 0:
            self.counters["kernel_promoted_pages"] += delta
            if not self.kernel_promoting:
                log.warning(
                    "the kernel is promoting pages itself (%d in the last interval): a fast "
                    "node has more than max(1 GiB, 1/16 of it) free, so it ignores the "
                    "promote rate limit; hint-fault candidates will be few until it fills", delta)
            self.kernel_promoting = True
        elif self.kernel_promoting:
            log.info("the kernel stopped promoting pages itself")
            self.kernel_promoting = False

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.guard.restore()

    def extra_stats(self) -> dict[str, int]:
        return {"kernel_promoting": int(self.kernel_promoting),
                "sysctl_originals_unknown": len(self.guard.unknown)}


def _pmu_event(fs: KernelFs, pmu: str, event: str) -> tuple[int, int, int] | None:
    """(type, config, config1) of a named sysfs PMU event, or None if absent."""
    base = f"{PMU_DIR}/{pmu}"
    type_text = fs.read_optional(f"{base}/type")
    if type_text is None:
        return None
    if not event:
        return int(type_text), 0, 0
    spec = fs.read_optional(f"{base}/events/{event}")
    if spec is None:
        return None
    configs = [0, 0, 0]
    for term in spec.strip().split(","):
        name, _, value = term.partition("=")
        where = _format_field(fs, pmu, name.strip())
        if where is not None:
            configs[where[0]] |= int(value or "1", 0) << where[1]
    return int(type_text), configs[0], configs[1]


def _format_field(fs: KernelFs, pmu: str, field: str) -> tuple[int, int, int] | None:
    """Where a PMU format field sits: (config word 0-2, low bit, high bit), or None."""
    fmt = fs.read_optional(f"{PMU_DIR}/{pmu}/format/{field}")
    m = re.fullmatch(r"config(\d?):(\d+)(?:-(\d+))?", fmt.strip()) if fmt is not None else None
    if not m:
        return None
    return int(m.group(1) or 0), int(m.group(2)), int(m.group(3) or m.group(2))


def set_format_field(fs: KernelFs, pmu: str, field: str, configs: list[int], value: int) -> None:
    where = _format_field(fs, pmu, field)
    if where is None:
        return
    which, lo, hi = where
    mask = ((1 << (hi - lo + 1)) - 1) << lo
    configs[which] = (configs[which] & ~mask) | ((value << lo) & mask)


class PmuSampler(_PerfSampler):
    """Precise memory-access samples: PEBS load latency (Intel) or IBS op (AMD)."""

    def __init__(self, ctx: SamplerContext, kind: str) -> None:
        cfg = ctx.config.sampler.pmu
        found = self.find_event(ctx.fs, kind)
        assert found is not None, "probe() first"
        pmu, (type_, config, config1) = found
        configs = [config, config1]
        if kind == "pebs":
            set_format_field(ctx.fs, pmu, "ldlat", configs, cfg.latency_threshold_cycles)
        rings = PerfRings(ctx, type_=type_, config=configs[0], config1=configs[1],
                          sample_type=PMU_SAMPLE_TYPE, sample_period=cfg.sample_period,
                          precise_ip=2 if kind == "pebs" else 0, ring_pages=cfg.ring_pages,
                          by_phys_node=True)
        super().__init__(ctx, rings)
        self.name = kind

    @staticmethod
    def find_event(fs: KernelFs, kind: str) -> tuple[str, tuple[int, int, int]] | None:
        if kind == "pebs":
            for pmu in ("cpu", "cpu_core"):
                ev = _pmu_event(fs, pmu, "mem-loads")
                if ev is not None:
                    return pmu, ev
            return None
        ev = _pmu_event(fs, "ibs_op", "")
        return ("ibs_op", ev) if ev is not None else None

    @classmethod
    def probe_kind(cls, ctx: SamplerContext, kind: str) -> str | None:
        found = cls.find_event(ctx.fs, kind)
        if found is None:
            return ("no Intel PEBS mem-loads event in " + PMU_DIR + "/cpu/events"
                    if kind == "pebs" else "no AMD IBS op PMU (" + PMU_DIR + "/ibs_op)") + \
                " (not this CPU, or a VM without a virtual PMU)"
        if not ctx.topology.targets:
            return "no slower memory tier to sample (one tier)"
        pmu, (type_, config, config1) = found
        try:
            fd = shim.perf_open(type_, config, PMU_SAMPLE_TYPE, cpu=online_cpus(ctx.fs)[0],
                                sample_period=ctx.config.sampler.pmu.sample_period,
                                config1=config1, precise_ip=2 if kind == "pebs" else 0)
            os.close(fd)
        except OSError as exc:
            return f"perf_event_open({pmu}): {perf_error_hint(exc.errno or 0)}; PHYS_ADDR " \
                   "samples need CAP_SYS_ADMIN"
        return None

