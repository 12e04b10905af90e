"""The daemon's threads: its thread pools, and its niceness (``daemon.nice``) for every
thread but those that call move_pages."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .kernelfs import KernelFs

log = logging.getLogger("kmigratedd")


class Threads:
    def __init__(self) -> None:
        self.pools: list[ThreadPoolExecutor] = []
        self.move_tids: set[int] = set()
        self.start_nice = 0

    def pool(self, threads: int, name: str, *, moves: bool = False) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name,
                                  initializer=self._move_thread if moves else None)
        self.pools.append(pool)
        return pool

    def _move_thread(self) -> None:
        """A thread that calls move_pages runs at the niceness the daemon started with,
        not daemon.nice: the pages of its batch are out of the application's reach until
        the kernel has copied them, so the batch must not wait for a CPU behind the
        application itself."""
        tid = threading.get_native_id()
        self.move_tids.add(tid)
        try:
            os.setpriority(os.PRIO_PROCESS, tid, self.start_nice)
        except OSError as exc:
            log.warning("move thread: could not keep niceness %d (%s): it runs at %d",
                        self.start_nice, exc.strerror, os.getpriority(os.PRIO_PROCESS, tid))

    def apply_nice(self, fs: KernelFs, nice: int, *, quiet: bool = False) -> None:
        """Set every thread of the daemon to ``nice`` (new threads inherit it from the
        thread that starts them), but the move threads (:meth:`_move_thread`); ``quiet``:
        best effort, a thread that cannot be set is not logged."""
        failed = []
        for tid in fs.listdir("/proc/self/task", r"\d+"):
            if int(tid) in self.move_tids:
                continue
            try:
                if os.getpriority(os.PRIO_PROCESS, int(tid)) != nice:
                    os.setpriority(os.PRIO_PROCESS, int(tid), nice)
            except OSError as exc:
                failed.append(f"{tid}: {exc.strerror}")
        if failed and not quiet:
            log.warning("daemon.nice %d: could not set %d thread(s) (%s); going below the "
                        "niceness it started with needs CAP_SYS_NICE", nice, len(failed),
                        failed[0])

    def shutdown(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=False, cancel_futures=True)


def exit_within(grace_s: float, code: int, message: str | None = None) -> None:
    """After the orderly shutdown, make sure the process ends within ``grace_s`` seconds.

    Python joins the thread pools' threads at exit (and asyncio the default executor's), so
    a thread still blocked in a sampler round or in a move_pages batch would keep the process
    alive until systemd or the kubelet kills it.  Everything the daemon must undo is undone by
    then (sysctls, kdamonds, the control socket), and a page is never half moved, so a daemon
    thread ends the process with ``code`` (and ``message``, the failure's line, on stderr)
    if it is still here after ``grace_s``, and names the threads it left behind."""

    def fire() -> None:
        time.sleep(grace_s)
        busy = sorted(t.name for t in threading.enumerate()
                      if t is not threading.main_thread() and not t.daemon)
        log.warning("exiting with %d thread(s) still busy %.1f s after the shutdown: %s",
                    len(busy), grace_s, ", ".join(busy) or "-")
        if message is not None:
            print(message, file=sys.stderr)
        logging.shutdown()
        os._exit(code)

    threading.Thread(target=fire, name="kmigratedd-exit", daemon=True).start()
