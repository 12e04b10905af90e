"""The DAMON sampler's targets: which processes the kdamond watches, and at which index.

Every process in scope while they fit in ``max_targets``, else those with the most
memory on slow nodes and a window rotating over the others (kmigratedd/ranking.py).
DAMON commits targets by index and keeps a target's regions when the committed one has
none, so a survivor keeps its index, a new pid takes the index of one that left, and a
pid placed at an index another pid held is *settling* (its regions are ignored) until
vaddr has re-fitted them.  When the targets change they are rewritten (only their pids
while their number stays: the schemes depend on it alone) and committed while DAMON
runs; a kdamond that stopped on its own (every target exited, or a commit named a pid
that had exited) is started again with the live pids.  A vanished pid is counted in
``pid_gone``, never raised.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence

from ..damon import model
from ..damon.kdamond import KdamondSession
from ..kernelfs import KernelFs
from ..ranking import Ranking, Watchlist

log = logging.getLogger("kmigratedd.sampler")

# Processes watched at most: each costs DAMON a target and a scheme (two with demotion
# on), and each scheme is checked against every region of every target each
# aggregation interval.  With more processes in scope, MAX_TARGETS - TARGET_WINDOW
# of them are those with the most memory on slow nodes and TARGET_WINDOW rotate over
# the others (kmigratedd/ranking.py).
MAX_TARGETS = 64
TARGET_WINDOW = 16


class DamonTargets:
    """The kdamond's targets and its on/off state (see the module docstring)."""

    def __init__(self, fs: KernelFs, session: KdamondSession, context: model.Context, *,
                 hot_min_accesses: int, cold: model.ColdPattern | None, ranking: Ranking,
                 max_targets: int, settle_rounds: int, warmup_rounds: int, dwell: int,
                 counters: dict[str, int], stopping: Callable[[], bool],
                 wake: Callable[[], None]) -> None:
        """``dwell``: rounds a process of the rotating window stays (long enough for its
        regions to settle and be confirmed); ``wake()``: before a commit or a start for new
        targets (quiet mode ends)."""
        self.fs = fs
        self.session = session
        self.sysfs = session.kdamonds[0]
        self.context = context
        self.hot_min_accesses = hot_min_accesses
        self.cold = cold
        self.ranking = ranking
        self.max_targets = max_targets
        self.watchlist = Watchlist(ranking, max_targets, min(TARGET_WINDOW, max_targets),
                                   dwell=dwell)
        self.settle_rounds = settle_rounds
        self.warmup_rounds = warmup_rounds
        self.counters = counters
        self.stopping = stopping
        self.wake = wake
        self.pids: tuple[int, ...] = ()  # as written; scheme i watches target i
        self.running = False
        # pid -> rounds whose regions are still ignored: warm-up after the kdamond
        # started, or after a commit added the pid or moved it to another index.
        self.settling: dict[int, int] = {}
        self._gone_counted: set[int] = set()
        self._warned_over_limit = False

    def choose(self) -> list[int]:
        """The processes to watch this round (:class:`~kmigratedd.ranking.Watchlist`)."""
        pids = self.watchlist.choose()
        n = len(self.ranking)
        if n > self.max_targets and not self._warned_over_limit:
            w = self.watchlist
            log.info("damon sampler: %d processes in scope: watching the %d with the most "
                     "memory on slow nodes and %d more in turn (each one within %d rounds)",
                     n, w.limit - w.window, w.window, w.period_rounds(n))
            self._warned_over_limit = True
        return pids

    def write(self, pids: Sequence[int]) -> None:
        """Targets and one hot-region scheme per target (scheme i keeps target i only),
        with demotion on then one cold-region scheme per target (scheme n + i)."""
        self.sysfs.write_targets(model.hot_regions_context(
            self.context.attrs, pids, self.hot_min_accesses, self.cold))
        self.pids = tuple(pids)

    def sync(self, pids: list[int]) -> None:
        """Make the kdamond watch ``pids`` (see the module docstring)."""
        running = self.sysfs.is_on()
        if self.running and not running:
            self.counters["kdamond_stops"] += 1
            log.info("kdamond stopped on its own (its targets exited, or a commit named a "
                     "pid that had exited); restarting it with the live pids")
        self.running = running
        live = set(pids)
        want = self.placed(pids, live)
        for pid in self.pids:
            if pid not in live and not self.fs.exists(f"/proc/{pid}/stat"):
                self.gone(pid)
        self._gone_counted &= live
        if running and tuple(want) == self.pids:
            return
        if not want:
            self.turn_off()
            self.pids = ()
            return
        before = self.pids
        try:
            # Quiet mode ends for a process new to the targets, but for one that only
            # takes its turn in the rotating window (kmigratedd/ranking.py): the window
            # moves every few rounds and would keep DAMON at its configured pace.
            new = set(want) - set(before)
            if (not running or len(self.ranking) <= self.max_targets
                    or not new.isdisjoint(self.watchlist.top)):
                self.wake()
            if running and len(want) == len(before):
                # The schemes depend on the number of targets only: the pids suffice.
                self._write_pids(want, before)
            else:
                self.write(want)
            if running and not self.stopping():
                self._commit(want, before, live)
            else:
                self.turn_on()
        except OSError as exc:
            self.counters["errors"] += 1
            log.warning("damon sampler: updating DAMON targets: %s", exc)

    def _commit(self, want: Sequence[int], before: Sequence[int], live: set[int]) -> None:
        self.sysfs.command("commit")
        self.counters["commits"] += 1
        # DAMON commits targets by index and keeps a target's regions when the committed
        # one has none: a pid now at an index another pid held sees that pid's regions
        # until vaddr re-fits them (update_us); a new index has no regions until then.
        self.settling = {p: n for p, n in self.settling.items() if p in live}
        for i, pid in enumerate(want):
            if i >= len(before) or before[i] != pid:
                self.settling[pid] = self.settle_rounds
        if not self.sysfs.is_on():
            # The commit named a pid that exited meanwhile: the kdamond stopped.
            self.counters["kdamond_stops"] += 1
            self.running = False
            self.restart()

    def placed(self, pids: list[int], live: set[int]) -> list[int]:
        """The targets for ``pids``: a survivor keeps its index, a new pid takes the index
        of one that left (else goes last), and the last targets fill the indexes left
        empty."""
        watched = set(self.pids) & live
        new = iter([p for p in pids if p not in watched])
        slots: list[int | None] = [p if p in live else next(new, None) for p in self.pids]
        slots.extend(new)
        while None in slots:
            last = slots.pop()
            if last is not None:
                slots[slots.index(None)] = last
        return [p for p in slots if p is not None]

    def _write_pids(self, want: Sequence[int], before: Sequence[int]) -> None:
        """Only the pids of the targets that changed (as many targets as before)."""
        for i, (old, new) in enumerate(zip(before, want)):
            if old != new:
                self.sysfs.write(f"{self.sysfs.context}/targets/{i}/pid_target", str(new))
        self.pids = tuple(want)

    def restart(self) -> None:
        pids = self.choose()
        if pids:
            self.wake()
            self.write(pids)
            self.turn_on()
        else:
            self.pids = ()

    def turn_on(self) -> None:
        """Write "on".  A pid that exited since the scope was read makes it fail with
        EINVAL: re-read the scope and retry (a few times, pids may keep exiting)."""
        for attempt in range(3):
            if self.stopping():
                return
            try:
                self.sysfs.command("on")
                break
            except OSError as exc:
                if exc.errno != errno.EINVAL or attempt == 2:
                    raise
            pids = [p for p in self.choose() if p in self.pids]
            if not pids:
                self.pids = ()
                return
            self.write(pids)
        self.running = True
        self.session.record_owner()
        self.settling = dict.fromkeys(self.pids, self.warmup_rounds)
        self.counters["kdamond_starts"] += 1

    def turn_off(self) -> None:
        self.session.off(self.sysfs, known_on=self.running)
        self.running = False

    def gone(self, pid: int) -> None:
        """Count a watched process that exited, once."""
        if pid in self._gone_counted:
            return
        self._gone_counted.add(pid)
        self.counters["pid_gone"] += 1
        log.info("damon sampler: pid %d exited", pid)
