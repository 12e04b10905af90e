"""The seam for /sys and /proc: the only module that opens kernel pseudo-files.

Every reader takes a :class:`KernelFs` whose ``root`` stands for ``/``; tests hand
in a checked-in fake tree (tests/data/*/) and real runs use ``KernelFs("/")``.
Writes (sysctls, DAMON, page_idle) go through :meth:`KernelFs.write`, which can
record them instead of doing them (``record_writes=True``) so a test can assert
the exact ordered list of writes, as damo's ``_damo_fs`` does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path


def parse_cpulist(text: str) -> frozenset[int]:
    """Parse a kernel cpulist/nodelist such as ``0-3,8,10-11`` (empty → empty set)."""
    out: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            # "0-31:2/8" (stride/group) is only produced for isolcpus-like params.
            out.update(range(int(lo), int(hi.split(":", 1)[0]) + 1))
        else:
            out.add(int(part))
    return frozenset(out)


@dataclass
class KernelFs:
    """Read (and write) kernel pseudo-files below ``root``."""

    root: Path = Path("/")
    record_writes: bool = False
    writes: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def path(self, kpath: str) -> Path:
        """Host path of the kernel path ``kpath`` (absolute, e.g. ``/sys/...``)."""
        return self.root / kpath.lstrip("/")

    def exists(self, kpath: str) -> bool:
        return self.path(kpath).exists()

    def read(self, kpath: str) -> str:
        with open(self.path(kpath), encoding="ascii", errors="replace") as f:
            return f.read()

    def read_optional(self, kpath: str) -> str | None:
        try:
            return self.read(kpath)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read_int(self, kpath: str, base: int = 10) -> int:
        return int(self.read(kpath).strip(), base)

    def listdir(self, kpath: str, pattern: str | None = None) -> list[str]:
        """Entries of a directory (sorted naturally); [] if it does not exist."""
        try:
            names = os.listdir(self.path(kpath))
        except (FileNotFoundError, NotADirectoryError):
            return []
        if pattern is not None:
            rx = re.compile(pattern)
            names = [n for n in names if rx.fullmatch(n)]
        return sorted(names, key=_natural_key)

    def write(self, kpath: str, value: str) -> None:
        """Write ``value`` to a kernel file, or only record it."""
        self.writes.append((kpath, value))
        if self.record_writes:
            return
        with open(self.path(kpath), "w", encoding="ascii") as f:
            f.write(value)


def _natural_key(name: str) -> tuple[str, int]:
    m = re.match(r"(\D*)(\d+)$", name)
    return (m.group(1), int(m.group(2))) if m else (name, -1)
