"""What a node worker lets through from its inbox to its move pipeline, in this order:
ping-pong hold-off, free-memory headroom on the target (counting what is already queued
to move: :class:`~kmigratedd.capacity.NodeCapacity`), token-bucket rate limit.  What is
held back goes back to the inbox, with the time to wait before trying again."""

from __future__ import annotations

from array import array

from . import shim
from .capacity import NodeCapacity
from .config import WorkersConfig
from .inbox import PAGE_MASK, Inbox
from .policy import HeadroomGuard, PingPongDamper, TokenBucket
from .stats import PolicyStats


class Admission:
    """A worker's gate: its headroom guard, rate limit and ping-pong damper."""

    def __init__(self, cfg: WorkersConfig, page_size: int, damper: PingPongDamper,
                 stats: PolicyStats) -> None:
        self.page_size, self.damper, self.stats = page_size, damper, stats
        self.configure(cfg)

    def configure(self, cfg: WorkersConfig) -> None:
        self.cfg = cfg
        rate = cfg.rate_limit_mb_per_s * 1e6
        self.bucket = TokenBucket(rate, max(rate, cfg.batch_pages * self.page_size))
        self.headroom = HeadroomGuard(cfg.min_free_bytes, cfg.resume_free_bytes)

    def admit(self, inbox: Inbox, capacity: NodeCapacity, pid: int, keys: array[int],
              since: float, now: float, poll_s: float) -> tuple[array[int], float]:
        """The keys of ``pid`` that go to the pipeline now (the others go back to
        ``inbox``), and the seconds to wait when the headroom or the rate limit held
        them all back (0.0 otherwise)."""
        keys = self._pingpong(pid, keys, now)
        if not len(keys):
            return keys, 0.0
        page = self.page_size
        # Headroom on the target node, counting what the queued jobs will use and free.
        allowance = self.headroom.allowance(capacity.available(now), page) // page
        if allowance <= 0:
            inbox.put_back(pid, keys, since)
            self.stats.headroom_blocked_seconds += poll_s
            return keys[:0], poll_s
        if allowance < len(keys):
            inbox.put_back(pid, keys[allowance:], since)
            keys = keys[:allowance]
        granted = int(self.bucket.grant(len(keys) * page, now)) // page
        if granted < len(keys):
            self.stats.rate_limited_batches += 1
        if granted <= 0:
            inbox.put_back(pid, keys, since)
            wait = min(self.bucket.wait_for(len(keys) * page, now), self.cfg.max_wait_ms / 1000)
            wait = max(wait, 0.001)
            self.stats.rate_limited_seconds += wait
            return keys[:0], wait
        if granted < len(keys):
            inbox.put_back(pid, keys[granted:], since)
            keys = keys[:granted]
        return keys, 0.0

    def _pingpong(self, pid: int, keys: array[int], now: float) -> array[int]:
        """Hold off pages we promoted that are back on a slow node within the window."""
        addrs, _ = shim.split_keys(keys, PAGE_MASK)
        allowed = self.damper.filter(pid, addrs, now)
        if len(allowed) == len(addrs):
            return keys
        self.stats.pingpong_held += len(addrs) - len(allowed)
        ok = set(allowed)
        return array("Q", [k for k in keys if k & PAGE_MASK in ok])

    def burst_limit(self, waiting_bytes: int) -> int:
        """At most one burst of the rate limit of ``waiting_bytes``."""
        if self.bucket.unlimited:
            return waiting_bytes
        return min(waiting_bytes, int(self.bucket.burst_bytes))
