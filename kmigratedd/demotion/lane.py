"""``sampler``: the sampler's own cold pages make room, moved by the workers.

The samplers that see accesses on the fast tier (damon, idle) offer the pages of a fast
node that saw no access for ``demotion.cold_age_ms`` while room is needed; the router
puts each one that sits on a fast node into that node's cold inbox.  Each worker has a
:class:`ColdLane`: when its node needs room, the lane takes the oldest cold pages of one
process, at most the room needed, less those the worker promoted within the ping-pong
window, within ``demotion.rate_limit_mb_per_s``, and queues them on the worker's move
pipeline to the node's demotion target (the nearest slower node that promotes to it):
the same batched move_pages, accounting and ping-pong damping as promotion.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable

from .. import shim
from ..capacity import NodeCapacity
from ..config import DemotionConfig, WorkersConfig
from ..errors import MovePagesError
from ..inbox import PAGE_MASK, Inbox
from ..pipeline import MAX_BURST, PID_GONE_ERRNOS, MovePipeline, Settled
from ..policy import PingPongDamper, TokenBucket
from ..stats import PolicyStats

class ColdLane:
    """One fast node's demotion of the sampler's cold pages (see the module docstring)."""

    def __init__(self, inbox: Inbox, to: int, *, pipeline: MovePipeline,
                 capacity: NodeCapacity, damper: PingPongDamper, stats: PolicyStats,
                 page_size: int, forget_pid: Callable[[int], None],
                 count_call: Callable[[MovePagesError], None]) -> None:
        self.inbox = inbox
        self.to = to
        self.pipeline = pipeline
        self.capacity = capacity
        self.damper = damper
        self.stats = stats
        self.page_size = page_size
        self.forget_pid = forget_pid
        self.count_call = count_call
        self.cfg = WorkersConfig()
        self.bucket = TokenBucket(0, 0)
        self._backoff_until = 0.0

    def configure(self, workers: WorkersConfig, demotion: DemotionConfig) -> None:
        self.cfg = workers
        rate = demotion.rate_limit_mb_per_s * 1e6
        self.bucket = TokenBucket(rate, max(rate, workers.batch_pages * self.page_size))

    def submit(self, now: float, room: int, poll_s: float) -> None:
        """Queue a demotion job of cold pages when ``room`` (bytes) is needed: never more
        than the room, never a page promoted within the ping-pong window (each page the
        sampler offers as cold saw no access for demotion.cold_age_ms, so it is colder than
        any page it makes room for)."""
        box = self.inbox
        if self.pipeline.full or now < self._backoff_until:
            return
        if room <= 0:
            if box.pages:  # room was made: the rest is offered again when it is needed
                for pid, keys in list(box.keys.items()):
                    self.damper.seen_cold(pid, shim.split_keys(keys, PAGE_MASK)[0])
                self.stats.demote_refused["not_needed"] += box.clear()
            return
        oldest = box.oldest()
        if oldest is None:
            self.stats.room_starved_seconds += poll_s
            return
        pid, since = oldest
        generation = box.generation(pid)
        page = self.page_size
        keys = box.take(pid, min(-(-room // page), MAX_BURST * self.cfg.batch_pages))
        self.pipeline.drop_queued(pid, keys, demote=True)
        addrs, _ = shim.split_keys(keys, PAGE_MASK)
        self.damper.seen_cold(pid, addrs)
        recent = self.damper.promoted_recently(pid, addrs, now)
        if recent:
            self.stats.demote_refused["promoted_recently"] += len(recent)
            keys = array("Q", [k for k in keys if k & PAGE_MASK not in recent])
        if not len(keys):
            return
        granted = int(self.bucket.grant(len(keys) * page, now)) // page
        if granted < len(keys):
            box.put_back(pid, keys[granted:], since)
            self.stats.demote_refused["rate_limited"] += len(keys) - granted
            keys = keys[:granted]
        if len(keys):
            self.pipeline.submit(pid, since, keys, generation, dst=self.to, demote=True)

    def settle(self, s: Settled, now: float) -> None:
        """React to what the kernel did with a demotion job."""
        for addrs in s.moved_addrs:
            self.damper.record_demoted(s.pid, addrs, now)
            self.capacity.moved(len(addrs) * self.page_size)
        if s.refund_pages:
            self.bucket.refund(s.refund_pages * self.page_size)
        if s.busy_keys:  # cold pages in use after all: the sampler offers them again
            self.stats.demote_refused["busy"] += len(s.busy_keys)
        if s.failure is not None:
            self.count_call(s.failure)
            if s.failure.errno in PID_GONE_ERRNOS:
                self.stats.demote_refused["gone"] += s.failed_pages + len(s.untried)
                self.forget_pid(s.pid)
                return
        if s.enomem:  # the slower node is full too: wait before demoting again
            self._backoff_until = now + self.cfg.enomem_backoff_ms / 1000
        if len(s.untried):
            self.inbox.put_back(s.pid, s.untried, s.since)
