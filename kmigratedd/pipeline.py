"""The move pipeline of one node worker: submit batches to a move thread, complete
them, and count what the kernel did with every page.

- :class:`Mover` is the kernel seam (the real one, :class:`ShimMover`, calls
  move_pages(2) through the native shim; tests script statuses).
- :class:`MovePipeline` keeps up to ``depth`` jobs queued on the worker's own move
  thread: while the kernel copies one job's pages the next is already queued behind
  it, so the thread never waits for the event loop. A job holds up to a few batches
  of one pid, moved back to back in one C call with the GIL released.
- Completing a job counts it (batches, pages, per-page outcomes by reason, promoted
  pages by source and destination node, the batch histograms) into its
  :class:`~kmigratedd.stats.MoveStats` and returns a
  :class:`Settled`: what the worker's policy must react to (pages moved, tokens to
  refund, busy pages to retry, -ENOMEM, a whole-call failure, untried pages).
- :class:`IdleCpus` says how many CPUs are idle, for parallel copy.

Parallel copy: the kernel copies in the calling thread, so N threads each calling
move_pages on a slice copy in parallel. It pays for big batches and large folios and
loses for small ones; ``copy_threads: auto`` splits a batch only across idle CPUs.
"""

from __future__ import annotations

import asyncio
import errno
import time
from array import array
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

from . import shim
from .config import WorkersConfig
from .errors import MovePagesError
from .inbox import PAGE_MASK
from .kernelfs import KernelFs
from .processes import PidMoves
from .procfs import cpu_times
from .stats import MoveStats


# Jobs queued on a worker's move thread at once: the next waits behind the one the
# kernel is copying, so the thread never idles while the loop accounts and takes.
PIPELINE_DEPTH = 2
# Batches of one pid moved by one job, back to back: fewer round trips through the
# event loop (each costs a thread hand-off and a wake-up).
MAX_BURST = 4
# Whole-call errors after which a process is forgotten (an exiting process, its mm
# already gone, fails with EINVAL rather than ESRCH).
PID_GONE_ERRNOS = (errno.ESRCH, errno.EINVAL, errno.EPERM, errno.EACCES)
# Batches are never cut below this many pages by workers.max_batch_ms.  Each move_pages
# call has a cost of its own besides its pages' (it drains every CPU's LRU caches,
# lru_cache_disable() in do_pages_move, and flushes TLBs), which the per-page estimate
# spreads over the batch: the smaller the batch, the slower a page looks, and the
# smaller the next batch.  The floor keeps that from shrinking batches to a crawl where
# calls are slow (a loaded or emulated machine) while a batch of it still moves in well
# under the application's notice.
MIN_BATCH_PAGES = 64
# Weight of the latest call in the running estimate of the time a page takes to move.
PAGE_TIME_WEIGHT = 0.3


class Mover(Protocol):
    """The kernel seam of the pipeline and the router."""

    def query(self, pid: int, addrs: array[int]) -> array[int]:
        """Node of each page, or -errno (move_pages query form)."""

    def move(self, pid: int, addrs: array[int], node: int, flags: int,
             threads: int) -> shim.MoveResult:
        """Move the pages to ``node``; ``threads`` > 1 splits the batch."""


class ShimMover:
    """move_pages(2) through the native shim; parallel copy splits a batch into
    contiguous slices moved by concurrent threads of ``copy_pool``."""

    def __init__(self, copy_pool: Executor | None = None) -> None:
        self._pool = copy_pool

    def query(self, pid: int, addrs: array[int]) -> array[int]:
        return shim.query_nodes(pid, addrs)

    def move(self, pid: int, addrs: array[int], node: int, flags: int,
             threads: int) -> shim.MoveResult:
        if threads <= 1 or len(addrs) < 2 * threads or self._pool is None:
            return shim.move(pid, addrs, node, flags)
        n = len(addrs)
        bounds = [n * i // threads for i in range(threads + 1)]
        futures = [self._pool.submit(shim.move, pid, addrs[bounds[i]:bounds[i + 1]], node, flags)
                   for i in range(threads)]
        results = [f.result() for f in futures]
        status = array("i")
        for r in results:
            status.extend(r.status)
        return shim.MoveResult(status=status, not_migrated=sum(r.not_migrated for r in results))

    def move_batched(self, pid: int, addrs: array[int], node: int, flags: int,
                     batch: int) -> shim.BatchedMove:
        """Single-threaded batches back to back in one C call (see shim.move_batched)."""
        return shim.move_batched(pid, addrs, node, flags, batch)


class IdleCpus:
    """CPUs idle over the last second, from /proc/stat deltas."""

    def __init__(self, fs: KernelFs, clock: Callable[[], float] = time.monotonic) -> None:
        self.fs = fs
        self.clock = clock
        self._last: tuple[int, int] | None = None
        self._at = 0.0
        self.value = 0
        times = cpu_times(fs)
        self.ncpus = max(1, times[2] if times else 1)

    def idle(self) -> int:
        now = self.clock()
        if self._last is not None and now - self._at < 1.0:
            return self.value
        times = cpu_times(self.fs)
        if times is None:
            return self.value
        total, idle, _ = times
        if self._last is not None and total > self._last[0]:
            frac = (idle - self._last[1]) / (total - self._last[0])
            self.value = int(frac * self.ncpus + 0.25)
        self._last, self._at = (total, idle), now
        return self.value


Moved = tuple[list[tuple[shim.MoveResult, float]], MovePagesError | None]


@dataclass
class Job:
    """Batches of one pid queued on the move thread as one job."""

    pid: int
    since: float
    keys: array[int]  # sorted: the batches' keys end to end
    plan: list[tuple[array[int], int]]  # (batch keys, copy threads)
    generation: int  # the pid's inbox generation when the job was taken
    future: asyncio.Future[Moved]
    dst: int = -1  # the node the pages move to
    demote: bool = False  # a demotion (fast node -> slower node) rather than a promotion


@dataclass
class Settled:
    """What a completed job means for the worker's policy."""

    pid: int
    since: float
    demote: bool = False
    moved_addrs: list[array[int]] = field(default_factory=list)  # per batch, page addresses
    refund_pages: int = 0          # not moved: their rate-limit tokens go back
    busy_keys: list[int] = field(default_factory=list)   # -EBUSY: retry once
    enomem: bool = False           # a page or the whole call failed with -ENOMEM
    failure: MovePagesError | None = None                # the call that failed as a whole
    failed_pages: int = 0          # the pages of that call
    untried: array[int] = field(default_factory=lambda: array("Q"))  # after that call


class MovePipeline:
    def __init__(self, node: int, mover: Mover, stats: MoveStats, move_thread: Executor,
                 *, page_size: int, idle_cpus: IdleCpus | None = None,
                 depth: int = PIPELINE_DEPTH, by_pid: PidMoves | None = None) -> None:
        self.node = node
        self.by_pid = by_pid  # pages moved per process (the per-process view)
        self.mover = mover
        self.stats = stats
        self.move_thread = move_thread
        self.page_size = page_size
        self.idle_cpus = idle_cpus
        self.depth = depth
        self.jobs: deque[Job] = deque()  # queued on the move thread, oldest first
        self.cfg = WorkersConfig()
        # Seconds one page took to move, a running estimate over the calls made (None
        # before the first).
        self.seconds_per_page: float | None = None

    @property
    def full(self) -> bool:
        return len(self.jobs) >= self.depth

    def threads_for(self, n: int) -> int:
        ct = self.cfg.copy_threads
        if n < self.cfg.parallel_min_pages:
            return 1
        if ct == "auto":
            idle = self.idle_cpus.idle() if self.idle_cpus else 0
            return max(1, min(idle, n // (self.cfg.parallel_min_pages // 2)))
        return int(ct)

    def batch_pages(self) -> int:
        """Pages per move_pages call: workers.batch_pages, cut to what moves within
        workers.max_batch_ms at the pace pages have been moving.  The kernel unmaps every
        page of a call's batch before it copies them (``migrate_pages_batch``), so a task
        touching one of them waits until its copy is done: hot pages, in use while they
        move, take longer to move, and a smaller batch keeps that wait short."""
        n = self.cfg.batch_pages
        spp = self.seconds_per_page
        if self.cfg.max_batch_ms <= 0 or not spp:
            return n
        return max(min(n, MIN_BATCH_PAGES), min(n, int(self.cfg.max_batch_ms / 1000 / spp)))

    def in_flight(self, demote: bool) -> int:
        """Pages queued to move, promotions or demotions."""
        return sum(len(j.keys) for j in self.jobs if j.demote == demote)

    def drop_queued(self, pid: int, keys: array[int], demote: bool = False) -> None:
        """Remove from ``keys`` (sorted) the pages a queued job of ``pid`` (of the same
        direction) will move."""
        for job in self.jobs:
            if job.pid == pid and job.demote == demote:
                shim.remove_sorted(keys, job.keys)

    def submit(self, pid: int, since: float, keys: array[int], generation: int, *,
               dst: int | None = None, demote: bool = False) -> None:
        """Queue ``keys`` (sorted, one pid) on the move thread, in batches, to ``dst``
        (default: this pipeline's node, a promotion)."""
        flags = shim.MPOL_MF_MOVE_ALL if self.cfg.move_all else shim.MPOL_MF_MOVE
        n = self.batch_pages()
        dst = self.node if dst is None else dst
        plan = [(c, self.threads_for(len(c))) for c in (keys[i:i + n]
                                                        for i in range(0, len(keys), n))]
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.move_thread, self._move_chunks, pid, keys, plan,
                                      flags, n, dst)
        self.jobs.append(Job(pid, since, keys, plan, generation, future, dst, demote))

    def count_dry_run(self, keys: array[int]) -> None:
        """Count the batches a dry run would have moved."""
        n = self.cfg.batch_pages
        for i in range(0, len(keys), n):
            size = len(keys[i:i + n])
            self.stats.batch(size, None, 1)
            self.stats.dry_run_pages += size

    async def complete_oldest(self) -> tuple[Job, Settled]:
        """Wait for the oldest job, count it, and say what policy must react to."""
        job = self.jobs[0]
        try:
            done, failure = await job.future
        finally:
            self.jobs.popleft()
        return job, self._account_job(job, done, failure)

    def _move_chunks(self, pid: int, keys: array[int], plan: list[tuple[array[int], int]],
                     flags: int, batch: int, dst: int) -> Moved:
        """On the move thread: one move_pages call per batch of ``plan`` (whose batches are
        ``keys`` end to end), back to back with no round trip through the event loop;
        stops at a whole-call failure, returned with the results so far."""
        done: list[tuple[shim.MoveResult, float]] = []
        batched = getattr(self.mover, "move_batched", None)
        if batched is not None and all(threads == 1 for _, threads in plan):
            # One C call for them all: the GIL is not taken back between the calls
            # (the event loop thread holds it while the router and workers run).
            bm: shim.BatchedMove = batched(pid, keys, dst, flags, batch)
            off = 0
            for (chunk, _), seconds in zip(plan, bm.call_seconds):
                status = bm.result.status[off:off + len(chunk)]
                if len(status) < len(chunk):
                    break  # the call that failed
                # per-call not-migrated counts are not kept: the statuses say it all
                done.append((shim.MoveResult(status=status, not_migrated=0), seconds))
                off += len(chunk)
            return done, bm.error
        for chunk, threads in plan:
            t0 = time.perf_counter()
            try:
                result = self.mover.move(pid, chunk, dst, flags, threads)
            except MovePagesError as exc:
                return done, exc
            done.append((result, time.perf_counter() - t0))
        return done, None

    def _account_job(self, job: Job, done: list[tuple[shim.MoveResult, float]],
                     failure: MovePagesError | None) -> Settled:
        out = Settled(job.pid, job.since, demote=job.demote, failure=failure)
        for (chunk, threads), (result, dt) in zip(job.plan, done):
            self._count_batch(len(chunk), dt, threads)
            self._account(chunk, result.status, out, job.dst)
        if failure is not None:
            tried = sum(len(c) for c, _ in job.plan[:len(done)])
            failed = len(job.plan[len(done)][0])
            self._count_batch(failed, None, 1)
            out.failed_pages = failed
            out.refund_pages += len(job.keys) - tried
            out.enomem = out.enomem or failure.errno == errno.ENOMEM
            out.untried = job.keys[tried + failed:]
        return out

    def _count_batch(self, pages: int, seconds: float | None, threads: int) -> None:
        self.stats.batch(pages, seconds, threads)
        if seconds is not None and pages > 0 and threads <= 1:
            spp = seconds / pages
            self.seconds_per_page = spp if self.seconds_per_page is None else (
                PAGE_TIME_WEIGHT * spp + (1 - PAGE_TIME_WEIGHT) * self.seconds_per_page)

    def _account(self, keys: array[int], status: array[int], out: Settled, dst: int) -> None:
        """Count one batch's per-page statuses (the status array is the result)."""
        counts = shim.count_statuses(status)
        outcomes = self.stats.demote_outcomes if out.demote else self.stats.outcomes
        moved_to = self.stats.demoted if out.demote else self.stats.promoted
        moved_n = counts.by_node.get(dst, 0)
        if moved_n:
            outcomes["moved"] += moved_n
            moved = shim.select_u64(keys, status, dst)
            moved_addrs, srcs = shim.split_keys(moved, PAGE_MASK)
            for src, c in shim.count_statuses(srcs).by_node.items():
                moved_to[(src, dst)] += c
            out.moved_addrs.append(moved_addrs)
            if self.by_pid is not None:
                self.by_pid.add(out.pid, moved_n, out.demote)
        not_moved = sum(c for nd, c in counts.by_node.items() if nd != dst)
        if not_moved:
            outcomes["not_moved"] += not_moved
            out.refund_pages += not_moved
        for code, c in counts.by_errno.items():
            outcomes[errno.errorcode.get(code, f"E{code}")] += c
            out.refund_pages += c
        if counts.by_errno.get(errno.EBUSY, 0):
            out.busy_keys.extend(shim.select_u64(keys, status, -errno.EBUSY))
        if counts.by_errno.get(errno.ENOMEM, 0):
            out.enomem = True
