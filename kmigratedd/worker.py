"""Node workers: one asyncio task per promotion target drains the per-CPU candidate
queues and promotes in batches through the native shim, off the event loop.

One round of a worker (:meth:`NodeWorker.step`):

1. **fill** — drain up to a few batches of candidates from every CPU's queue (on
   the loop thread: the queues are the samplers'), sort and fold them in C, drop
   those below the hotness threshold, query where each page is *now* (move_pages
   query form, in the executor), and route every page that still sits on a slower
   node to the inbox of the worker of its target — this one or a peer. Pages on
   the fast tier and pages that are gone are counted and dropped.
2. **promote** — when an inbox holds a full batch, or its oldest page has waited
   ``max_wait_ms``, take one pid's pages (sorted by address, at most
   ``batch_pages``), apply policy — paused, ping-pong hold-off, free-memory
   headroom on the target, token-bucket rate limit — and call move_pages in the
   executor (split across copy threads when it pays). Per-page statuses are
   counted by outcome: moved; -EBUSY retried once later; -EFAULT/-ENOENT dropped;
   -ENOMEM backs the worker off; -EACCES (shared page) counted. ESRCH forgets the
   pid. Nothing a page, a pid or a batch does stops the worker.

An inbox key packs a page address and the node it was found on:
``addr | src_node`` (a page address has its low 12 bits clear), so a sort by key
is a sort by address and the source node travels with the page for accounting.
move_pages(2) takes any address inside a page, so keys are passed as they are.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from . import shim
from .config import WorkersConfig
from .errors import MovePagesError
from .kernelfs import KernelFs
from .policy import HeadroomGuard, PingPongDamper, RetryOnce, TokenBucket
from .queues import CandidateQueues, merge
from .topology import Topology, read_node_meminfo

log = logging.getLogger("kmigratedd.worker")

# A key is a page address with the page's source node in its low 12 bits.
PAGE_MASK = ~0xFFF
# With nothing queued or waiting, a worker sleeps until a sampler pushes, waking this
# often only to stamp its heartbeat.
IDLE_WAKE_S = 1.0
# Batches of one pid moved by one executor job, back to back: fewer round trips
# through the event loop (each costs a thread hand-off and a wake-up).
MAX_BURST = 4
# Jobs queued on a worker's move thread at once: the next waits behind the one the
# kernel is copying, so the thread never idles while the loop accounts and takes.
PIPELINE_DEPTH = 2


@dataclass
class _Job:
    """Batches of one pid queued on the move thread as one job."""

    pid: int
    since: float
    keys: array[int]  # sorted: the batches' keys end to end
    plan: list[tuple[array[int], int]]  # (batch keys, copy threads)
    future: asyncio.Future[tuple[list[tuple[shim.MoveResult, float]], MovePagesError | None]]
    refilled: bool = False  # the inbox took keys of this pid while it was queued

GONE_ERRNOS = (errno.EFAULT, errno.ENOENT)


class Mover(Protocol):
    """The kernel seam of a worker: the real one is :class:`ShimMover`."""

    def query(self, pid: int, addrs: array[int]) -> array[int]:
        """Node of each page, or -errno (move_pages query form)."""

    def move(self, pid: int, addrs: array[int], node: int, flags: int,
             threads: int) -> shim.MoveResult:
        """Move the pages to ``node``; ``threads`` > 1 splits the batch."""


class ShimMover:
    """move_pages(2) through the native shim; parallel copy splits a batch into
    contiguous slices moved by concurrent threads (the kernel copies in the calling
    thread, so N callers copy in parallel — seeds 000 and 001)."""

    def __init__(self, max_threads: int = 64) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._max = max_threads

    def query(self, pid: int, addrs: array[int]) -> array[int]:
        return shim.query_nodes(pid, addrs)

    def move(self, pid: int, addrs: array[int], node: int, flags: int,
             threads: int) -> shim.MoveResult:
        if threads <= 1 or len(addrs) < 2 * threads:
            return shim.move(pid, addrs, node, flags)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._max, thread_name_prefix="kmigratedd-copy")
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

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class IdleCpus:
    """CPUs idle over the last second, from /proc/stat deltas."""

    def __init__(self, fs: KernelFs, clock: Callable[[], float] = time.monotonic) -> None:
        self.fs = fs
        self.clock = clock
        self._last: tuple[int, int] | None = None
        self._at = 0.0
        self.value = 0
        self.ncpus = max(1, len([ln for ln in self._lines() if ln[:3] == "cpu" and ln[3:4] != " "]))

    def _lines(self) -> list[str]:
        return (self.fs.read_optional("/proc/stat") or "").splitlines()

    def idle(self) -> int:
        now = self.clock()
        if self._last is not None and now - self._at < 1.0:
            return self.value
        for line in self._lines():
            if line.startswith("cpu "):
                f = [int(x) for x in line.split()[1:]]
                total, idle = sum(f[:8]), f[3] + (f[4] if len(f) > 4 else 0)
                if self._last is not None and total > self._last[0]:
                    frac = (idle - self._last[1]) / (total - self._last[0])
                    self.value = int(frac * self.ncpus + 0.25)
                self._last, self._at = (total, idle), now
                break
        return self.value


@dataclass
class WorkerStats:
    """Counters of one worker (exported as metrics)."""

    rounds: int = 0
    candidates: int = 0            # drained from the queues
    below_threshold: int = 0       # folded count under min_samples
    on_fast_tier: int = 0          # already on a node with no target
    gone_before_move: int = 0      # query said -EFAULT/-ENOENT
    routed_to_peer: int = 0
    inbox_dropped: int = 0         # the inbox was full
    batches: int = 0
    parallel_batches: int = 0
    pages_attempted: int = 0
    promoted: Counter[tuple[int, int]] = field(default_factory=Counter)  # (src, dst) -> pages
    outcomes: Counter[str] = field(default_factory=Counter)  # moved, EBUSY, ENOMEM...
    busy_retried: int = 0
    busy_dropped: int = 0
    pingpong_held: int = 0
    pids_gone: int = 0
    whole_call_errors: Counter[str] = field(default_factory=Counter)
    dry_run_pages: int = 0
    rate_limited_seconds: float = 0.0   # waited for tokens
    rate_limited_batches: int = 0       # batches deferred or trimmed by the rate limit
    headroom_blocked_seconds: float = 0.0
    enomem_backoff_seconds: float = 0.0
    move_seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)     # since last read by metrics
    move_durations: list[float] = field(default_factory=list)
    heartbeat: float = 0.0         # time.time() of the last round

    @property
    def promoted_pages(self) -> int:
        return sum(self.promoted.values())

    def take_observations(self) -> tuple[list[int], list[float]]:
        sizes, durations = self.batch_sizes, self.move_durations
        self.batch_sizes, self.move_durations = [], []
        return sizes, durations


class NodeWorker:
    def __init__(self, node: int, *, topology: Topology, queues: CandidateQueues, mover: Mover,
                 cfg: WorkersConfig, fs: KernelFs, executor: Executor | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 idle_cpus: IdleCpus | None = None) -> None:
        self.node = node
        self.topology = topology
        self.queues = queues
        self.mover = mover
        self.fs = fs
        self.executor = executor
        self.clock = clock
        self.idle_cpus = idle_cpus
        self.peers: dict[int, NodeWorker] = {node: self}
        self.stats = WorkerStats()
        self.paused = False
        self.page_size = topology.page_size
        self.inbox: dict[int, array[int]] = {}    # pid -> keys (addr | src node)
        self.inbox_since: dict[int, float] = {}   # pid -> when its oldest key arrived
        self.inbox_pages = 0
        self._free: tuple[float, int] | None = None
        self._backoff_until = 0.0
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._jobs: deque[_Job] = deque()  # queued on the move thread, oldest first
        self._move_pool: ThreadPoolExecutor | None = None
        self.depth = PIPELINE_DEPTH
        self.configure(cfg)
        size = max(topology.nodes, default=0) + 1
        self.target_of_node = array("i", [-1]) * size
        for src, dst in topology.targets.items():
            self.target_of_node[src] = dst

    def configure(self, cfg: WorkersConfig) -> None:
        """Apply a (re)loaded config; counters and state carry over."""
        self.cfg = cfg
        rate = cfg.rate_limit_mb_per_s * 1e6
        self.bucket = TokenBucket(rate, max(rate, cfg.batch_pages * self.page_size))
        self.headroom = HeadroomGuard(cfg.min_free_bytes, cfg.resume_free_bytes)
        self.damper = getattr(self, "damper", None) or PingPongDamper(
            cfg.pingpong_window_ms / 1000, cfg.pingpong_holdoff_ms / 1000)
        self.damper.window_s = cfg.pingpong_window_ms / 1000
        self.damper.holdoff_s = cfg.pingpong_holdoff_ms / 1000
        self.retry = getattr(self, "retry", None) or RetryOnce(cfg.busy_retry_ms / 1000)
        self.retry.delay_s = cfg.busy_retry_ms / 1000
        self.inbox_limit = max(16 * cfg.batch_pages, 8192)
        self.poll_s = min(cfg.max_wait_ms / 2000, 0.05)

    # --- the loop ---------------------------------------------------------

    async def run(self) -> None:
        log.info("worker for node %d: promoting from node(s) %s", self.node,
                 ",".join(str(s) for s, d in self.topology.targets.items() if d == self.node))
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        wake = self._wake

        def on_push() -> None:  # any thread: a sampler pushed candidates
            if not wake.is_set():
                loop.call_soon_threadsafe(wake.set)

        self.queues.on_push(on_push)
        while not self._stopping:
            try:
                worked = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a worker never dies of one bad round
                self.stats.whole_call_errors["internal"] += 1
                log.exception("worker for node %d: round failed", self.node)
                worked = False
            if not worked:
                await self._idle(wake)
        # Stopping: the jobs already queued still run; account them before leaving.
        while self._jobs:
            await self._complete_oldest(fill=False)
        if self._move_pool is not None:
            self._move_pool.shutdown(wait=False)
            self._move_pool = None

    async def _idle(self, wake: asyncio.Event) -> None:
        """Sleep until there may be work: a push into the queues, or a deadline.

        Pages waiting (inbox, retries, a back-off, candidates below a batch) are
        looked at every ``poll_s``; with nothing waiting the worker sleeps until a
        sampler pushes, waking every ``IDLE_WAKE_S`` only to stamp its heartbeat.
        """
        wake.clear()
        if not self.paused and (self.inbox_pages or len(self.queues) or self.retry.pending):
            await asyncio.sleep(self.poll_s)
            return
        try:
            await asyncio.wait_for(wake.wait(), IDLE_WAKE_S)
        except TimeoutError:
            pass

    def wake(self) -> None:
        """Look again now (on the event loop: resume, reload)."""
        if self._wake is not None:
            self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self.wake()

    async def step(self) -> bool:
        """One round; returns True when it did work (so the loop does not sleep)."""
        self.stats.rounds += 1
        self.stats.heartbeat = time.time()
        if self.paused:
            if self._jobs:  # already handed to the kernel: let them finish
                await self._complete_oldest(fill=False)
                return True
            return False
        # With a full batch waiting, go straight to the move: the next candidates
        # are taken in while the kernel copies (_complete_oldest).
        filled = 0
        if self.inbox_pages < self.cfg.batch_pages or self.clock() < self._backoff_until:
            filled = await self.fill()
        now = self.clock()
        self._requeue_retries(now)
        ready = self.inbox_pages > 0 and now >= self._backoff_until
        if ready and self.inbox_pages < self.cfg.batch_pages:
            ready = now - min(self.inbox_since.values()) >= self.cfg.max_wait_ms / 1000
        if ready:
            return await self.promote_one(now)
        if self._jobs:  # nothing new to queue: finish what is queued
            await self._complete_oldest()
            return True
        return filled > 0

    async def _offload(self, fn: Callable[..., object], *args: object) -> object:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    # --- fill: queues -> inboxes ------------------------------------------

    async def fill(self) -> int:
        # Never drain more than the inbox can take: what stays in the queues is safe
        # (bounded there, and counted if dropped), what overflows an inbox is lost.
        want = min(MAX_BURST * self.cfg.batch_pages, self.inbox_limit - self.inbox_pages)
        if want <= 0:
            return 0
        batches = self.queues.drain(want)
        if not batches:
            return 0
        b = merge(batches)
        n0 = len(b)
        self.stats.candidates += n0
        self.stats.below_threshold += shim.cand_prepare(b.pids, b.addrs, b.counts,
                                                        self.cfg.min_samples)
        pids, addrs = b.pids, b.addrs
        if not len(pids):
            return n0
        starts = list(shim.runs(pids)) + [len(pids)]
        runs = [(pids[starts[i]], addrs[starts[i]:starts[i + 1]]) for i in range(len(starts) - 1)]
        queried = await self._offload(self._query_runs, runs)
        assert isinstance(queried, list)
        now = self.clock()
        for pid, run_addrs, status in queried:
            if status is None:
                self._forget_pid(pid)
                continue
            tgt = array("i", [0]) * len(status)
            shim.cand_targets(status, self.target_of_node, tgt)
            # Tally the targets in C: -1 (fast tier) and -2 (gone) land in by_errno.
            counts = shim.count_statuses(tgt)
            self.stats.on_fast_tier += counts.by_errno.get(1, 0)
            self.stats.gone_before_move += counts.by_errno.get(2, 0)
            for dst in counts.by_node:
                # The source node rides in the key's low bits.
                keys = shim.keys_for(run_addrs, status, tgt, dst)
                worker = self.peers.get(dst)
                if worker is None:
                    continue
                if worker is not self:
                    self.stats.routed_to_peer += len(keys)
                worker.accept(pid, keys, now)
        return n0

    def _query_runs(self, runs: list[tuple[int, array[int]]]
                    ) -> list[tuple[int, array[int], array[int] | None]]:
        out: list[tuple[int, array[int], array[int] | None]] = []
        for pid, addrs in runs:
            try:
                out.append((pid, addrs, self.mover.query(pid, addrs)))
            except MovePagesError as exc:
                self._count_whole_call(exc)
                out.append((pid, addrs, None))
        return out

    def accept(self, pid: int, keys: array[int], now: float) -> None:
        """Take routed pages into this worker's inbox (bounded: oldest pid dropped)."""
        if not len(keys):
            return
        for job in self._jobs:
            if job.pid == pid:
                job.refilled = True
        have = self.inbox.get(pid)
        if have is None:
            self.inbox[pid] = keys
            self.inbox_since[pid] = now
        else:
            have.extend(keys)
        self.inbox_pages += len(keys)
        # Over the bound (pages routed here by a peer, or retries): drop the oldest
        # pages of the longest-waiting pid, only as many as needed.
        while self.inbox_pages > self.inbox_limit and self.inbox:
            victim = min(self.inbox_since, key=self.inbox_since.__getitem__)
            have = self.inbox[victim]
            excess = min(len(have), self.inbox_pages - self.inbox_limit)
            del have[:excess]
            self.inbox_pages -= excess
            self.stats.inbox_dropped += excess
            if not len(have):
                del self.inbox[victim]
                self.inbox_since.pop(victim, None)

    def _requeue_retries(self, now: float) -> None:
        due = self.retry.due(now)
        by_pid: dict[int, list[int]] = {}
        for pid, key in due:
            by_pid.setdefault(pid, []).append(key)
        for pid, keys in by_pid.items():
            self.accept(pid, array("Q", keys), now)

    def _forget_pid(self, pid: int) -> None:
        self.stats.pids_gone += 1
        dropped = self.inbox.pop(pid, None)
        self.inbox_since.pop(pid, None)
        if dropped is not None:
            self.inbox_pages -= len(dropped)
        self.damper.forget_pid(pid)
        self.retry.forget_pid(pid)

    def _count_whole_call(self, exc: MovePagesError) -> None:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self.stats.whole_call_errors[name] += 1
        # An exiting process (its mm already gone) fails with EINVAL, not ESRCH.
        if exc.errno not in (errno.ESRCH, errno.EINVAL):
            log.warning("worker for node %d: %s", self.node, exc)

    # --- promote: inbox -> move_pages -------------------------------------

    def _take(self, pid: int, n: int) -> array[int]:
        keys = self.inbox.pop(pid)
        since = self.inbox_since.pop(pid)
        self.inbox_pages -= len(keys)
        shim.sort_unique(keys)  # in C: inboxes are sorted runs, a page may come twice
        batch, rest = keys[:n], keys[n:]
        if len(rest):
            self.inbox[pid] = rest
            self.inbox_since[pid] = since
            self.inbox_pages += len(rest)
        return batch

    def _put_back(self, pid: int, keys: array[int], since: float) -> None:
        if not len(keys):
            return
        have = self.inbox.pop(pid, None)
        self.inbox[pid] = keys + have if have is not None else keys
        self.inbox_since[pid] = min(since, self.inbox_since.get(pid, since))
        self.inbox_pages += len(keys)

    def _free_bytes(self, now: float) -> int:
        if self._free is None or now - self._free[0] >= self.cfg.free_refresh_ms / 1000:
            free = read_node_meminfo(self.fs, self.node, "MemFree").get("MemFree", 0)
            self._free = (now, free)
        return self._free[1]

    def note_free_change(self, delta: int) -> None:
        """Adjust the cached free figure by what we just moved onto the node."""
        if self._free is not None:
            self._free = (self._free[0], self._free[1] + delta)

    def threads_for(self, n: int) -> int:
        ct = self.cfg.copy_threads
        if n < self.cfg.parallel_min_pages:
            return 1
        if ct == "auto":
            idle = self.idle_cpus.idle() if self.idle_cpus else 0
            return max(1, min(idle, n // (self.cfg.parallel_min_pages // 2)))
        return int(ct)

    async def promote_one(self, now: float) -> bool:
        """Keep up to ``depth`` jobs queued on the move thread, then complete the
        oldest: while the kernel copies one job's pages the next job is already
        queued behind it (no gap on the move thread for the loop's work), and the
        loop takes the next candidates in."""
        wait = 0.0
        while len(self._jobs) < self.depth:
            if self._jobs and self.inbox_pages < self.cfg.batch_pages:
                break  # a second job only for a full batch; a partial one can wait
            wait = self._submit_next(now)
            if wait != 0.0:
                break
        if self._jobs:
            await self._complete_oldest()
        elif wait > 0:
            await asyncio.sleep(wait)
        return True

    def _submit_next(self, now: float) -> float:
        """Take the next job from the inbox and queue it on the move thread.

        Returns 0.0 when it submitted a job (or, in dry-run, counted one), -1.0 when
        there is nothing to take, and the seconds to wait when the headroom guard or
        the rate limit holds the pages back (they go back to the inbox)."""
        if not self.inbox_since:
            return -1.0
        # The pid whose pages waited longest goes first.
        pid = min(self.inbox_since, key=self.inbox_since.__getitem__)
        since = self.inbox_since[pid]
        # Up to MAX_BURST full batches of this pid go to the move thread as one job.
        full = len(self.inbox[pid]) // self.cfg.batch_pages
        keys = self._take(pid, self.cfg.batch_pages * max(1, min(MAX_BURST, full)))
        for job in self._jobs:  # drained again while queued: moved once, by that job
            if job.pid == pid:
                shim.remove_sorted(keys, job.keys)
        page = self.page_size
        # Ping-pong: pages we promoted that are back on a slow node are held off.
        addrs, _ = shim.split_keys(keys, PAGE_MASK)
        allowed = self.damper.filter(pid, addrs, now)
        if len(allowed) != len(addrs):
            self.stats.pingpong_held += len(addrs) - len(allowed)
            ok = set(allowed)
            keys = array("Q", [k for k in keys if k & PAGE_MASK in ok])
        if not len(keys):
            return 0.0
        # Headroom on the target node, counting what the queued jobs will use.
        in_flight = sum(len(j.keys) for j in self._jobs) * page
        allowance = self.headroom.allowance(self._free_bytes(now) - in_flight) // page
        if allowance <= 0:
            self._put_back(pid, keys, since)
            self.stats.headroom_blocked_seconds += self.poll_s
            return self.poll_s
        if allowance < len(keys):
            self._put_back(pid, keys[allowance:], since)
            keys = keys[:allowance]
        # Rate limit.
        granted = int(self.bucket.grant(len(keys) * page, now)) // page
        if granted < len(keys):
            self.stats.rate_limited_batches += 1
        if granted <= 0:
            self._put_back(pid, keys, since)
            wait = min(self.bucket.wait_for(len(keys) * page, now), self.cfg.max_wait_ms / 1000)
            wait = max(wait, 0.001)
            self.stats.rate_limited_seconds += wait
            return wait
        if granted < len(keys):
            self._put_back(pid, keys[granted:], since)
            keys = keys[:granted]
        if self.cfg.dry_run:
            for i in range(0, len(keys), self.cfg.batch_pages):
                n = len(keys[i:i + self.cfg.batch_pages])
                self.stats.batches += 1
                self.stats.pages_attempted += n
                self.stats.batch_sizes.append(n)
                self.stats.dry_run_pages += n
            return 0.0
        flags = shim.MPOL_MF_MOVE_ALL if self.cfg.move_all else shim.MPOL_MF_MOVE
        chunks = [keys[i:i + self.cfg.batch_pages]
                  for i in range(0, len(keys), self.cfg.batch_pages)]
        plan = [(c, self.threads_for(len(c))) for c in chunks]
        if self._move_pool is None:
            self._move_pool = ThreadPoolExecutor(1, f"kmigratedd-move{self.node}")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._move_pool, self._move_chunks, pid, keys, plan,
                                      flags)
        self._jobs.append(_Job(pid, since, keys, plan, future))
        return 0.0

    async def _complete_oldest(self, fill: bool = True) -> None:
        """Wait for the oldest job, taking candidates in meanwhile, and account it.

        A page of a queued job can be drained again meanwhile and still be reported
        on its slow node; it is taken out of the inbox once its job is done, or a
        later job would move it again and count it twice."""
        job = self._jobs[0]
        if fill and not job.future.done():
            try:
                if self.inbox_pages < self.inbox_limit:
                    await self.fill()
            except Exception:  # the moves still complete and are accounted
                self.stats.whole_call_errors["internal"] += 1
                log.exception("worker for node %d: fill during a move failed", self.node)
            # Queue the next job behind this one now, not after accounting it: the
            # move thread goes on without waiting for the loop.
            now = self.clock()
            if (len(self._jobs) < self.depth and self.inbox_pages >= self.cfg.batch_pages
                    and not self.paused and now >= self._backoff_until):
                self._submit_next(now)
        try:
            done, failure = await job.future
        finally:
            self._jobs.popleft()
        if job.refilled:
            self._purge(job.pid, job.keys)
        self._account_job(job, done, failure)

    def _account_job(self, job: _Job, done: list[tuple[shim.MoveResult, float]],
                     failure: MovePagesError | None) -> None:
        pid, plan = job.pid, job.plan
        now = self.clock()
        for (chunk, threads), (result, dt) in zip(plan, done):
            self.stats.batches += 1
            self.stats.pages_attempted += len(chunk)
            self.stats.batch_sizes.append(len(chunk))
            self.stats.move_seconds += dt
            self.stats.move_durations.append(dt)
            if threads > 1:
                self.stats.parallel_batches += 1
            self._account(pid, chunk, result.status, now)
        if failure is None:
            return
        moved = sum(len(c) for c, _ in plan[:len(done)])  # keys the completed calls had
        failed = len(plan[len(done)][0])
        self.stats.batches += 1
        self.stats.pages_attempted += failed
        self.stats.batch_sizes.append(failed)
        self.bucket.refund((len(job.keys) - moved) * self.page_size)
        self._count_whole_call(failure)
        if failure.errno in (errno.ESRCH, errno.EINVAL, errno.EPERM, errno.EACCES):
            self._forget_pid(pid)
            return
        if failure.errno == errno.ENOMEM:  # 6.12 fails the whole call when full
            self._enomem_backoff(now)
        rest = job.keys[moved + failed:]  # not tried: back to the inbox
        if rest:
            self._put_back(pid, rest, job.since)

    def _move_chunks(self, pid: int, keys: array[int], plan: list[tuple[array[int], int]],
                     flags: int
                     ) -> tuple[list[tuple[shim.MoveResult, float]], MovePagesError | None]:
        """On an executor thread: one move_pages call per batch of ``plan`` (whose
        batches are ``keys`` end to end), back to back with no round trip through the
        event loop; stops at a whole-call failure, returned with the results so far."""
        done: list[tuple[shim.MoveResult, float]] = []
        batched = getattr(self.mover, "move_batched", None)
        if batched is not None and all(threads == 1 for _, threads in plan):
            # One C call for them all: the GIL is not taken back between the calls
            # (the event loop thread holds it while it fills, up to 5 ms a time).
            bm: shim.BatchedMove = batched(pid, keys, self.node, flags, self.cfg.batch_pages)
            off = 0
            for (chunk, _), seconds in zip(plan, bm.call_seconds):
                status = bm.result.status[off:off + len(chunk)]
                if len(status) < len(chunk):
                    break  # the call that failed
                # per-call not-migrated counts are not kept: _account reads the statuses
                done.append((shim.MoveResult(status=status, not_migrated=0), seconds))
                off += len(chunk)
            return done, bm.error
        for chunk, threads in plan:
            t0 = time.perf_counter()
            try:
                result = self.mover.move(pid, chunk, self.node, flags, threads)
            except MovePagesError as exc:
                return done, exc
            done.append((result, time.perf_counter() - t0))
        return done, None

    def _purge(self, pid: int, done: array[int]) -> None:
        """Take the keys of a batch just moved (sorted) out of ``pid``'s inbox."""
        have = self.inbox.get(pid)
        if have is None:
            return
        n0 = len(have)
        shim.sort_unique(have)
        shim.remove_sorted(have, done)
        self.inbox_pages -= n0 - len(have)
        if not len(have):
            del self.inbox[pid]
            self.inbox_since.pop(pid, None)

    def _account(self, pid: int, keys: array[int], status: array[int], now: float) -> None:
        counts = shim.count_statuses(status)
        moved_n = counts.by_node.get(self.node, 0)
        if moved_n:
            self.stats.outcomes["moved"] += moved_n
            moved = shim.select_u64(keys, status, self.node)
            moved_addrs, srcs = shim.split_keys(moved, PAGE_MASK)
            for src, c in shim.count_statuses(srcs).by_node.items():
                self.stats.promoted[(src, self.node)] += c
            self.damper.record_promoted(pid, moved_addrs, now)
            self.note_free_change(-moved_n * self.page_size)
        not_moved = sum(c for nd, c in counts.by_node.items() if nd != self.node)
        if not_moved:
            self.stats.outcomes["not_moved"] += not_moved
            self.bucket.refund(not_moved * self.page_size)
        for code, c in counts.by_errno.items():
            name = errno.errorcode.get(code, f"E{code}")
            self.stats.outcomes[name] += c
            self.bucket.refund(c * self.page_size)
        busy = counts.by_errno.get(errno.EBUSY, 0)
        if busy:
            for k in shim.select_u64(keys, status, -errno.EBUSY):
                if self.retry.failed(pid, k, now):
                    self.stats.busy_retried += 1
                else:
                    self.stats.busy_dropped += 1
        if counts.by_errno.get(errno.ENOMEM, 0):
            self._enomem_backoff(now)

    def _enomem_backoff(self, now: float) -> None:
        backoff = self.cfg.enomem_backoff_ms / 1000
        self._backoff_until = now + backoff
        self.stats.enomem_backoff_seconds += backoff
        self._free = None  # re-read free memory after the back-off

