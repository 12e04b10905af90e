"""Hardening cases of the files kmigratedd writes as root: the sysctl state file.

``CASES`` is a list of ``(name, before, run)``: ``name`` the input, ``before`` what
the landed code did with it, ``run()`` does it now in a fresh temp tree (a fake
``/proc/sys/kernel`` under a ``KernelFs`` root, a 0700 state directory; no real
sysctl is written) and returns a short account of what happened.  Self-contained:
no pytest, imported by file path (tests/test_hardening_files.py asserts the
outcomes; a runner prints the table).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import stat
import tempfile
import threading
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

from kmigratedd import config, samplers, shim, sysctl
from kmigratedd.errors import SysctlStateError
from kmigratedd.kernelfs import KernelFs
from kmigratedd.samplers.base import SamplerContext, SamplerFactory

NB = sysctl.NUMA_BALANCING.kpath
RL = sysctl.PROMOTE_RATE_LIMIT.kpath
WANTED = {NB: "2", RL: "0"}
DATA = Path(__file__).resolve().parent.parent / "data"
SECRET = "root:x:0:0:root:/root:/bin/bash\n"


class Tree:
    """A temp dir: ``root`` (the KernelFs root, with the two sysctls and /etc/passwd)
    and ``state_dir`` (0700) holding ``state``."""

    def __init__(self, base: Path, nb: str = "1", rl: str = "65536") -> None:
        self.base = base
        self.root = base / "root"
        (self.root / "proc/sys/kernel").mkdir(parents=True)
        (self.root / "proc/sys/vm").mkdir(parents=True)
        (self.root / "etc").mkdir()
        (self.root / "etc/passwd").write_text(SECRET)
        (self.root / "proc/sys/vm/drop_caches").write_text("0\n")
        self.set_sysctls(nb, rl)
        self.fs = KernelFs(self.root)
        self.state_dir = base / "state"
        self.state_dir.mkdir(mode=0o700)
        self.state = self.state_dir / "sysctl-state.json"

    def set_sysctls(self, nb: str, rl: str) -> None:
        (self.root / NB.lstrip("/")).write_text(nb + "\n")
        (self.root / RL.lstrip("/")).write_text(rl + "\n")

    def sysctls(self) -> str:
        nb = (self.root / NB.lstrip("/")).read_text().strip()
        rl = (self.root / RL.lstrip("/")).read_text().strip()
        return f"numa_balancing={nb} rate_limit={rl}"

    def guard(self) -> sysctl.SysctlGuard:
        return sysctl.SysctlGuard(self.fs, self.state, WANTED)

    def passwd_intact(self) -> bool:
        return (self.root / "etc/passwd").read_text() == SECRET

    def corrupt_kept(self) -> bool:
        return os.path.lexists(self.state_dir / (self.state.name + ".corrupt"))


@contextlib.contextmanager
def tree(nb: str = "1", rl: str = "65536") -> Iterator[Tree]:
    with tempfile.TemporaryDirectory(prefix="kmigratedd-hardening-") as d:
        yield Tree(Path(d), nb, rl)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The daemon's warnings are the point of some cases, not of the table."""
    logger = logging.getLogger("kmigratedd")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


def _state_file_summary(t: Tree) -> str:
    if os.path.islink(t.state):
        return "state file is a symlink"
    if not t.state.exists():
        return "no state file"
    mode = stat.S_IMODE(t.state.stat().st_mode)
    return f"state file regular {mode:04o}"


# --- cases ------------------------------------------------------------------


def symlink_at_tmp() -> str:
    with tree() as t, quiet():
        victim = t.base / "victim"
        victim.write_text(SECRET)
        # The landed code's tmp name and this one's.
        for name in ("sysctl-state.tmp", "sysctl-state.json.tmp"):
            os.symlink(victim, t.state_dir / name)
        g = t.guard()
        g.apply()
        summary = _state_file_summary(t)
        g.restore()
        target = "target unchanged" if victim.read_text() == SECRET else "TARGET OVERWRITTEN"
        return f"not followed: {target}; {summary}"


def symlink_at_final() -> str:
    with tree(nb="2", rl="0") as t, quiet():
        victim = t.base / "victim.json"
        victim.write_text(f'{{"{NB}": "1", "{RL}": "65536"}}')
        os.symlink(victim, t.state)
        rec = sysctl.recover(t.fs, t.state)
        read = ("not read (set aside as .corrupt)" if rec.corrupt and not rec.restored
                else f"READ THROUGH THE LINK: restored {rec.restored}")
    with tree(nb="1", rl="65536") as t, quiet():
        victim = t.base / "victim"
        victim.write_text(SECRET)
        os.symlink(victim, t.state)
        g = t.guard()
        g.apply()
        summary = _state_file_summary(t)
        g.restore()
        target = "target unchanged" if victim.read_text() == SECRET else "TARGET OVERWRITTEN"
        return f"{read}; a write replaces the link ({summary}), {target}"


def _recover_text(text: str, nb: str = "2", rl: str = "0") -> str:
    with tree(nb, rl) as t, quiet():
        t.state.write_text(text)
        rec = sysctl.recover(t.fs, t.state)
        writes = [k for k, _ in t.fs.writes]
        passwd = "" if t.passwd_intact() else "; /etc/passwd OVERWRITTEN"
        if rec.restored or writes:
            return f"WRITTEN: {', '.join(writes)}{passwd}"
        kept = "kept as .corrupt" if t.corrupt_kept() else "NOT SET ASIDE"
        return f"ignored, nothing written ({kept}){passwd}"


def names_etc_passwd() -> str:
    return _recover_text('{"/etc/passwd": "root::0:0:root:/root:/bin/bash"}')


def unknown_key_beside_known() -> str:
    return _recover_text(f'{{"{NB}": "1", "/proc/sys/vm/drop_caches": "3"}}')


def value_out_of_range() -> str:
    return _recover_text(f'{{"{NB}": "99", "{RL}": "65536"}}')


def value_not_decimal() -> str:
    return _recover_text(f'{{"{NB}": "1\\n2", "{RL}": "-1"}}')


def fifo_at_final() -> str:
    with tree(nb="2", rl="0") as t, quiet():
        os.mkfifo(t.state, 0o600)
        out: list[str] = []

        def go() -> None:
            rec = sysctl.recover(t.fs, t.state)
            out.append("not read (set aside as .corrupt)" if rec.corrupt and not t.fs.writes
                       else "READ")

        th = threading.Thread(target=go, daemon=True)
        th.start()
        th.join(5)
        if th.is_alive():
            # Unblock the open with a writer so the thread can end.
            fd = os.open(t.state, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
            th.join(5)
            return "BLOCKED opening it"
        return out[0]


def valid_state_file_non_hint_faults_sampler() -> str:
    """A killed hint-faults run left 2/0 and its state file; the next start runs
    another sampler (the ``damon`` slot, faked here: the real one needs DAMON)."""
    with tree(nb="2", rl="0") as t, quiet():
        t.state.write_text(f'{{"{NB}": "1", "{RL}": "65536"}}')
        shutil.copytree(DATA / "cxl2" / "sys", t.root / "sys", symlinks=True)
        (t.root / "sys/devices/system/cpu").mkdir(parents=True)
        (t.root / "sys/devices/system/cpu/online").write_text("0-3\n")
        seen: list[str] = []
        cfg = config.Config()
        cfg = dataclasses.replace(
            cfg,
            sampler=dataclasses.replace(cfg.sampler, name="damon", hint_faults=dataclasses.replace(
                cfg.sampler.hint_faults, state_file=str(t.state))),
            metrics=dataclasses.replace(cfg.metrics, enabled=False),
            control=dataclasses.replace(cfg.control, socket_path=str(t.base / "control.sock")))
        with fake_sampler("damon", lambda: seen.append(t.sysctls())):
            asyncio.run(_daemon_up_and_down(cfg, t.fs))
        if not seen:
            return "SAMPLER NOT STARTED"
        state = "state file removed" if not t.state.exists() else "STATE FILE LEFT"
        return f"restored at daemon start, before the damon sampler: it saw {seen[0]}; {state}"


def truncated_state_file_sysctls_changed() -> str:
    """A killed run left 2/0 and, through no fault of its writer, a truncated file."""
    with tree(nb="2", rl="0") as t, quiet():
        t.state.write_text(f'{{"{NB}": "1", "{RL}": "65')
        sysctl.recover(t.fs, t.state)
        g = t.guard()
        g.apply()
        recorded = _state_file_summary(t)
        g.restore()
        return (f"2/0 not taken as originals ({recorded} while running); clean exit leaves "
                f"{t.sysctls()} with a warning; truncated file kept as .corrupt"
                if t.corrupt_kept() else "TRUNCATED FILE LOST")


def truncated_state_file_sysctls_reset() -> str:
    """As above, but the admin has set the sysctls back by hand (1/65536)."""
    with tree(nb="1", rl="65536") as t, quiet():
        t.state.write_text(f'{{"{NB}": "1", "{RL}": "65')
        sysctl.recover(t.fs, t.state)
        g = t.guard()
        g.apply()
        running = t.sysctls()
        g.restore()
        return f"running {running}; clean exit restores {t.sysctls()}"


def _refused(make: Callable[[Tree], None]) -> str:
    with tree() as t, quiet():
        make(t)
        errors = []
        for step in (lambda: sysctl.recover(t.fs, t.state), lambda: t.guard().apply()):
            try:
                step()
            except SysctlStateError as exc:
                errors.append(str(exc).replace(str(t.state_dir), "<dir>"))
        state = "no state file" if not t.state.exists() else "STATE FILE WRITTEN"
        if len(errors) != 2:
            return f"NOT REFUSED ({len(errors)} of 2 steps); {t.sysctls()}; {state}"
        return f"refused: {errors[0]}; {t.sysctls()}, {state}"


def group_writable_state_dir() -> str:
    return _refused(lambda t: t.state_dir.chmod(0o770))


def state_dir_owned_by_another_user() -> str:
    if os.geteuid() != 0:
        return "skipped (needs root to chown)"
    return _refused(lambda t: os.chown(t.state_dir, 4242, 4242))


def missing_state_dir() -> str:
    with tree() as t, quiet():
        t.state_dir.rmdir()
        g = t.guard()
        g.apply()
        mode = stat.S_IMODE(t.state_dir.stat().st_mode)
        summary = _state_file_summary(t)
        g.restore()
        return f"created {mode:04o}; {summary}"


# --- a daemon on a fake tree with a recording sampler -------------------------


class _RecordingSampler:
    name = "damon"

    def __init__(self, on_start: Callable[[], None]) -> None:
        self.on_start = on_start

    async def start(self) -> None:
        self.on_start()

    async def stop(self) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {}


class _NoMover:
    def query(self, pid: int, addrs: array[int]) -> array[int]:
        return array("i", [-3] * len(addrs))

    def move(self, pid: int, addrs: array[int], node: int, flags: int,
             threads: int) -> shim.MoveResult:
        raise AssertionError("nothing to move in this case")


@contextlib.contextmanager
def fake_sampler(name: str, on_start: Callable[[], None]) -> Iterator[None]:
    old = samplers.FACTORIES.get(name)

    def create(ctx: SamplerContext) -> _RecordingSampler:
        return _RecordingSampler(on_start)

    samplers.FACTORIES[name] = SamplerFactory(name, lambda ctx: None, create, "recording")
    try:
        yield
    finally:
        if old is None:
            del samplers.FACTORIES[name]
        else:
            samplers.FACTORIES[name] = old


async def _daemon_up_and_down(cfg: config.Config, fs: KernelFs) -> None:
    from kmigratedd.daemon import Daemon
    from kmigratedd.sdnotify import Notifier

    d = Daemon(config=cfg, config_path=None, fs=fs, mover=_NoMover(), notifier=Notifier({}))
    try:
        await d.startup()
    finally:
        await d.shutdown()


CASES: list[tuple[str, str, Callable[[], str]]] = [
    ("symlink at the state file's .tmp path",
     "the .tmp write followed it: the link's target was overwritten", symlink_at_tmp),
    ("symlink at the final state file path",
     "recover() read the file it points to and wrote what that names", symlink_at_final),
    ("a FIFO at the state file path",
     "recover() opened it and blocked until a writer came", fifo_at_final),
    ("state file names /etc/passwd",
     "recover() wrote the value into /etc/passwd", names_etc_passwd),
    ("state file names a known sysctl and /proc/sys/vm/drop_caches",
     "recover() wrote both, drop_caches included", unknown_key_beside_known),
    ("state file value out of range (numa_balancing 99)",
     "recover() wrote it as it was", value_out_of_range),
    ("state file values not decimal integers ('1\\n2', '-1')",
     "recover() wrote them as they were", value_not_decimal),
    ("truncated state file, sysctls still 2/0 from a killed run",
     "2/0 became the saved originals, so a clean exit left numa_balancing=2",
     truncated_state_file_sysctls_changed),
    ("truncated state file, sysctls already set back to 1/65536",
     "1/65536 saved as originals, restored at exit", truncated_state_file_sysctls_reset),
    ("valid state file from a killed run, next start with the damon sampler",
     "crash recovery ran only when the hint-faults sampler started: 2/0 stayed",
     valid_state_file_non_hint_faults_sampler),
    ("state directory group-writable (0770)",
     "used as it was: state file written there", group_writable_state_dir),
    ("state directory owned by another user",
     "used as it was: state file written there", state_dir_owned_by_another_user),
    ("state directory missing",
     "created 0755 (the umask's mode), state file 0644", missing_state_dir),
]
