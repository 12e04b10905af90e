"""Node workers: one asyncio task per promotion target applies policy to the pages the
router put in its inbox and hands them to its move pipeline.

One round of a worker (:meth:`NodeWorker.step`): when the inbox holds a full batch, or
its oldest page has waited ``max_wait_ms``, take the pages of the pid that waited
longest (sorted by address, up to a few batches) and apply policy in this order:
paused or held by memory pressure, ping-pong hold-off, free-memory headroom on the
target (counting what is already queued to move: :class:`~kmigratedd.capacity.NodeCapacity`),
token-bucket rate limit.  What passes goes to the move pipeline
(:mod:`kmigratedd.pipeline`); what is held back goes back to the inbox.  When a job
completes, the worker reacts to what the kernel did: pages moved are remembered for
ping-pong damping and taken off the free figure, tokens of pages not moved are refunded,
-EBUSY pages are retried once later, -ENOMEM backs the worker off, a process that exited
is forgotten.  Nothing a page, a pid or a batch does stops the worker.

With the sampler's own cold pages making room, the worker's
:class:`~kmigratedd.demotion.lane.ColdLane` queues their demotion on the same pipeline
while the node needs room.  Status and metrics read :meth:`NodeWorker.snapshot`.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import logging
import time
from collections.abc import Callable, Mapping

from .admission import Admission
from .capacity import NodeCapacity
from .config import DemotionConfig, WorkersConfig
from .demotion.lane import ColdLane
from .errors import MovePagesError
from .inbox import Inbox
from .kernelfs import KernelFs
from .pipeline import MAX_BURST, PID_GONE_ERRNOS, MovePipeline, Settled
from .policy import HeadroomGuard, PingPongDamper, RetryOnce, TokenBucket
from .pressure import PressureMonitor
from .stage import LoopStage
from .stats import PolicyStats, WorkerSnapshot
from .topology import Topology

log = logging.getLogger("kmigratedd.worker")

# How often the ping-pong damper forgets entries that can no longer matter.
EXPIRE_EVERY_S = 1.0
# How often the protection of promoted pages adapts to the regrets of demotion, and how far
# it grows at most (in ping-pong windows).
ADAPT_EVERY_S = 30.0
MAX_PROTECT_WINDOWS = 16
# How far the ping-pong window and holdoff widen at most while promoted pages bounce.
MAX_WIDEN = 16


class NodeWorker(LoopStage):
    def __init__(self, node: int, *, topology: Topology, inbox: Inbox, pipeline: MovePipeline,
                 cfg: WorkersConfig, fs: KernelFs,
                 clock: Callable[[], float] = time.monotonic,
                 demote_inbox: Inbox | None = None, demote_to: int | None = None,
                 demotion: DemotionConfig | None = None) -> None:
        super().__init__()
        self.node = node
        self.topology = topology
        self.inbox = inbox
        self.pipeline = pipeline
        self.moves = pipeline.stats   # the pipeline's (MoveStats)
        self.stats = PolicyStats()    # the policy's
        # Pages the kernel demoted from this node for the demoter (set by the daemon).
        self.kernel_demoted: Callable[[], Mapping[tuple[int, int], int]] = dict
        self.fs = fs
        self.clock = clock
        self.paused = False
        self.page_size = topology.page_size
        self.damper = PingPongDamper(cfg.pingpong_window_ms / 1000, cfg.pingpong_holdoff_ms / 1000)
        self.retry = RetryOnce(cfg.busy_retry_ms / 1000)
        self.admission = Admission(cfg, self.page_size, self.damper, self.stats)
        self.capacity = NodeCapacity(fs, node, self.page_size, self.headroom,
                                     lambda: (self.pipeline.in_flight(demote=False)
                                              - self.pipeline.in_flight(demote=True)), clock)
        # Cold pages of this node the router found, demoted to the slower node demote_to.
        self.lane: ColdLane | None = None
        if demote_inbox is not None and demote_to is not None:
            self.lane = ColdLane(demote_inbox, demote_to, pipeline=pipeline,
                                 capacity=self.capacity, damper=self.damper, stats=self.stats,
                                 page_size=self.page_size, forget_pid=self.forget_pid,
                                 count_call=self._count_whole_call)
        # Memory pressure: promotion and demotion wait while it holds (the daemon's).
        self.pressure: PressureMonitor | None = None
        self._backoff_until = 0.0
        self._expired_at = 0.0
        self._adapted_at = clock()
        self.demotion = demotion or DemotionConfig()
        self.configure(cfg)

    @property
    def headroom(self) -> HeadroomGuard:
        return self.admission.headroom

    @property
    def bucket(self) -> TokenBucket:
        return self.admission.bucket

    @property
    def demote_inbox(self) -> Inbox | None:
        return self.lane.inbox if self.lane is not None else None

    @property
    def demote_to(self) -> int | None:
        return self.lane.to if self.lane is not None else None

    @property
    def last_room_needed(self) -> int:
        """The room the last round needed, readable from any thread."""
        return self.capacity.room_needed

    def configure(self, cfg: WorkersConfig) -> None:
        """Apply a (re)loaded config; counters and state carry over."""
        self.cfg = cfg
        self.pipeline.cfg = cfg
        self.admission.configure(cfg)
        self.capacity.configure(self.headroom, cfg.free_refresh_ms,
                                cfg.batch_pages * self.page_size)
        self.damper.window_s = cfg.pingpong_window_ms / 1000
        self.damper.holdoff_s = cfg.pingpong_holdoff_ms / 1000
        self.damper.protect_s = max(self.damper.protect_s, self.damper.window_s)
        self.retry.delay_s = cfg.busy_retry_ms / 1000
        self.inbox.limit = inbox_limit(cfg)
        if self.lane is not None:
            self.lane.inbox.limit = inbox_limit(cfg)
            self.lane.configure(cfg, self.demotion)
        self.poll_s = min(cfg.max_wait_ms / 2000, 0.05)

    def configure_demotion(self, cfg: DemotionConfig) -> None:
        self.demotion = cfg
        if self.lane is not None:
            self.lane.configure(self.cfg, cfg)

    def snapshot(self) -> WorkerSnapshot:
        """A copy of the counters and gauges (:class:`~kmigratedd.stats.WorkerSnapshot`)."""
        d = self.damper
        return WorkerSnapshot(
            node=self.node, moves=copy.deepcopy(self.moves), policy=copy.deepcopy(self.stats),
            inbox_pages=self.inbox.pages, inbox_dropped=self.inbox.dropped,
            headroom_blocked=self.headroom.blocked,
            headroom_floor_bytes=self.headroom.min_free_bytes,
            batch_pages_now=self.pipeline.batch_pages(),
            room_needed_bytes=self.room_needed(self.clock()),
            demote_inbox_pages=self.demote_inbox.pages if self.demote_inbox else 0,
            demote_to=self.demote_to, demote_regrets=d.regrets, protect_s=d.protect_s,
            promoted_then_cold=d.promoted_then_cold, pingpong_window_s=d.window_now_s,
            pingpong_widenings=d.widenings,
            pingpongs=d.pingpongs, kernel_demoted=dict(self.kernel_demoted()),
            sources=self.topology.sources(self.node))

    # --- the loop ---------------------------------------------------------

    async def run(self) -> None:
        log.info("worker for node %d: promoting from node(s) %s", self.node,
                 ",".join(map(str, self.topology.sources(self.node))))
        wake = self._event()
        self.inbox.on_accept(wake.set)
        while not self._stopping:
            try:
                worked = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a worker never dies of one bad round
                self.moves.whole_call_errors["internal"] += 1
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
            # Protect promoted pages longer while the pages demoted to make room are
            # wanted back, widen the window while promoted pages bounce: either way the
            # hot set is larger than the fast tier (PingPongDamper.adapt_period).
            self.damper.adapt_period(
                self.moves.demoted_pages + sum(self.kernel_demoted().values()),
                self.moves.promoted_pages, MAX_PROTECT_WINDOWS, MAX_WIDEN)
            self._adapted_at = now
        held = self.pressure is not None and self.pressure.held
        if self.paused or held:
            if self.pipeline.jobs:  # already handed to the kernel: let them finish
                await self._complete_oldest(submit=False)
                return True
            if held and (self.inbox.pages or (self.demote_inbox and self.demote_inbox.pages)):
                self.stats.pressure_held_seconds += self.poll_s
            return False
        self.inbox.accept_each(self.retry.due(now), now)
        room = self.room_needed(now)
        if self.lane is not None and not self.cfg.dry_run:
            self.lane.submit(now, room, self.poll_s)
        if self._ready(now):
            return await self.promote_one(now)
        if self.pipeline.jobs:  # nothing new to queue: finish what is queued
            await self._complete_oldest()
            return True
        return False

    def _ready(self, now: float) -> bool:
        return (bool(self.inbox.pages) and now >= self._backoff_until
                and self.inbox.ready(self.cfg.batch_pages, self.cfg.max_wait_ms / 1000, now))

    def forget_pid(self, pid: int) -> None:
        self.stats.pids_gone += 1
        self.inbox.forget_pid(pid)
        if self.demote_inbox is not None:
            self.demote_inbox.forget_pid(pid)
        self.damper.forget_pid(pid)
        self.retry.forget_pid(pid)

    def _count_whole_call(self, exc: MovePagesError) -> None:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self.moves.whole_call_errors[name] += 1
        if exc.errno not in (errno.ESRCH, errno.EINVAL):
            log.warning("worker for node %d: %s", self.node, exc)

    # --- capacity ---------------------------------------------------------

    def room_needed(self, now: float) -> int:
        """Bytes this node must free before the hot pages waiting for it fit: what waits
        in the inbox (at most one burst of the rate limit) plus the headroom (the resume
        level while the guard blocks), less the free memory, counting the moves queued."""
        return self.capacity.need(self.admission.burst_limit(self.inbox.pages * self.page_size),
                                  now)

    def capacity_pages(self, now: float) -> int:
        """Pages this node can take now: free memory above the headroom (counting the
        moves queued) plus the cold pages waiting to be demoted (what the adaptive
        threshold fits the candidates to)."""
        cold = self.demote_inbox.pages if self.demote_inbox is not None else 0
        return self.capacity.pages_above_headroom(now) + cold

    def refresh_free(self) -> None:
        """Read free memory (and the levels) again at the next round."""
        self.capacity.refresh()

    # --- policy: inbox -> pipeline ----------------------------------------

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
        keys, wait = self.admission.admit(self.inbox, self.capacity, pid, keys, since, now,
                                          self.poll_s)
        if wait or not len(keys):
            return wait
        if self.cfg.dry_run:
            self.pipeline.count_dry_run(keys)
            return 0.0
        self.pipeline.submit(pid, since, keys, generation)
        return 0.0

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
            if self.lane is not None:
                self.lane.settle(settled, self.clock())
        else:
            self._settle(settled)

    def _settle(self, s: Settled) -> None:
        now = self.clock()
        for addrs in s.moved_addrs:
            self.damper.record_promoted(s.pid, addrs, now)
            self.capacity.moved(-len(addrs) * self.page_size)
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

    def _enomem_backoff(self, now: float) -> None:
        backoff = self.cfg.enomem_backoff_ms / 1000
        self._backoff_until = now + backoff
        self.stats.enomem_backoff_seconds += backoff
        self.capacity.refresh()  # re-read free memory after the back-off


def inbox_limit(cfg: WorkersConfig) -> int:
    """Pages a worker's inbox holds at most."""
    return max(16 * cfg.batch_pages, 8192)
