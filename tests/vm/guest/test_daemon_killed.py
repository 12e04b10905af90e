"""kmigratedd killed in the middle of an exchange (Debian 6.12, node 0 of 4.5 GiB held by
a cold process, a workload's hot set on node 1): SIGKILL for each demotion method, and
an OOM kill in a memory-limited cgroup.

SIGKILL and the OOM killer cannot be caught: the killed daemon leaves what it changed as
it was (numa_balancing, demotion_enabled, a damon-paddr demoter's kdamonds on), and the
pages of a batch in flight are either moved or not, never lost (move_pages migrates each
page whole).  The next start restores the sysctls from the state files and turns off the
kdamonds the killed one recorded as its own (kmigratedd/sysctl.py recover,
kmigratedd/damon/kdamond.py recover); then, after that daemon stops, the sysctls are as
before the first start, no kdamond runs, every page of both processes is present, and
every word of both verifies.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemonproc import DaemonProcess
from workload import Workload, fill_node, node_total_mib

KERNEL = os.environ.get("KMIGRATEDD_VM_KERNEL", "")
FREE_LEFT_MIB = 120
HOT_MIB, COLD_MIB = 64, 32
PROMOTED_PAGES = 1024  # an exchange under way: promoted while node 0 is full
NB = "/proc/sys/kernel/numa_balancing"
DE = "/sys/kernel/mm/numa/demotion_enabled"
KDAMONDS = Path("/sys/kernel/mm/damon/admin/kdamonds")
CG = Path("/sys/fs/cgroup")

pytestmark = pytest.mark.skipif(KERNEL != "debian-6.12",
                                reason="a kernel with DAMON and NUMA balancing tiering (6.12)")


def sysctls() -> tuple[str, str]:
    return Path(NB).read_text().strip(), Path(DE).read_text().strip()


def read_damon(path: Path) -> str:
    """A DAMON sysfs file that reaches a kdamond answers EBUSY while the kdamond holds its
    lock (README: DAMON): retried for up to 3 s, as kmigratedd does."""
    deadline = time.monotonic() + 3
    while True:
        try:
            return path.read_text().strip()
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def kdamonds_on() -> int:
    if not (KDAMONDS / "nr_kdamonds").exists():
        return 0
    n = int(read_damon(KDAMONDS / "nr_kdamonds"))
    return sum(read_damon(KDAMONDS / str(i) / "state") == "on" for i in range(n))


def config(tmp: Path, method: str, sampler: str) -> str:
    # No start-up sweep: what is killed is the exchange, and a sweep's DAMON rounds only
    # slow the guest down.
    return (f"sampler:\n  name: {sampler}\n  startup_sweep_ms: 0\n  hint_faults:\n"
            f"    state_file: {tmp}/state/sysctl-state.json\n"
            f"demotion:\n  method: {method}\n"
            f"metrics:\n  port: 0\ncontrol:\n  socket_path: {tmp}/control.sock\n")


def sigkill(d: DaemonProcess, tmp: Path) -> str:
    d.proc.send_signal(signal.SIGKILL)
    return "SIGKILL"


def oom_kill(d: DaemonProcess, tmp: Path) -> str:
    """Move the daemon into a cgroup, then set its memory.max below what it uses: the
    kernel cannot reclaim its anonymous memory (no swap) and OOM-kills it."""
    if "memory" not in (CG / "cgroup.controllers").read_text().split():
        pytest.skip("no memory controller in the guest's cgroup v2")
    (CG / "cgroup.subtree_control").write_text("+memory")
    cg = CG / f"kmigratedd-oom-{os.getpid()}"
    cg.mkdir(exist_ok=True)
    (cg / "cgroup.procs").write_text(str(d.proc.pid))
    try:
        # 0: reclaim cannot satisfy it (no swap for the daemon's anonymous memory), so the
        # write ends in the OOM killer at once rather than after a long reclaim of the
        # interpreter's file pages.
        (cg / "memory.max").write_text("0")
    except OSError:
        pass  # the write returns once the OOM killer has run
    events = dict(line.split() for line in (cg / "memory.events").read_text().splitlines())
    return f"OOM kill (memory.events oom_kill {events.get('oom_kill')})"


@pytest.fixture(scope="module")
def full_node0() -> Iterator[Workload | None]:
    """Node 0 held by a cold process down to FREE_LEFT_MIB free, for every case of the
    module (filling 4.4 GiB under TCG takes a while); each case tops it up, and its data
    verifies at the end."""
    assert node_total_mib(0) >= 4 * 1024, "give node 0 at least 4 GiB"
    filler = fill_node(0, FREE_LEFT_MIB)
    try:
        yield filler
        assert filler is None or filler.verify()
    finally:
        if filler is not None:
            filler.stop()


def exchange_then_kill(tmp: Path, method: str, sampler: str,
                       kill: Callable[[DaemonProcess, Path], str]) -> None:
    before = sysctls()
    topup = fill_node(0, FREE_LEFT_MIB)  # what the last case's workload left free
    try:
        with Workload(HOT_MIB, COLD_MIB, node=1, flush_ms=10) as w:
            d = DaemonProcess(config(tmp, method, sampler), tmp)
            try:
                d.wait_running()
                t0 = time.monotonic()
                while d.metric_sum("kmigratedd_promoted_pages_total") < PROMOTED_PAGES:
                    assert time.monotonic() - t0 < 240, "no exchange under way"
                    assert d.proc.poll() is None
                    time.sleep(1)
                changed, paddr = sysctls(), kdamonds_on()
                how = kill(d, tmp)
                rc = d.proc.wait(120)
            finally:
                d.stop()  # a case that failed leaves no daemon behind for the next one
            left = sysctls(), kdamonds_on()
            print(f"\n{method}/{sampler}: {how}: exit {rc}; sysctls before {before}, while "
                  f"running {changed}, kdamonds on {paddr}; left by the killed one {left}",
                  flush=True)
            assert rc == -signal.SIGKILL
            d2 = DaemonProcess(config(tmp, method, sampler), tmp)
            try:
                d2.wait_running()
                restored = [x for x in d2.lines if "left changed by a previous run" in x
                            or "turned off kdamond" in x.lower()]
            finally:
                assert d2.stop() == 0
            after = sysctls(), kdamonds_on()
            present = w.fraction_on(w.hot, 0) + w.fraction_on(w.hot, 1)
            print(f"next start: {len(restored)} restore line(s); after it stopped: sysctls "
                  f"{after[0]}, kdamonds on {after[1]}; hot set present {present:.3f}",
                  flush=True)
            assert after == (before, 0)
            if changed != before:
                assert restored, "the next start did not say what it restored"
            assert present == 1.0
            assert w.verify()
        assert topup is None or topup.verify()
    finally:
        if topup is not None:
            topup.stop()


@pytest.mark.parametrize("method,sampler", [("kswapd", "hint-faults"),
                                            ("damon-paddr", "hint-faults"),
                                            ("sampler", "damon")])
def test_sigkill_mid_exchange(full_node0: Workload | None, tmp_path: Path, method: str,
                              sampler: str) -> None:
    exchange_then_kill(tmp_path, method, sampler, sigkill)


def test_oom_kill_mid_exchange(full_node0: Workload | None, tmp_path: Path) -> None:
    exchange_then_kill(tmp_path, "kswapd", "hint-faults", oom_kill)
