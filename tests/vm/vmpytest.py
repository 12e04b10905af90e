"""Run guest-side pytest modules inside the kmigratedd VM (host side helper).

    from vmpytest import run_pytest_in_vm, assert_vm_ok
    res = run_pytest_in_vm("test_move_pages_raw.py", topology="2node", kernel="debian-6.12")
    assert_vm_ok(res)

The guest runs `<sys.executable> -P -m pytest -p no:cacheprovider -p no:hypothesispytest <abs path>
-q -rfEs` with cwd = the repo root (shared read-write), so sys.executable (the test venv's python,
outside the source tree, which the guest sees through the read-only host root) and the installed
kmigratedd are the same inside and outside.  -P keeps the repo root off sys.path, so the guest
imports the installed package, never ./kmigratedd (tests/conftest.py checks it).

Loading hypothesis' pytest plugin costs 25-40 s per guest under TCG (measured: pytest --co of one
guest module 32-47 s with it, 8.5 s without), so it is blocked by default; @given still works
without the plugin.  Pass disable_plugins=() to keep it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import vmrun

HERE = Path(__file__).resolve().parent
GUEST_DIR = HERE / "guest"
REPO = HERE.parent.parent
DEFAULT_DISABLED_PLUGINS = ("hypothesispytest", "xdist")


@dataclasses.dataclass
class RunRecord:
    targets: str
    topology: str
    kernel: str
    kernel_release: str
    accel: str
    returncode: int
    boot_seconds: float | None
    wall_seconds: float
    summary: str


RUNS: list[RunRecord] = []


def _resolve(target: str, rootdir: Path) -> str:
    path, sep, rest = target.partition("::")
    p = Path(path)
    if not p.is_absolute():
        for base in (rootdir, GUEST_DIR, Path.cwd()):
            if (base / p).exists():
                p = base / p
                break
        else:
            raise FileNotFoundError(f"guest test {path!r} not found under {rootdir} or {GUEST_DIR}")
    return str(p.resolve()) + sep + rest


def _summary(output: str) -> str:
    """pytest's final 'N passed, M skipped in Xs' line."""
    for line in reversed(output.splitlines()):
        s = line.strip("= \t")
        if re.search(r"\b(passed|failed|error|errors|skipped|no tests ran)\b", s) and " in " in s:
            return s
    return "(no pytest summary)"


def run_pytest_in_vm(
    target: str | Sequence[str],
    *,
    topology: str = "2node",
    kernel: str = "debian-6.12",
    timeout: float = 600.0,
    pytest_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    mem: Sequence[str] | None = None,
    rootdir: Path | str | None = None,
    stream: IO[str] | None = None,
    accel: str = "auto",
    disable_plugins: Sequence[str] = DEFAULT_DISABLED_PLUGINS,
) -> vmrun.VMResult:
    """Boot one guest and run pytest on target (a guest module / node id, or several) inside it."""
    if os.environ.get("KMIGRATEDD_IN_VM") == "1":
        raise RuntimeError("run_pytest_in_vm called inside the VM")
    root = Path(rootdir) if rootdir else REPO
    targets = [target] if isinstance(target, str) else list(target)
    paths = [_resolve(t, root) for t in targets]
    cmd = [sys.executable, "-P", "-m", "pytest", "-p", "no:cacheprovider"]
    for plugin in disable_plugins:
        cmd += ["-p", f"no:{plugin}"]
    cmd += [
        *paths,
        "-q",
        "-rfEsx",
        *pytest_args,
    ]
    res = vmrun.run_in_vm(
        cmd,
        topology=topology,
        kernel=kernel,
        timeout=timeout,
        env=env,
        mem=mem,
        cwd=str(root),
        stream=stream,
        accel=accel,
    )
    summary = _summary(res.output)
    RUNS.append(
        RunRecord(
            " ".join(Path(t.split("::")[0]).name for t in paths),
            topology,
            res.kernel,
            res.kernel_release,
            res.accel,
            res.returncode,
            res.boot_seconds,
            res.wall_seconds,
            summary,
        )
    )
    return res


def assert_vm_ok(res: vmrun.VMResult) -> None:
    """Fail the calling (host) test with the guest's output unless the guest command passed."""
    if res.returncode == 0:
        return
    import pytest

    why = (
        "timed out"
        if res.timed_out
        else "guest died without reporting a status"
        if not res.status_reported
        else f"exit status {res.returncode}"
    )
    tail = res.output if len(res.output) < 30000 else "...\n" + res.output[-30000:]
    if not res.status_reported:
        tail += "\n--- end of guest console ---\n" + res.console[-8000:]
    pytest.fail(
        f"guest run {why} (kernel {res.kernel}, topology {res.topology}, accel {res.accel}); "
        f"console log: {res.log_path}\n--- guest output ---\n{tail}",
        pytrace=False,
    )


def counts(output: str) -> dict[str, int]:
    """The outcome counts of pytest's final summary line ("2 passed, 1 skipped in 3.1s")."""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|"
                                                   r"xfailed|xpassed|deselected)",
                                                   _summary(output))}


def assert_counts(res: vmrun.VMResult, *, passed: int, skipped: int = 0) -> None:
    """Fail unless the guest run passed exactly ``passed`` tests and skipped ``skipped``."""
    got = counts(res.output)
    if got.get("passed", 0) == passed and got.get("skipped", 0) == skipped:
        return
    import pytest

    pytest.fail(f"guest run: expected {passed} passed, {skipped} skipped; got "
                f"{_summary(res.output)!r}\n--- guest output ---\n{res.output[-5000:]}",
                pytrace=False)


def summary_lines(runs: Sequence[RunRecord] | None = None) -> list[str]:
    head = f"{'guest module(s)':34} {'topology':8} {'kernel':12} {'accel':5}"
    lines = [f"{head} {'boot s':>6} {'wall s':>6}  result"]
    for r in RUNS if runs is None else runs:
        boot = f"{r.boot_seconds:.2f}" if r.boot_seconds is not None else "-"
        lines.append(
            f"{r.targets[:34]:34} {r.topology:8} {r.kernel:12} {r.accel:5} {boot:>6} "
            f"{r.wall_seconds:6.1f}  rc={r.returncode} {r.summary}"
        )
    return lines
