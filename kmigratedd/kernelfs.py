"""The seam for /sys and /proc: the only module that opens kernel pseudo-files.

Every reader takes a :class:`KernelFs` whose ``root`` stands for ``/``; tests hand
in a checked-in fake tree (tests/data/*/) and real runs use ``KernelFs("/")``.
Files read word by word from C (the page_idle bitmap, /proc/kpageflags,
/proc/PID/pagemap) are opened by :meth:`KernelFs.open`, which hands back the fd.
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
        # Paths are joined as strings: pathlib costs more than the read of a small
        # sysfs file, and samplers read dozens of them every round.
        self._prefix = str(self.root).rstrip("/")

    def host(self, kpath: str) -> str:
        """Host path of the kernel path ``kpath`` (absolute, e.g. ``/sys/...``), as a str."""
        return self._prefix + "/" + kpath.lstrip("/")

    def path(self, kpath: str) -> Path:
        """Host path of the kernel path ``kpath`` (absolute, e.g. ``/sys/...``)."""
        return Path(self.host(kpath))

    def exists(self, kpath: str) -> bool:
        return os.path.exists(self.host(kpath))

    def open(self, kpath: str, flags: int) -> int:
        """Open a kernel file with ``os.open`` ``flags`` (O_CLOEXEC is added); returns
        the fd, which the caller closes."""
        return os.open(self.host(kpath), flags | os.O_CLOEXEC)

    def read(self, kpath: str) -> str:
        fd = self.open(kpath, os.O_RDONLY)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks).decode("ascii", "replace")

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
            names = os.listdir(self.host(kpath))
        except (FileNotFoundError, NotADirectoryError):
            return []
        if pattern is not None:
            rx = re.compile(pattern)
            names = [n for n in names if rx.fullmatch(n)]
        return sorted(names, key=_natural_key)

    def proc_pids(self) -> list[int]:
        """The pids listed in /proc, in order ([] without /proc)."""
        try:
            names = os.listdir(self.host("/proc"))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def write(self, kpath: str, value: str) -> None:
        """Write ``value`` to a kernel file, or only record it."""
        self.writes.append((kpath, value))
        if self.record_writes:
            return
        with open(self.host(kpath), "w", encoding="ascii") as f:
            f.write(value)


def line_with(text: str, needle: str) -> str | None:
    """The line of ``text`` holding the first ``needle`` (which may begin with the
    newline before the line), without its newline; None if there is none.  Finds one
    counter in /proc/vmstat or node meminfo without splitting every line."""
    i = text.find(needle)
    if i < 0:
        return None
    end = text.find("\n", i + 1)
    return text[text.rfind("\n", 0, i + 1) + 1:end if end >= 0 else None]


def _natural_key(name: str) -> tuple[str, int]:
    m = re.match(r"(\D*)(\d+)$", name)
    return (m.group(1), int(m.group(2))) if m else (name, -1)
