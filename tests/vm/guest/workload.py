"""Start and inspect the tiered-memory test workload (tests/vm/workload/workload.c).

Used by guest-side tests and benchmarks: compiles the workload once (cached in
tests/vm/.build/, shared with the host), starts it with a hot and a cold set on
a node, and answers where its pages are (through kmigratedd's shim).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kmigratedd import shim
from kmigratedd.kernelfs import KernelFs
from kmigratedd.topology import read_node_meminfo

REPO = Path(__file__).resolve().parents[3]
SOURCE = REPO / "tests" / "vm" / "workload" / "workload.c"
BUILD = REPO / "tests" / "vm" / ".build"


def binary() -> Path:
    """The compiled workload, rebuilt when its source changes."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    out = BUILD / f"workload-{digest}"
    if not out.exists():
        BUILD.mkdir(parents=True, exist_ok=True)
        # Two guests (pytest-xdist) may build it at once in the shared tree, with the same
        # pids: a temporary name of each one's own, renamed over the other's.
        tmp = out.with_name(f"{out.name}.tmp-{uuid.uuid4().hex}")
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(tmp), str(SOURCE), "-lm"],
                       check=True)
        os.replace(tmp, out)
    return out


@dataclass(frozen=True)
class Interval:
    """One --report-ms interval of the workload's main thread (a STAT line)."""

    t_ns: int              # CLOCK_MONOTONIC at the end of the interval
    accesses: int          # page accesses in the interval
    fast_accesses: int     # those to pages on the fast node
    pages_on_fast: int     # the accessed region's pages on the fast node
    oracle_accesses: int   # what the same number of the interval's hottest pages served
    utime_ticks: int       # the main thread's CPU so far
    stime_ticks: int
    rotations: int         # hot-set rotations so far (--zipf)


class Workload:
    def __init__(self, hot_mib: float, cold_mib: float, node: int = 1, *, sparse: int = 1,
                 flush_ms: int = 0, thp: bool = False, idle: bool = False,
                 info_dir: str = "/tmp", zipf: float = 0.0, report_ms: int = 0,
                 fast_node: int = 0, preexec: Callable[[], None] | None = None) -> None:
        """``zipf``: Zipf-distributed accesses of that exponent over the hot region
        instead of sweeps; ``report_ms``: per-interval access reports (:attr:`stats`),
        counting the accesses served by ``fast_node``; ``preexec``: run in the child
        before it starts (to enter a cgroup, say)."""
        self.info_path = Path(info_dir) / f"workload-{os.getpid()}-{time.monotonic_ns()}.json"
        args = [str(binary()), "--hot-mib", str(hot_mib), "--cold-mib", str(cold_mib),
                "--node", str(node), "--sparse", str(sparse), "--info", str(self.info_path)]
        if flush_ms:
            args += ["--flush-ms", str(flush_ms)]
        if thp:
            args.append("--thp")
        if idle:
            args.append("--idle")
        if zipf:
            args += ["--zipf", str(zipf)]
        if report_ms:
            args += ["--report-ms", str(report_ms), "--fast-node", str(fast_node)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, preexec_fn=preexec)
        self.lines: list[str] = []
        self.passes: list[tuple[int, int]] = []  # (passes, monotonic ns)
        self.stats: list[Interval] = []  # one per --report-ms interval
        self._cond = threading.Condition()
        ready = self._readline_until("READY", 300)
        if ready is None:
            raise RuntimeError(f"workload did not start (exit {self.proc.poll()})")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        info = json.loads(self.info_path.read_text())
        self.pid: int = info["pid"]
        ps = info["page_size"]
        hot_start, hot_n = info["hot"]
        cold_start, cold_n = info["cold"]
        hot_all = range(hot_start, hot_start + hot_n * ps, ps)
        self.hot = array("Q", hot_all[::sparse])
        interleaved_cold = [a for i, a in enumerate(hot_all) if i % sparse] if sparse > 1 else []
        self.cold = array("Q", interleaved_cold) + array("Q", range(cold_start,
                                                                     cold_start + cold_n * ps, ps))

    def _readline_until(self, prefix: str, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                return None
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        return None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self._cond:
                self.lines.append(line)
                m = re.fullmatch(r"PASSES (\d+) (\d+)", line)
                if m:
                    self.passes.append((int(m.group(1)), time.monotonic_ns()))
                elif line.startswith("STAT "):
                    self.stats.append(Interval(*map(int, line.split()[1:])))
                self._cond.notify_all()

    def wait_line(self, prefix: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = len(self.lines)
            while time.monotonic() < deadline:
                for line in self.lines[seen:]:
                    if line.startswith(prefix):
                        return line
                seen = len(self.lines)
                self._cond.wait(0.1)
        raise AssertionError(f"workload never printed {prefix!r}; last lines {self.lines[-5:]}")

    def nodes(self, addrs: array[int]) -> array[int]:
        return shim.query_nodes(self.pid, addrs)

    def fraction_on(self, addrs: array[int], node: int) -> float:
        if not len(addrs):
            return 0.0
        counts = shim.count_statuses(self.nodes(addrs))
        return counts.by_node.get(node, 0) / len(addrs)

    def pass_rate(self, since_ns: int = 0) -> float:
        """Hot-set passes per second over the PASSES reports after ``since_ns``."""
        with self._cond:
            pts = [p for p in self.passes if p[1] >= since_ns]
        if len(pts) < 2:
            return 0.0
        return (pts[-1][0] - pts[0][0]) / ((pts[-1][1] - pts[0][1]) / 1e9)

    def rotate(self) -> None:
        """Move the hot pages of a --zipf workload elsewhere (SIGHUP)."""
        self.proc.send_signal(signal.SIGHUP)

    def intervals(self, since_ns: int = 0) -> list[Interval]:
        with self._cond:
            return [s for s in self.stats if s.t_ns >= since_ns]

    def verify(self) -> bool:
        self.proc.send_signal(signal.SIGUSR1)
        return self.wait_line("VERIFY").startswith("VERIFY OK")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.info_path.unlink(missing_ok=True)
        return self.proc.returncode

    def __enter__(self) -> "Workload":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def node_free_mib(node: int, fs: KernelFs | None = None) -> float:
    return read_node_meminfo(fs or KernelFs(), node).get("MemFree", 0) / (1 << 20)


def node_total_mib(node: int, fs: KernelFs | None = None) -> float:
    return read_node_meminfo(fs or KernelFs(), node).get("MemTotal", 0) / (1 << 20)


def fill_node(node: int, leave_free_mib: float) -> Workload | None:
    """Pin memory on ``node`` until about ``leave_free_mib`` is free (None if already so)."""
    take = node_free_mib(node) - leave_free_mib
    if take <= 0:
        return None
    return Workload(0, take, node=node, idle=True)
