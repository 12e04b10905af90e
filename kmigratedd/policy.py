"""Promotion policy: pure, clock-injected pieces the node workers consult.

- :class:`TokenBucket`: rate limit in bytes per second per target node;
- :class:`HeadroomGuard`: stop promoting before the target node runs out of free
  memory, resume with hysteresis;
- :class:`PingPongDamper`: a page promoted and seen back on a slow node within a
  window is held off for a back-off period (counted); a page promoted within the
  window is not demoted, and one demoted within it is not promoted;
- :class:`RetryOnce`: pages that came back -EBUSY are retried once, later;
- :class:`AdaptiveThreshold`: the hotness threshold that fits what is promoted to the
  room the fast tier has (a histogram of candidate hotness, as MEMTIS keeps);
- :class:`PressureGuard`: holds promotion and demotion back while tasks stall on memory
  (the kernel's pressure-stall information).

Nothing here reads the clock or the kernel: callers pass ``now`` (seconds) and
free-memory figures, so tests drive every piece with tables.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """Bytes per second with a burst of ``burst_bytes``; rate 0 means unlimited."""

    rate_bytes_per_s: float
    burst_bytes: float
    tokens: float = field(default=-1.0)
    last: float | None = None

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst_bytes

    @property
    def unlimited(self) -> bool:
        return self.rate_bytes_per_s <= 0

    def _refill(self, now: float) -> None:
        if self.last is not None and now > self.last:
            self.tokens = min(self.burst_bytes,
                              self.tokens + (now - self.last) * self.rate_bytes_per_s)
        self.last = now if self.last is None else max(self.last, now)

    def grant(self, want_bytes: float, now: float) -> float:
        """Take up to ``want_bytes``; returns the bytes granted (may be 0)."""
        if self.unlimited:
            return want_bytes
        self._refill(now)
        got = min(want_bytes, self.tokens)
        self.tokens -= got
        return max(0.0, got)

    def refund(self, nbytes: float) -> None:
        """Give back tokens for pages that were not moved after all."""
        if not self.unlimited:
            self.tokens = min(self.burst_bytes, self.tokens + nbytes)

    def wait_for(self, want_bytes: float, now: float) -> float:
        """Seconds until ``want_bytes`` (capped at the burst) could be granted."""
        if self.unlimited:
            return 0.0
        self._refill(now)
        need = min(want_bytes, self.burst_bytes) - self.tokens
        return max(0.0, need / self.rate_bytes_per_s)


@dataclass
class HeadroomGuard:
    """Blocks promotion while the target's free memory is below ``min_free_bytes``
    and until it is back above ``resume_free_bytes`` (hysteresis)."""

    min_free_bytes: int
    resume_free_bytes: int
    blocked: bool = False

    def update(self, free_bytes: int) -> bool:
        """Feed the latest free figure; returns True when promotion may proceed."""
        if self.blocked:
            if free_bytes >= self.resume_free_bytes:
                self.blocked = False
        elif free_bytes < self.min_free_bytes:
            self.blocked = True
        return not self.blocked

    def allowance(self, free_bytes: int, unit: int = 1) -> int:
        """Bytes that may be promoted now without crossing ``min_free_bytes``.  Less than
        one ``unit`` (a page) left above it is the floor reached: blocked, as below it,
        until free memory is back above ``resume_free_bytes``."""
        if not self.update(free_bytes):
            return 0
        room = free_bytes - self.min_free_bytes
        if room < unit:
            self.blocked = True
            return 0
        return room


# More than this share of the demoted pages wanted back within the window: the exchange
# churns, and promoted pages are protected longer.
REGRET_SHARE = 0.1
# Fewer bounces than this in a period never widen the ping-pong window (noise).
MIN_BOUNCES = 64
# How often the held and demoted pages are swept of entries whose time is up (each is
# checked against the clock when read, so this only bounds their memory).
SWEEP_EVERY_S = 10.0


@dataclass
class PingPongDamper:
    """Remembers promoted pages for ``window_s``; a page seen back on a slow node in
    that window is held off for ``holdoff_s`` and counted. Batch operations use set
    and dict operations that run in C; memory is bounded by ``max_entries`` pages
    (the oldest promotions are forgotten first)."""

    window_s: float
    holdoff_s: float
    max_entries: int = 1 << 20
    # A page we promoted is not demoted for protect_s (>= window_s): it grows while
    # demoted pages are wanted back soon (regrets), and shrinks back when they are not
    # (:meth:`adapt`).
    protect_s: float = 0.0
    # pid -> {page address: time promoted}, in promotion order
    promoted: dict[int, dict[int, float]] = field(default_factory=dict)
    # pid -> {page address: held until}
    held: dict[int, dict[int, float]] = field(default_factory=dict)
    # pid -> {page address: time demoted}, within the window
    demoted: dict[int, dict[int, float]] = field(default_factory=dict)
    size: int = 0
    pingpongs: int = 0
    regrets: int = 0     # demoted pages offered for promotion again within the window
    # The precision guard: pages we promoted that a sampler then offered as cold (no access
    # for demotion.cold_age_ms) while we still remember them, each counted once.
    promoted_then_cold: int = 0
    cold_seen: dict[int, set[int]] = field(default_factory=dict)
    # The window and the holdoff are scaled by widen (>= 1): it grows while promoted pages
    # keep bouncing back (:meth:`adapt_window`).
    widen: float = 1.0
    widenings: int = 0   # times the window was widened, a counter that only grows
    # The promotions in time order, one entry per batch: (time, pid, page addresses).
    # Expiry pops them from the front, so each promoted page costs one look when it is
    # forgotten rather than one per expiry round.
    order: deque[tuple[float, int, Sequence[int]]] = field(default_factory=deque)
    # When held and demoted (small, and checked against the clock when read) were last
    # swept of old entries.
    swept_at: float = -1e18
    # Demoted pages, regrets, promoted pages and bounces at the last adapt_period.
    _period_base: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __post_init__(self) -> None:
        self.protect_s = max(self.protect_s, self.window_s)

    def record_promoted(self, pid: int, addrs: Sequence[int], now: float) -> None:
        table = self.promoted.setdefault(pid, {})
        before = len(table)
        table.update(dict.fromkeys(addrs, now))
        self.order.append((now, pid, addrs))
        self.size += len(table) - before
        if self.size > self.max_entries:
            self._forget_oldest(self.max_entries // 2)

    def _forget_oldest(self, keep: int, older_than: float | None = None) -> None:
        """Forget promotions from the oldest on, until at most ``keep`` pages are left
        or (with ``older_than``) none promoted before that time is."""
        while self.order and (self.size > keep if older_than is None
                              else self.order[0][0] < older_than):
            t, pid, addrs = self.order.popleft()
            table = self.promoted.get(pid)
            if not table:
                continue
            # A page promoted again since has a later time: it stays.
            gone = [a for a in addrs if table.get(a) == t]
            for a in gone:
                del table[a]
            self.size -= len(gone)
            seen = self.cold_seen.get(pid)
            if seen is not None:
                seen.difference_update(gone)
                if not seen:
                    del self.cold_seen[pid]
            if not table:
                del self.promoted[pid]

    def filter(self, pid: int, addrs: Sequence[int], now: float) -> Sequence[int]:
        """The candidates (pages now on a slow node) that may be promoted."""
        held = self.held.get(pid)
        promoted = self.promoted.get(pid)
        if not held and not promoted:
            return addrs
        blocked: set[int] = set()
        if held:
            blocked |= {a for a in held.keys() & set(addrs) if held[a] > now}
            down = self.demoted.get(pid)
            if down:
                again = down.keys() & set(addrs)
                for a in again:
                    if now - down.pop(a) <= self.window_s:
                        self.regrets += 1
        if promoted:
            back = promoted.keys() & set(addrs)
            for a in back:
                when = promoted.pop(a)
                self.size -= 1
                if now - when <= self.window_now_s:
                    # Demoted again soon after we promoted it: the page bounces.
                    self.pingpongs += 1
                    self.held.setdefault(pid, {})[a] = now + self.holdoff_s * self.widen
                    blocked.add(a)
        if not blocked:
            return addrs
        return [a for a in addrs if a not in blocked]

    def record_demoted(self, pid: int, addrs: Iterable[int], now: float) -> None:
        """Pages we demoted are not promoted again within the window (held until then);
        one offered for promotion in that window is a regret."""
        addrs = list(addrs)
        self.held.setdefault(pid, {}).update(dict.fromkeys(addrs, now + self.window_s))
        promoted = self.promoted.get(pid)
        if promoted:  # back on the slow node by our hand: not a bounce
            for a in promoted.keys() & set(addrs):
                del promoted[a]
                self.size -= 1
        table = self.demoted.setdefault(pid, {})
        table.update(dict.fromkeys(addrs, now))
        if len(table) > self.max_entries:  # bounded: forget the oldest half
            self.demoted[pid] = dict(list(table.items())[len(table) // 2:])

    def promoted_recently(self, pid: int, addrs: Sequence[int], now: float) -> set[int]:
        """The pages of ``addrs`` we promoted within ``protect_s`` (or the widened window,
        if longer): never demoted."""
        table = self.promoted.get(pid)
        if not table:
            return set()
        keep_s = max(self.protect_s, self.window_now_s)
        return {a for a in table.keys() & set(addrs) if now - table[a] <= keep_s}

    def seen_cold(self, pid: int, addrs: Sequence[int]) -> int:
        """Count the pages of ``addrs`` (offered as cold) that we promoted and still
        remember, once each; returns how many were new."""
        table = self.promoted.get(pid)
        if not table:
            return 0
        seen = self.cold_seen.setdefault(pid, set())
        new = (table.keys() & set(addrs)) - seen
        seen |= new
        self.promoted_then_cold += len(new)
        return len(new)

    def adapt(self, demoted: int, regrets: int, max_protect_s: float) -> None:
        """Once a period, with the pages demoted and the regrets in it: double the
        protection while more than a REGRET_SHARE of the demoted pages come back within the
        window (the hot set is larger than the fast tier, and exchanging it only churns),
        bring it back towards the window when none does."""
        if demoted > 0 and regrets > demoted * REGRET_SHARE:
            self.protect_s = min(max(max_protect_s, self.window_s), self.protect_s * 2)
        elif regrets == 0:
            # Demotions that nobody wanted back halve it; no demotion at all (nothing to
            # judge by) lets it fade more slowly.
            self.protect_s = max(self.window_s, self.protect_s * (0.5 if demoted else 0.85))

    def adapt_window(self, promoted: int, pingpongs: int, max_widen: float) -> None:
        """Once a period, with the pages promoted and the bounces in it: double the window
        and the holdoff while bounces exceed a REGRET_SHARE of the promotions (and
        MIN_BOUNCES), halve them back towards the configured ones while pages are promoted
        and none bounces.  A period with neither (the bounced pages held, nothing else to
        promote) leaves them as they are: that is the exchange settled.

        A bounce is the kernel demoting a page we promoted (kswapd, under memory
        pressure): where that keeps happening the hot set is larger than the fast tier,
        and promoting more only swaps hot pages for each other.  The wider window catches
        the bounces that show up late (the NUMA scanner's period grows to a minute and
        more), and the longer holdoff keeps each bounced page where it is."""
        if pingpongs >= MIN_BOUNCES and pingpongs > promoted * REGRET_SHARE:
            if self.widen < max_widen:
                self.widenings += 1
            self.widen = min(max_widen, self.widen * 2)
        elif pingpongs == 0 and promoted > 0:
            self.widen = max(1.0, self.widen * 0.5)

    def adapt_period(self, demoted_total: int, promoted_total: int, max_protect_windows: float,
                     max_widen: float) -> None:
        """Once a period, from running totals of the pages demoted and promoted (its own
        regrets and bounces too): :meth:`adapt` the protection and :meth:`adapt_window`
        the window by what happened since the last period."""
        base = (demoted_total, self.regrets, promoted_total, self.pingpongs)
        delta = [a - b for a, b in zip(base, self._period_base)]
        self.adapt(delta[0], delta[1], max_protect_windows * self.window_s)
        self.adapt_window(delta[2], delta[3], max_widen)
        self._period_base = base

    @property
    def window_now_s(self) -> float:
        """The ping-pong window in force (the configured one, widened)."""
        return self.window_s * self.widen

    def forget_pid(self, pid: int) -> None:
        self.size -= len(self.promoted.pop(pid, {}))
        self.held.pop(pid, None)
        self.demoted.pop(pid, None)
        self.cold_seen.pop(pid, None)

    def expire(self, now: float) -> None:
        """Drop entries that can no longer matter: promotions older than the window (or
        the protection, if longer), each batch once; every ``SWEEP_EVERY_S`` also the held
        and demoted pages whose time is up."""
        self._forget_oldest(0, older_than=now - max(self.window_now_s, self.protect_s))
        if now - self.swept_at < SWEEP_EVERY_S:
            return
        self.swept_at = now
        for pid, table in list(self.held.items()):
            fresh = {a: t for a, t in table.items() if t > now}
            if fresh:
                self.held[pid] = fresh
            else:
                del self.held[pid]
        for pid, table in list(self.demoted.items()):
            fresh = {a: t for a, t in table.items() if now - t <= self.window_s}
            if fresh:
                self.demoted[pid] = fresh
            else:
                del self.demoted[pid]


@dataclass
class RetryOnce:
    """Pages that failed with a transient status (-EBUSY) get one more try, after
    ``delay_s``; a second failure drops them. Bounded to ``max_entries``."""

    delay_s: float
    max_entries: int = 1 << 16
    pending: OrderedDict[tuple[int, int], float] = field(default_factory=OrderedDict)
    tried: set[tuple[int, int]] = field(default_factory=set)
    dropped: int = 0

    def failed(self, pid: int, addr: int, now: float) -> bool:
        """Register a transient failure; returns True if it will be retried."""
        key = (pid, addr)
        if key in self.tried:
            self.tried.discard(key)
            self.dropped += 1
            return False
        if len(self.pending) >= self.max_entries:
            self.pending.popitem(last=False)
            self.dropped += 1
        self.pending[key] = now + self.delay_s
        return True

    def due(self, now: float) -> list[tuple[int, int]]:
        """Pages whose retry is due; each is marked as tried once."""
        out = []
        while self.pending:
            key, when = next(iter(self.pending.items()))
            if when > now:
                break
            self.pending.popitem(last=False)
            self.tried.add(key)
            out.append(key)
        if len(self.tried) > self.max_entries:
            self.tried.clear()
        return out

    def forget_pid(self, pid: int) -> None:
        for key in [k for k in self.pending if k[0] == pid]:
            del self.pending[key]
        self.tried = {k for k in self.tried if k[0] != pid}


# Histogram bins of the adaptive threshold: bin b holds folded counts in [2^b, 2^(b+1)).
THRESHOLD_BINS = 33


@dataclass
class AdaptiveThreshold:
    """The hotness threshold (folded samples per candidate) that fits promotion to the room.

    Every candidate the router folds adds to a histogram of hotness in power-of-two bins
    (``observe``); the histogram decays with a half-life of ``half_life_s``, so it holds
    the candidates of the last few seconds.  ``update`` compares it with the pages the fast
    tier can take (free memory above the headroom plus the cold pages waiting to be
    demoted): while every candidate fits, the threshold is ``floor`` (workers.min_samples);
    when they do not, it rises to the lowest bin whose candidates, with those of every
    hotter bin, fit, so the hottest pages go first and lukewarm ones stop displacing
    cold ones.  The hottest bin always passes (at least one batch of it): while
    candidates wait, room is needed and the samplers offer cold pages, which is how
    capacity shows up."""

    floor: int
    half_life_s: float = 2.0
    enabled: bool = True
    value: int = 0
    hist: list[float] = field(default_factory=lambda: [0.0] * THRESHOLD_BINS)
    last: float | None = None
    raised_seconds: float = 0.0     # time spent above the floor

    def __post_init__(self) -> None:
        self.value = max(1, self.floor)

    def observe(self, counts: Iterable[int]) -> None:
        """Folded counts of the candidates just drained (each at least 1: the fold drops
        zero counts).  Counted by bit length in C (map, Counter); the Python loop runs
        over the bins, not the candidates."""
        hist = self.hist
        top = THRESHOLD_BINS - 1
        for length, n in Counter(map(int.bit_length, counts)).items():
            hist[min(top, max(1, length) - 1)] += n

    def update(self, capacity_pages: int, now: float) -> int:
        """Decay the histogram to ``now`` and set the threshold for ``capacity_pages``;
        returns it."""
        floor = max(1, self.floor)
        if self.last is not None and now > self.last:
            dt = now - self.last
            if self.value > floor:
                self.raised_seconds += dt
            factor = 0.5 ** (dt / self.half_life_s) if self.half_life_s > 0 else 0.0
            self.hist = [h * factor for h in self.hist]
        self.last = now if self.last is None else max(self.last, now)
        if not self.enabled:
            self.value = floor
            return floor
        above = 0.0
        value = floor
        passing = None   # the lowest bin that fits so far
        for b in range(THRESHOLD_BINS - 1, -1, -1):
            h = self.hist[b]
            if h < 0.5:  # less than one candidate left after decay: empty
                self.hist[b] = 0.0
                continue
            if passing is not None and above + h > capacity_pages:
                value = 1 << passing
                break
            above += h
            passing = b
        self.value = max(floor, value)
        return self.value


@dataclass
class PressureGuard:
    """Holds promotion and demotion back while memory pressure is high.

    ``update`` is fed the cumulative stall times (microseconds, PSI's ``total=``) of each
    source; the share of the time since the previous update spent stalled is that
    source's pressure.  Promotion is held from when a source's share reaches
    ``hold_ratio`` until every source is below half of it (hysteresis); 0 turns it off.
    A source seen for the first time (or going back, a cgroup recreated) gives no share
    until its next update."""

    hold_ratio: float
    held: bool = False
    last: float | None = None
    totals: dict[str, int] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    held_seconds: float = 0.0
    holds: int = 0            # times it started holding

    def update(self, now: float, totals: dict[str, int]) -> bool:
        """Feed the sources' totals at ``now``; returns whether promotion is held."""
        if self.last is not None and now > self.last:
            dt = now - self.last
            if self.held:
                self.held_seconds += dt
            ratios = {}
            for src, total in totals.items():
                before = self.totals.get(src)
                if before is not None and total >= before:
                    ratios[src] = min(1.0, (total - before) / (dt * 1e6))
            self.ratios = ratios
        self.totals = dict(totals)
        self.last = now if self.last is None else max(self.last, now)
        top = max(self.ratios.values(), default=0.0)
        if self.hold_ratio <= 0:
            self.held = False
        elif not self.held and top >= self.hold_ratio:
            self.held = True
            self.holds += 1
        elif self.held and top < self.hold_ratio / 2:
            self.held = False
        return self.held
