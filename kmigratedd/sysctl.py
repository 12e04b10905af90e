"""Sysctls kmigratedd changes, saved before and restored after — even after a crash.

:class:`SysctlGuard` writes the values it finds to a state file (atomically, with
fsync) *before* changing anything, restores them on every exit path, and at the
next start restores what a killed daemon left behind (:meth:`recover`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from .kernelfs import KernelFs

log = logging.getLogger("kmigratedd.sysctl")


class SysctlGuard:
    def __init__(self, fs: KernelFs, state_path: str | Path, wanted: Mapping[str, str]) -> None:
        self.fs = fs
        self.state_path = Path(state_path)
        self.wanted = dict(wanted)  # kernel path -> value
        self.saved: dict[str, str] | None = None

    def recover(self) -> dict[str, str]:
        """Restore values left in the state file by a daemon that did not exit cleanly."""
        try:
            saved = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable sysctl state file %s: %s", self.state_path, exc)
            return {}
        if not isinstance(saved, dict):
            return {}
        for kpath, value in saved.items():
            log.warning("restoring %s=%s left changed by a previous run", kpath, value)
            self.fs.write(kpath, str(value))
        self.state_path.unlink(missing_ok=True)
        return {str(k): str(v) for k, v in saved.items()}

    def apply(self) -> None:
        """Save the current values, then set the wanted ones."""
        current = {k: self.fs.read(k).strip() for k in self.wanted}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(current, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)
        self.saved = current
        for kpath, value in self.wanted.items():
            if current[kpath] != value:
                log.info("setting %s=%s (was %s)", kpath, value, current[kpath])
                self.fs.write(kpath, value)

    def restore(self) -> None:
        """Put the saved values back and forget the state file (idempotent)."""
        if self.saved is None:
            return
        for kpath, value in self.saved.items():
            try:
                self.fs.write(kpath, value)
            except OSError as exc:
                log.error("could not restore %s=%s: %s", kpath, value, exc)
                return  # keep the state file: the next start retries
        self.saved = None
        self.state_path.unlink(missing_ok=True)
