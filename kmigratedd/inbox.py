"""A node worker's inbox: the pages the router found on a slower node, waiting to be
promoted to this worker's target, grouped by pid.

A key packs a page address and the node the page was found on: ``addr | src_node``
(a page address has its low 12 bits clear), so a sort by key is a sort by address and
the source node travels with the page for accounting. move_pages(2) takes any address
inside a page, so keys are passed to the kernel as they are.

The inbox is bounded (``limit`` pages): past it, the oldest pages of the pid that has
waited longest are dropped and counted. It lives on the event loop thread: the router
puts pages in, the worker takes them out.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable

from . import shim

# A key is a page address with the page's source node in its low 12 bits.
PAGE_MASK = ~0xFFF


class Inbox:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.keys: dict[int, array[int]] = {}   # pid -> keys (addr | src node)
        self.since: dict[int, float] = {}       # pid -> when its oldest key arrived
        self.pages = 0
        self.dropped = 0                        # pages dropped because the inbox was full
        # pid -> serial number of the last accept for it (pids with keys only): a job
        # remembers the value it saw, so it can tell whether pages of its pid arrived
        # while it was moving.
        self._accepts: dict[int, int] = {}
        self._serial = 0
        self._listeners: list[Callable[[], None]] = []
        self._room_listeners: list[Callable[[], None]] = []

    def on_accept(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after pages arrive (the worker wakes up)."""
        self._listeners.append(listener)

    def on_room(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after pages leave (the router may drain more)."""
        self._room_listeners.append(listener)

    @property
    def room(self) -> int:
        return max(0, self.limit - self.pages)

    def generation(self, pid: int) -> int:
        """Changes whenever pages of ``pid`` arrive (or all of them were taken)."""
        return self._accepts.get(pid, 0)

    def oldest(self) -> tuple[int, float] | None:
        """The pid whose pages have waited longest, and since when."""
        if not self.since:
            return None
        pid = min(self.since, key=self.since.__getitem__)
        return pid, self.since[pid]

    def ready(self, batch_pages: int, max_wait_s: float, now: float) -> bool:
        """A full batch waits, or the oldest page has waited ``max_wait_s``."""
        if self.pages >= batch_pages:
            return True
        oldest = self.oldest()
        return oldest is not None and now - oldest[1] >= max_wait_s

    def accept_each(self, due: Iterable[tuple[int, int]], now: float) -> None:
        """Accept (pid, key) pairs, say the retries that are due, grouped by pid."""
        by_pid: dict[int, list[int]] = {}
        for pid, key in due:
            by_pid.setdefault(pid, []).append(key)
        for pid, keys in by_pid.items():
            self.accept(pid, array("Q", keys), now)

    def accept(self, pid: int, keys: array[int], now: float) -> None:
        """Take pages in; over the bound, drop the oldest pages of the longest-waiting
        pid, only as many as needed."""
        if not len(keys):
            return
        self._serial += 1
        self._accepts[pid] = self._serial
        have = self.keys.get(pid)
        if have is None:
            self.keys[pid] = keys
            self.since[pid] = now
        else:
            have.extend(keys)
        self.pages += len(keys)
        while self.pages > self.limit and self.keys:
            victim = min(self.since, key=self.since.__getitem__)
            have = self.keys[victim]
            excess = min(len(have), self.pages - self.limit)
            del have[:excess]
            self.pages -= excess
            self.dropped += excess
            if not len(have):
                self._drop(victim)
        for listener in self._listeners:
            listener()

    def take(self, pid: int, n: int) -> array[int]:
        """Up to ``n`` of ``pid``'s keys, lowest addresses first (sorted, deduplicated);
        the rest stays."""
        keys = self.keys.pop(pid)
        since = self.since.pop(pid)
        self.pages -= len(keys)
        shim.sort_unique(keys)  # in C: inboxes are sorted runs, a page may come twice
        batch, rest = keys[:n], keys[n:]
        if len(rest):
            self.keys[pid] = rest
            self.since[pid] = since
            self.pages += len(rest)
        else:
            self._accepts.pop(pid, None)
        for listener in self._room_listeners:
            listener()
        return batch

    def put_back(self, pid: int, keys: array[int], since: float) -> None:
        """Return keys that were taken but not moved, ahead of the ones that arrived since."""
        if not len(keys):
            return
        have = self.keys.pop(pid, None)
        self.keys[pid] = keys + have if have is not None else keys
        self.since[pid] = min(since, self.since.get(pid, since))
        self.pages += len(keys)

    def purge(self, pid: int, done: array[int]) -> None:
        """Take the keys of a batch just moved (``done``, sorted) out of ``pid``'s pages:
        the router may have found them on their slow node again while they moved."""
        have = self.keys.get(pid)
        if have is None:
            return
        n0 = len(have)
        shim.sort_unique(have)
        shim.remove_sorted(have, done)
        self.pages -= n0 - len(have)
        if not len(have):
            self._drop(pid)

    def forget_pid(self, pid: int) -> int:
        """Drop every page of a process that exited; returns how many."""
        keys = self.keys.get(pid)
        n = len(keys) if keys is not None else 0
        self.pages -= n
        self._drop(pid)
        return n

    def clear(self) -> int:
        """Drop every page; returns how many."""
        n = self.pages
        for pid in list(self.keys):
            self._drop(pid)
        self.pages = 0
        return n

    def _drop(self, pid: int) -> None:
        self.keys.pop(pid, None)
        self.since.pop(pid, None)
        self._accepts.pop(pid, None)
