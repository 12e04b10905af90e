"""The kdamonds kmigratedd runs, as one session: the DAMON sampler's one vaddr kdamond, or
the paddr demoter's one per fast node.

:meth:`KdamondSession.claim` writes ``nr_kdamonds`` (after reading the value it found)
and :meth:`KdamondSession.release` turns every kdamond of the session off and writes the
value found back.  Writing ``nr_kdamonds`` rebuilds every kdamond directory, so DAMON
that another tool runs (a kdamond ``on``) makes the probes refuse, and an EBUSY names
the tool where it can (:func:`~kmigratedd.damon.sysfs.damon_in_use`).  With an owner
file, the session names the kdamonds it turned on (index and pid), and the next start
after a crash turns off those still on with the recorded pid (:func:`recover`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import SamplerUnavailableError
from ..kernelfs import KernelFs
from .sysfs import NR_KDAMONDS, DamonSysfs, damon_in_use

log = logging.getLogger("kmigratedd.damon")

OnError = Callable[[str, BaseException], None]


class KdamondSession:
    """``count`` kdamonds, from index 0, for as long as the session is claimed."""

    def __init__(self, fs: KernelFs, count: int, *, owner_file: str | Path | None = None,
                 on_error: OnError | None = None) -> None:
        self.fs = fs
        self.kdamonds = [DamonSysfs(fs, i) for i in range(count)]
        self.owner_file = Path(owner_file) if owner_file is not None else None
        self.on_error: OnError = on_error or (lambda what, exc: log.warning("%s: %s", what, exc))
        self.found_nr: int | None = None

    @property
    def claimed(self) -> bool:
        return self.found_nr is not None

    def why(self, what: str, exc: OSError) -> str:
        """One line for a failure to set DAMON up."""
        if exc.errno == errno.EBUSY:
            return damon_in_use(self.fs) or f"{what}: DAMON is in use by another tool (EBUSY)"
        return f"{what}: {exc.strerror or exc}"

    @contextmanager
    def setting_up(self, what: str, close: Callable[[], None]) -> Iterator[None]:
        """Claim the session and set it up in the ``with`` block: on failure ``close()``
        runs and a SamplerUnavailableError (an OSError's one line, :meth:`why`) leaves."""
        self.claim()
        try:
            yield
        except SamplerUnavailableError:
            close()
            raise
        except OSError as exc:
            close()
            raise SamplerUnavailableError(self.why(what, exc)) from None

    def claim(self) -> None:
        """Write ``nr_kdamonds``; SamplerUnavailableError says why it could not."""
        admin = self.kdamonds[0] if self.kdamonds else DamonSysfs(self.fs)
        found = admin.nr_kdamonds()
        try:
            admin.set_nr_kdamonds(len(self.kdamonds))
        except OSError as exc:
            raise SamplerUnavailableError(self.why(NR_KDAMONDS, exc)) from None
        self.found_nr = found

    def off(self, k: DamonSysfs, known_on: bool = False) -> None:
        """Turn one kdamond off if it is on, or ``known_on`` (EPERM: it stopped by itself
        meanwhile)."""
        if not known_on and not k.is_on():
            return
        try:
            k.command("off")
        except OSError as exc:
            if exc.errno != errno.EPERM:
                self.on_error(f"turning kdamond {k.index} off", exc)

    def release(self) -> None:
        """Turn every kdamond off and write ``nr_kdamonds`` back (idempotent)."""
        if self.found_nr is None:
            return
        for k in self.kdamonds:
            self.off(k)
        admin = self.kdamonds[0] if self.kdamonds else DamonSysfs(self.fs)
        try:
            admin.set_nr_kdamonds(self.found_nr)
        except OSError as exc:
            self.on_error(f"restoring {NR_KDAMONDS} to {self.found_nr}", exc)
        self.found_nr = None
        if self.owner_file is not None:
            try:
                self.owner_file.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.on_error(f"removing {self.owner_file}", exc)

    def record_owner(self) -> None:
        """Name the kdamonds on (index and pid) in the owner file."""
        if self.owner_file is None:
            return
        owned = {}
        for k in self.kdamonds:
            pid = k.pid() or ""
            if pid.isdigit():
                owned[str(k.index)] = int(pid)
        try:
            self.owner_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self.owner_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(owned))
            os.replace(tmp, self.owner_file)
        except OSError as exc:
            self.on_error(f"writing {self.owner_file}", exc)


def recover(fs: KernelFs, path: str | Path) -> list[int]:
    """Turn off the kdamonds a previous run left on (those still on with the pid it
    recorded), then forget the file; returns their indexes."""
    p = Path(path)
    try:
        owned = json.loads(p.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("DAMON: ignoring %s: %s", p, exc)
        owned = {}
    stopped = []
    for idx, pid in (owned.items() if isinstance(owned, dict) else ()):
        k = DamonSysfs(fs, int(idx))
        try:
            on, now = k.is_on(), k.pid()
        except OSError as exc:
            log.warning("DAMON: could not read kdamond %s left by a previous run: %s",
                        idx, exc)
            continue
        if on and now == str(pid):
            try:
                k.command("off")
                stopped.append(int(idx))
                log.warning("DAMON: turned off kdamond %s (pid %s), left on by a previous "
                            "run", idx, pid)
            except OSError as exc:
                log.warning("DAMON: could not turn off kdamond %s left on by a previous "
                            "run: %s", idx, exc)
    try:
        p.unlink()
    except OSError:
        pass
    return stopped
