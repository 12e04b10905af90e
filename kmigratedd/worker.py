"""Node workers: one asyncio task per promotion target applies policy to the pages the
router put in its inbox and hands them to its move pipeline.

One round of a worker (:meth:`NodeWorker.step`): when the inbox holds a full batch, or
its oldest page has waited ``max_wait_ms``, take the pages of the pid that waited
longest (sorted by address, up to a few batches) and apply policy in this order:
paused, ping-pong hold-off, free-memory headroom on the target (counting what is
already queued to move), token-bucket rate limit. What passes goes to the move pipeline
(:mod:`kmigratedd.pipeline`); what is held back goes back to the inbox. When a job
completes, the worker reacts to what the kernel did: pages moved are remembered for
ping-pong damping and taken off the cached free figure, tokens of pages not moved are
refunded, -EBUSY pages are retried once later, -ENOMEM backs the worker off, a process
that exited is forgotten. Nothing a page, a pid or a batch does stops the worker.

Status and metrics read :meth:`NodeWorker.snapshot`, a typed copy of the counters.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from . import shim
from .config import DemotionConfig, WorkersConfig
from .errors import MovePagesError
from .inbox import PAGE_MASK, Inbox
from .kernelfs import KernelFs
from .capacity import NodeLevels
from .pipeline import MovePipeline, Settled
from .pressure import PressureMonitor
from .policy import HeadroomGuard, PingPongDamper, RetryOnce, TokenBucket
from .stage import LoopStage
from .topology import Topology, read_node_meminfo

log = logging.getLogger("kmigratedd.worker")

# Batches of one pid moved by one job, back to back: fewer round trips through the
# event loop (each costs a thread hand-off and a wake-up).
MAX_BURST = 4
# How often the ping-pong damper forgets entries that can no longer matter.
EXPIRE_EVERY_S = 1.0
# How often the protection of promoted pages adapts to the regrets of demotion, and how far
# it grows at most (in ping-pong windows).
ADAPT_EVERY_S = 30.0
MAX_PROTECT_WINDOWS = 16
# How far the ping-pong window and holdoff widen at most while promoted pages bounce.
MAX_WIDEN = 16
# Whole-call errors after which a process is forgotten (an exiting process, its mm
# already gone, fails with EINVAL rather than ESRCH).
PID_GONE_ERRNOS = (errno.ESRCH, errno.EINVAL, errno.EPERM, errno.EACCES)
DEMOTE_REFUSALS = ("promoted_recently", "rate_limited", "busy", "gone", "not_needed")


@dataclass
class WorkerStats:
    """Counters of one worker (the pipeline counts its moves here too)."""

    rounds: int = 0
    batches: int = 0
    parallel_batches: int = 0
    pages_attempted: int = 0
    promoted: Counter[tuple[int, int]] = field(default_factory=Counter)  # (src, dst) -> pages
    outcomes: Counter[str] = field(default_factory=Counter)  # moved, EBUSY, ENOMEM...
    demoted: Counter[tuple[int, int]] = field(default_factory=Counter)  # (src, dst) -> pages
    demote_outcomes: Counter[str] = field(default_factory=Counter)
    # Demotion candidates not demoted, by reason (DEMOTE_REFUSALS): promoted_recently
    # (within the ping-pong window), rate_limited, busy, gone, not_needed (room was made
    # without them)
    demote_refused: Counter[str] = field(default_factory=Counter)
    room_starved_seconds: float = 0.0   # room needed and no cold page to demote
    busy_retried: int = 0
    busy_dropped: int = 0
    pingpong_held: int = 0
    pids_gone: int = 0
    whole_call_errors: Counter[str] = field(default_factory=Counter)
    dry_run_pages: int = 0
    rate_limited_seconds: float = 0.0   # waited for tokens
    rate_limited_batches: int = 0       # batches deferred or trimmed by the rate limit
    headroom_blocked_seconds: float = 0.0
    pressure_held_seconds: float = 0.0  # memory pressure held promotion and demotion back
    enomem_backoff_seconds: float = 0.0
    move_seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)     # since last read by metrics
    move_durations: list[float] = field(default_factory=list)
    heartbeat: float = 0.0         # time.time() of the last round

    @property
    def promoted_pages(self) -> int:
        return sum(self.promoted.values())

    @property
    def demoted_pages(self) -> int:
        return sum(self.demoted.values())


@dataclass(frozen=True)
class WorkerSnapshot:
    """A worker's state as status and metrics read it."""

    node: int
    promoted: dict[tuple[int, int], int]
    promoted_pages: int
    outcomes: dict[str, int]
    whole_call_errors: dict[str, int]
    batches: int
    parallel_batches: int
    pages_attempted: int
    inbox_pages: int
    inbox_dropped: int
    rate_limited_seconds: float
    headroom_blocked_seconds: float
    headroom_blocked: bool
    headroom_floor_bytes: int   # the free memory promotion stops at (the kernel's with kswapd)
    pressure_held_seconds: float
    batch_pages_now: int        # pages per move_pages call now (workers.max_batch_ms)
    enomem_backoff_seconds: float
    dry_run_pages: int
    pingpong_held: int
    busy_retried: int
    busy_dropped: int
    pids_gone: int
    heartbeat: float
    room_needed_bytes: int
    demoted: dict[tuple[int, int], int]
    demoted_pages: int
    demote_outcomes: dict[str, int]
    demote_refused: dict[str, int]
    demote_inbox_pages: int
    room_starved_seconds: float
    demote_to: int | None
    demote_regrets: int
    protect_s: float
    promoted_then_cold: int
    pingpong_window_s: float
    pingpongs: int


class NodeWorker(LoopStage):
    def __init__(self, node: int, *, topology: Topology, inbox: Inbox, pipeline: MovePipeline,
                 cfg: WorkersConfig, fs: KernelFs,
                 clock: Callable[[], float] = time.monotonic,
                 demote_inbox: Inbox | None = None, demote_to: int | None = None,
                 demotion: DemotionConfig | None = None) -> None:
        super().__init__()
        self.node = node
        # Cold pages of this node the router found, and the slower node they go to.
        self.demote_inbox = demote_inbox if demote_to is not None else None
        self.demote_to = demote_to
        self._demote_backoff_until = 0.0
        self.topology = topology
        self.inbox = inbox
        self.pipeline = pipeline
        self.stats = pipeline.stats
        self.fs = fs
        self.clock = clock
        self.paused = False
        self.page_size = topology.page_size
        self.damper = PingPongDamper(cfg.pingpong_window_ms / 1000, cfg.pingpong_holdoff_ms / 1000)
        self.retry = RetryOnce(cfg.busy_retry_ms / 1000)
        self._free: tuple[float, int] | None = None
        # With kswapd making room: the node's watermarks in place of the headroom
        # (set by the daemon, see kmigratedd.capacity).
        self.levels: NodeLevels | None = None
        # Memory pressure: promotion and demotion wait while it holds (the daemon's).
        self.pressure: PressureMonitor | None = None
        self._backoff_until = 0.0
        self._expired_at = 0.0
        self._adapted_at = clock()
        # Demoted pages, regrets, promoted pages and bounces at the last adaptation.
        self._adapt_base = (0, 0, 0, 0)
        self.last_room_needed = 0  # room_needed() of the last round, readable from any thread
        self.configure(cfg)
        self.configure_demotion(demotion or DemotionConfig())

    def configure(self, cfg: WorkersConfig) -> None:
        """Apply a (re)loaded config; counters and state carry over."""
        self.cfg = cfg
        self.pipeline.cfg = cfg
        rate = cfg.rate_limit_mb_per_s * 1e6
        self.bucket = TokenBucket(rate, max(rate, cfg.batch_pages * self.page_size))
        self.headroom = HeadroomGuard(cfg.min_free_bytes, cfg.resume_free_bytes)
        self._free = None  # the next round reads free memory (and the levels) again
        self.damper.window_s = cfg.pingpong_window_ms / 1000
        self.damper.holdoff_s = cfg.pingpong_holdoff_ms / 1000
        self.damper.protect_s = max(self.damper.protect_s, self.damper.window_s)
        self.retry.delay_s = cfg.busy_retry_ms / 1000
        self.inbox.limit = inbox_limit(cfg)
        if self.demote_inbox is not None:
            self.demote_inbox.limit = inbox_limit(cfg)
        self.poll_s = min(cfg.max_wait_ms / 2000, 0.05)

    def configure_demotion(self, cfg: DemotionConfig) -> None:
        rate = cfg.rate_limit_mb_per_s * 1e6
        self.demote_bucket = TokenBucket(rate, max(rate, self.cfg.batch_pages * self.page_size))

    def snapshot(self) -> WorkerSnapshot:
        s = self.stats
        return WorkerSnapshot(
            node=self.node, promoted=dict(s.promoted), promoted_pages=s.promoted_pages,
            outcomes=dict(s.outcomes), whole_call_errors=dict(s.whole_call_errors),
            batches=s.batches, parallel_batches=s.parallel_batches,
            pages_attempted=s.pages_attempted, inbox_pages=self.inbox.pages,
            inbox_dropped=self.inbox.dropped, rate_limited_seconds=s.rate_limited_seconds,
            headroom_blocked_seconds=s.headroom_blocked_seconds,
            headroom_blocked=self.headroom.blocked,
            headroom_floor_bytes=self.headroom.min_free_bytes,
            pressure_held_seconds=s.pressure_held_seconds,
            batch_pages_now=self.pipeline.batch_pages(),
            enomem_backoff_seconds=s.enomem_backoff_seconds, dry_run_pages=s.dry_run_pages,
            pingpong_held=s.pingpong_held, busy_retried=s.busy_retried,
            busy_dropped=s.busy_dropped, pids_gone=s.pids_gone, heartbeat=s.heartbeat,
            room_needed_bytes=self.room_needed(self.clock()), demoted=dict(s.demoted),
            demoted_pages=s.demoted_pages, demote_outcomes=dict(s.demote_outcomes),
            demote_refused=dict(s.demote_refused),
            demote_inbox_pages=self.demote_inbox.pages if self.demote_inbox else 0,
            room_starved_seconds=s.room_starved_seconds, demote_to=self.demote_to,
            demote_regrets=self.damper.regrets, protect_s=self.damper.protect_s,
            promoted_then_cold=self.damper.promoted_then_cold,
            pingpong_window_s=self.damper.window_now_s, pingpongs=self.damper.pingpongs)

    def take_observations(self) -> tuple[list[int], list[float]]:
        """Batch sizes and move durations since the last call (for the histograms)."""
        s = self.stats
        sizes, durations = s.batch_sizes, s.move_durations
        s.batch_sizes, s.move_durations = [], []
        return sizes, durations

    # --- the loop ---------------------------------------------------------

    async def run(self) -> None:
        log.info("worker for node %d: promoting from node(s) %s", self.node,
                 ",".join(str(s) for s, d in self.topology.targets.items() if d == self.node))
        wake = self._event()
        self.inbox.on_accept(wake.set)
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
        while self.pipeline.jobs:
            await self._complete_oldest(submit=False)

    async def _idle(self, wake: asyncio.Event) -> None:
        """Sleep until there may be work: pages arriving, or a deadline.

        Pages waiting (inbox, retries, a back-off) are looked at every ``poll_s``; with
        nothing waiting the worker sleeps until the router hands it pages."""
        wake.clear()
        if not self.paused and (self.inbox.pages or self.retry.pending):
            await asyncio.sleep(self.poll_s)
            return
        await self._sleep()

    async def step(self) -> bool:
        """One round; returns True when it did work (so the loop does not sleep)."""
        self.stats.rounds += 1
        self.stats.heartbeat = time.time()
        now = self.clock()
        if now - self._expired_at >= EXPIRE_EVERY_S:
            self.damper.expire(now)
            self._expired_at = now
        if now - self._adapted_at >= ADAPT_EVERY_S:
            self._adapt_protection(now)
        held = self.pressure is not None and self.pressure.held
        if self.paused or held:
            if self.pipeline.jobs:  # already handed to the kernel: let them finish
                await self._complete_oldest(submit=False)
                return True
            if held and (self.inbox.pages or (self.demote_inbox and self.demote_inbox.pages)):
                self.stats.pressure_held_seconds += self.poll_s
            return False
        self._requeue_retries(now)
        self.last_room_needed = self.room_needed(now)
        if not self.cfg.dry_run:
            self._submit_demotion(now)
        if self._ready(now):
            return await self.promote_one(now)
        if self.pipeline.jobs:  # nothing new to queue: finish what is queued
            await self._complete_oldest()
            return True
        return False

    def _ready(self, now: float) -> bool:
        if not self.inbox.pages or now < self._backoff_until:
            return False
        if self.inbox.pages >= self.cfg.batch_pages:
            return True
        oldest = self.inbox.oldest()
        return oldest is not None and now - oldest[1] >= self.cfg.max_wait_ms / 1000

    def _requeue_retries(self, now: float) -> None:
        by_pid: dict[int, list[int]] = {}
        for pid, key in self.retry.due(now):
            by_pid.setdefault(pid, []).append(key)
        for pid, keys in by_pid.items():
            self.inbox.accept(pid, array("Q", keys), now)

    def forget_pid(self, pid: int) -> None:
        self.stats.pids_gone += 1
        self.inbox.forget_pid(pid)
        if self.demote_inbox is not None:
            self.demote_inbox.forget_pid(pid)
        self.damper.forget_pid(pid)
        self.retry.forget_pid(pid)

    def _count_whole_call(self, exc: MovePagesError) -> None:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self.stats.whole_call_errors[name] += 1
        if exc.errno not in (errno.ESRCH, errno.EINVAL):
            log.warning("worker for node %d: %s", self.node, exc)

    # --- policy: inbox -> pipeline ----------------------------------------

    def _free_bytes(self, now: float) -> int:
        """The node's free memory, read every ``free_refresh_ms`` (and adjusted for what
        we moved meanwhile).  With :attr:`levels`, the headroom is re-set from the node's
        watermarks at each read: promotion stops half way between the level that wakes
        kswapd and the one where allocations reclaim themselves, and goes on once a batch
        fits above that again (kswapd reclaims up to the node's high or promo
        watermarks)."""
        if self._free is None or now - self._free[0] >= self.cfg.free_refresh_ms / 1000:
            lv = self.levels.read() if self.levels is not None else None
            if lv is not None:
                free = lv.free
                self.headroom.min_free_bytes = lv.floor
                self.headroom.resume_free_bytes = lv.floor + self.cfg.batch_pages * self.page_size
            else:
                free = read_node_meminfo(self.fs, self.node, "MemFree").get("MemFree", 0)
                if self.levels is not None:  # no zone in /proc/zoneinfo: no floor known
                    self.headroom.min_free_bytes = self.headroom.resume_free_bytes = 0
            self._free = (now, free)
        return self._free[1]

    def refresh_free(self) -> None:
        """Read free memory (and the levels) again at the next round."""
        self._free = None

    def note_free_change(self, delta: int) -> None:
        """Adjust the cached free figure by what we just moved onto the node."""
        if self._free is not None:
            self._free = (self._free[0], self._free[1] + delta)

    async def promote_one(self, now: float) -> bool:
        """Keep up to ``depth`` jobs queued on the move thread, then complete the oldest:
        while the kernel copies one job's pages the next job is already queued behind it,
        and the loop (the router) takes the next candidates in meanwhile."""
        wait = 0.0
        while not self.pipeline.full:
            if self.pipeline.jobs and self.inbox.pages < self.cfg.batch_pages:
                break  # a second job only for a full batch; a partial one can wait
            wait = self._submit_next(now)
            if wait != 0.0:
                break
        if self.pipeline.jobs:
            await self._complete_oldest()
        elif wait > 0:
            await asyncio.sleep(wait)
        return True

    def _submit_next(self, now: float) -> float:
        """Take the next job from the inbox and queue it on the pipeline.

        Returns 0.0 when it submitted a job (or, in dry-run, counted one), -1.0 when there
        is nothing to take, and the seconds to wait when the headroom guard or the rate
        limit holds the pages back (they go back to the inbox)."""
        oldest = self.inbox.oldest()
        if oldest is None:
            return -1.0
        pid, since = oldest
        generation = self.inbox.generation(pid)
        # Up to MAX_BURST full batches of this pid go to the move thread as one job.
        full = len(self.inbox.keys[pid]) // self.cfg.batch_pages
        keys = self.inbox.take(pid, self.cfg.batch_pages * max(1, min(MAX_BURST, full)))
        self.pipeline.drop_queued(pid, keys)  # found again while queued: moved once
        keys = self._pingpong(pid, keys, now)
        if not len(keys):
            return 0.0
        page = self.page_size
        # Headroom on the target node, counting what the queued jobs will use and free.
        in_flight = (self.pipeline.in_flight(demote=False)
                     - self.pipeline.in_flight(demote=True)) * page
        allowance = self.headroom.allowance(self._free_bytes(now) - in_flight, page) // page
        if allowance <= 0:
            self.inbox.put_back(pid, keys, since)
            self.stats.headroom_blocked_seconds += self.poll_s
            return self.poll_s
        if allowance < len(keys):
            self.inbox.put_back(pid, keys[allowance:], since)
            keys = keys[:allowance]
        granted = int(self.bucket.grant(len(keys) * page, now)) // page
        if granted < len(keys):
            self.stats.rate_limited_batches += 1
        if granted <= 0:
            self.inbox.put_back(pid, keys, since)
            wait = min(self.bucket.wait_for(len(keys) * page, now), self.cfg.max_wait_ms / 1000)
            wait = max(wait, 0.001)
            self.stats.rate_limited_seconds += wait
            return wait
        if granted < len(keys):
            self.inbox.put_back(pid, keys[granted:], since)
            keys = keys[:granted]
        if self.cfg.dry_run:
            self.pipeline.count_dry_run(keys)
            return 0.0
        self.pipeline.submit(pid, since, keys, generation)
        return 0.0

    def _pingpong(self, pid: int, keys: array[int], now: float) -> array[int]:
        """Hold off pages we promoted that are back on a slow node within the window."""
        addrs, _ = shim.split_keys(keys, PAGE_MASK)
        allowed = self.damper.filter(pid, addrs, now)
        if len(allowed) == len(addrs):
            return keys
        self.stats.pingpong_held += len(addrs) - len(allowed)
        ok = set(allowed)
        return array("Q", [k for k in keys if k & PAGE_MASK in ok])

    async def _complete_oldest(self, submit: bool = True) -> None:
        """Wait for the oldest job and react to it. Before waiting, queue the next job
        behind it, so the move thread goes on without waiting for the loop."""
        if submit and not self.pipeline.jobs[0].future.done():
            now = self.clock()
            if (not self.pipeline.full and self.inbox.pages >= self.cfg.batch_pages
                    and not self.paused and now >= self._backoff_until):
                self._submit_next(now)
        job, settled = await self.pipeline.complete_oldest()
        box = self.demote_inbox if job.demote else self.inbox
        if box is not None and box.generation(job.pid) != job.generation:
            # Pages of this pid arrived while it moved: take out those it moved, or a
            # later job would move them again and count them twice.
            box.purge(job.pid, job.keys)
        if settled.demote:
            self._settle_demotion(settled)
        else:
            self._settle(settled)

    def _settle(self, s: Settled) -> None:
        now = self.clock()
        for addrs in s.moved_addrs:
            self.damper.record_promoted(s.pid, addrs, now)
            self.note_free_change(-len(addrs) * self.page_size)
        if s.refund_pages:
            self.bucket.refund(s.refund_pages * self.page_size)
        for key in s.busy_keys:
            if self.retry.failed(s.pid, key, now):
                self.stats.busy_retried += 1
            else:
                self.stats.busy_dropped += 1
        if s.failure is not None:
            self._count_whole_call(s.failure)
            if s.failure.errno in PID_GONE_ERRNOS:
                self.forget_pid(s.pid)
                return
        if s.enomem:  # a page failed with -ENOMEM, or the whole call (6.12 when full)
            self._enomem_backoff(now)
        if len(s.untried):  # after a whole-call failure: back to the inbox
            self.inbox.put_back(s.pid, s.untried, s.since)

    # --- exchange: make room by demoting cold pages ----------------------------

    def room_needed(self, now: float) -> int:
        """Bytes this node must free before the hot pages waiting for it fit: what waits
        in the inbox (at most one burst of the rate limit) plus the headroom (the resume
        level while the guard blocks), less the free memory, counting the moves queued."""
        if not self.inbox.pages:
            return 0
        page = self.page_size
        waiting = self.inbox.pages * page
        if not self.bucket.unlimited:
            waiting = min(waiting, int(self.bucket.burst_bytes))
        free_now = self._free_bytes(now)
        floor = (self.headroom.resume_free_bytes if self.headroom.blocked
                 else self.headroom.min_free_bytes)
        free = (free_now - self.pipeline.in_flight(demote=False) * page
                + self.pipeline.in_flight(demote=True) * page)
        return max(0, waiting + floor - free)

    def capacity_pages(self, now: float) -> int:
        """Pages this node can take now: free memory above the headroom (counting the
        moves queued) plus the cold pages waiting to be demoted (what the adaptive
        threshold fits the candidates to)."""
        page = self.page_size
        free = (self._free_bytes(now) - self.pipeline.in_flight(demote=False) * page
                + self.pipeline.in_flight(demote=True) * page)
        cold = self.demote_inbox.pages if self.demote_inbox is not None else 0
        return max(0, free - self.headroom.min_free_bytes) // page + cold

    def _submit_demotion(self, now: float) -> None:
        """Queue a demotion job of cold pages when room is needed: never more than the room,
        never a page promoted within the ping-pong window (each page the sampler offers
        as cold saw no access for demotion.cold_age_ms, so it is colder than any page it
        makes room for)."""
        box = self.demote_inbox
        if box is None or self.demote_to is None or self.paused or self.pipeline.full:
            return
        if now < self._demote_backoff_until:
            return
        room = self.room_needed(now)
        if room <= 0:
            if box.pages:  # room was made: the rest is offered again when it is needed
                for pid, keys in list(box.keys.items()):
                    self.damper.seen_cold(pid, shim.split_keys(keys, PAGE_MASK)[0])
                self.stats.demote_refused["not_needed"] += box.clear()
            return
        oldest = box.oldest()
        if oldest is None:
            self.stats.room_starved_seconds += self.poll_s
            return
        pid, since = oldest
        generation = box.generation(pid)
        page = self.page_size
        want = min(-(-room // page), MAX_BURST * self.cfg.batch_pages)
        keys = box.take(pid, want)
        self.pipeline.drop_queued(pid, keys, demote=True)
        addrs, _ = shim.split_keys(keys, PAGE_MASK)
        self.damper.seen_cold(pid, addrs)
        recent = self.damper.promoted_recently(pid, addrs, now)
        if recent:
            self.stats.demote_refused["promoted_recently"] += len(recent)
            keys = array("Q", [k for k in keys if k & PAGE_MASK not in recent])
        if not len(keys):
            return
        granted = int(self.demote_bucket.grant(len(keys) * page, now)) // page
        if granted < len(keys):
            box.put_back(pid, keys[granted:], since)
            self.stats.demote_refused["rate_limited"] += len(keys) - granted
            keys = keys[:granted]
        if len(keys):
            self.pipeline.submit(pid, since, keys, generation, dst=self.demote_to, demote=True)

    def _adapt_protection(self, now: float) -> None:
        """Protect promoted pages longer while the pages demoted to make room are wanted
        back within the window, and widen the ping-pong window while the pages promoted
        bounce back: either way the hot set is larger than the fast tier, and exchanging
        its pages for each other only churns (see PingPongDamper.adapt and
        PingPongDamper.adapt_window)."""
        d = self.damper
        base = (self.stats.demoted_pages, d.regrets, self.stats.promoted_pages, d.pingpongs)
        delta = [a - b for a, b in zip(base, self._adapt_base)]
        d.adapt(delta[0], delta[1], MAX_PROTECT_WINDOWS * d.window_s)
        d.adapt_window(delta[2], delta[3], MAX_WIDEN)
        self._adapt_base = base
        self._adapted_at = now

    def _settle_demotion(self, s: Settled) -> None:
        now = self.clock()
        for addrs in s.moved_addrs:
            self.damper.record_demoted(s.pid, addrs, now)
            self.note_free_change(len(addrs) * self.page_size)
        if s.refund_pages:
            self.demote_bucket.refund(s.refund_pages * self.page_size)
        if s.busy_keys:  # cold pages in use after all: the sampler offers them again
            self.stats.demote_refused["busy"] += len(s.busy_keys)
        if s.failure is not None:
            self._count_whole_call(s.failure)
            if s.failure.errno in PID_GONE_ERRNOS:
                self.stats.demote_refused["gone"] += s.failed_pages + len(s.untried)
                self.forget_pid(s.pid)
                return
        if s.enomem:  # the slower node is full too: wait before demoting again
            self._demote_backoff_until = now + self.cfg.enomem_backoff_ms / 1000
        if len(s.untried) and self.demote_inbox is not None:
            self.demote_inbox.put_back(s.pid, s.untried, s.since)

    def _enomem_backoff(self, now: float) -> None:
        backoff = self.cfg.enomem_backoff_ms / 1000
        self._backoff_until = now + backoff
        self.stats.enomem_backoff_seconds += backoff
        self._free = None  # re-read free memory after the back-off


def inbox_limit(cfg: WorkersConfig) -> int:
    """Pages a worker's inbox holds at most."""
    return max(16 * cfg.batch_pages, 8192)
