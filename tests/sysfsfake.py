"""Fake sysfs trees for the DAMON and demotion tests: a tree with DAMON's admin files, memory
blocks and demotion_enabled, and a KernelFs that records its writes and fails on demand."""

from __future__ import annotations

from pathlib import Path

from kmigratedd.kernelfs import KernelFs

K = "/sys/kernel/mm/damon/admin/kdamonds"
C = f"{K}/0/contexts/0"
S = f"{C}/schemes/0"
PS = 4096
BLOCK = 128 << 20
MiB = 1 << 20
DEMOTION_ENABLED = "/sys/kernel/mm/numa/demotion_enabled"


def put(root: Path, kpath: str, text: str) -> None:
    p = root / kpath.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


class FakeFs(KernelFs):
    """Records every write; "on"/"off" change the state file; ``fail`` maps
    (path, value) to an errno."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, record_writes=True)
        self.fail: dict[tuple[str, str], int] = {}

    def write(self, kpath: str, value: str) -> None:
        err = self.fail.get((kpath, value))
        if err:
            raise OSError(err, "fake")
        super().write(kpath, value)
        if kpath.endswith("/state") and value in ("on", "off"):
            self.path(kpath).write_text(value + "\n")


def make_tree(root: Path, *, release: str = "6.12.117+deb12-amd64", nr_kdamonds: str = "0",
              blocks: tuple[int, ...] = (0, 1, 2, 3, 8, 9), offline: tuple[int, ...] = (3,)
              ) -> FakeFs:
    put(root, "/proc/sys/kernel/osrelease", release + "\n")
    put(root, f"{K}/nr_kdamonds", nr_kdamonds + "\n")
    put(root, f"{K}/0/state", "off\n")
    put(root, f"{C}/avail_operations", "vaddr fvaddr paddr\n")
    put(root, "/sys/devices/system/memory/block_size_bytes", f"{BLOCK:x}\n")
    for b in blocks:
        (root / f"sys/devices/system/node/node0/memory{b}").mkdir(parents=True)
        put(root, f"/sys/devices/system/memory/memory{b}/online",
                "0\n" if b in offline else "1\n")
    (root / "sys/devices/system/node/node1/memory16").mkdir(parents=True)
    put(root, DEMOTION_ENABLED, "false\n")
    return FakeFs(root)


def set_stats(root: Path, sz_applied: int, nr_applied: int = 1) -> None:
    for name, v in (("nr_tried", 3), ("sz_tried", 4 * sz_applied), ("nr_applied", nr_applied),
                    ("sz_applied", sz_applied), ("qt_exceeds", 0)):
        put(root, f"{S}/stats/{name}", f"{v}\n")


