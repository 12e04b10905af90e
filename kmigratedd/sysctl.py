"""Sysctls kmigratedd changes, saved before and restored after — even after a crash.

:class:`SysctlGuard` writes the values it finds to a state file *before* changing
anything and restores them on every exit path; :func:`recover`, called by the
daemon at every start whatever the sampler, restores what a killed daemon left
behind.

What may be written: only the sysctls of :data:`KNOWN`, a fixed table.  A state
file key is only looked up in that table — the kernel path written is the
table's, never text from the file — and a value must be a decimal integer in the
sysctl's valid range.  Anything else (not JSON, not an object, an unknown key
such as ``/etc/passwd``, a bad value, a symlink, a file over 4 KiB) makes the
whole file *corrupt*: it is renamed to ``<state file>.corrupt``, one warning says
why, and none of it is restored or used.

Where: the state file lives in a directory only root can write.  The directory
(created 0700 if missing) must be owned by root or by our euid and must not be
writable by group or others, else :class:`~kmigratedd.errors.SysctlStateError`
names it.  The file is written as ``<name>.tmp`` (any old one unlinked first,
then ``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600), fsync'd and renamed over the
state file, then the directory is fsync'd; every step works on the opened
directory's fd, and a symlink at the tmp or the final name is never followed
(``rename`` replaces the link itself; reads use ``O_NOFOLLOW``).

Which values are originals (the rule):

1. A valid state file is the truth until its values are restored: the first
   saved originals are kept.  :func:`recover` writes them back and removes the
   file; if a write fails the file stays, and :meth:`SysctlGuard.apply` then
   takes its originals from that file instead of from the kernel.
2. With no state file, the values the kernel shows are the originals.
3. After a corrupt state file — this start, or an earlier one whose
   ``.corrupt`` file is still there — the originals may have been lost with it,
   and a killed run leaves exactly the values the daemon sets.  So a sysctl that
   already holds the value the daemon would set is *not* taken as an original:
   its original is unknown, nothing is recorded for it, and at exit it is left
   as found, with a warning that names it.  (Recording it would turn the killed
   run's value into a "saved original" that every later start trusts.)  The
   daemon does not guess kernel defaults.  Removing the ``.corrupt`` file after
   setting the sysctls by hand (the journal of the run that changed them says
   ``setting ... (was N)``) ends this.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from . import jsonstrict
from .errors import SysctlStateError
from .kernelfs import KernelFs

log = logging.getLogger("kmigratedd.sysctl")

#: A state file larger than this is corrupt (two entries take ~120 bytes).
STATE_MAX_BYTES = 4096

_DECIMAL = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True)
class Sysctl:
    """A sysctl kmigratedd may change, and the values the kernel accepts for it."""

    name: str  # as sysctl(8) spells it (a sysfs knob: its path below /sys)
    kpath: str  # the kernel path written, and the state file's key
    min_value: int
    max_value: int
    # A sysfs boolean shows "true"/"false" and takes "1"/"0" (kstrtobool): kept as 1/0.
    boolean: bool = False

    def check(self, value: object) -> str:
        """``value`` as canonical decimal text; ValueError if it is not a decimal
        integer in the valid range."""
        if self.boolean and value in ("true", "false"):
            value = "1" if value == "true" else "0"
        if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
            raise ValueError(f"{self.name}: {_short(value)} is not a decimal integer")
        number = int(value)
        if not self.min_value <= number <= self.max_value:
            raise ValueError(f"{self.name}: {number} is outside "
                             f"{self.min_value}..{self.max_value}")
        return str(number)


# kernel/sched/core.c: extra1 = SYSCTL_ZERO, extra2 = SYSCTL_FOUR (bit 0 NUMA_BALANCING_NORMAL,
# bit 1 NUMA_BALANCING_MEMORY_TIERING).
NUMA_BALANCING = Sysctl("kernel.numa_balancing", "/proc/sys/kernel/numa_balancing", 0, 4)
# kernel/sched/fair.c: proc_dointvec_minmax, extra1 = SYSCTL_ZERO, no extra2 (INT_MAX).
PROMOTE_RATE_LIMIT = Sysctl("kernel.numa_balancing_promote_rate_limit_MBps",
                            "/proc/sys/kernel/numa_balancing_promote_rate_limit_MBps",
                            0, 2**31 - 1)

# mm/memory-tiers.c: numa_demotion_enabled, a bool shown as "true"/"false".  With it
# reclaim (kswapd, direct reclaim) migrates a top-tier node's pages to a slower node
# instead of evicting them.
DEMOTION_ENABLED = Sysctl("kernel/mm/numa/demotion_enabled",
                          "/sys/kernel/mm/numa/demotion_enabled", 0, 1, boolean=True)

#: Every sysctl kmigratedd may write, by the key a state file names it with.
KNOWN: Mapping[str, Sysctl] = MappingProxyType(
    {s.kpath: s for s in (NUMA_BALANCING, PROMOTE_RATE_LIMIT, DEMOTION_ENABLED)})


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_state(data: bytes) -> dict[str, str]:
    """The originals a state file holds (kernel path → value, every key in
    :data:`KNOWN`); ValueError says what makes it corrupt."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("not ASCII text") from None
    try:
        obj = jsonstrict.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}, offset {exc.pos}") from None
    except RecursionError:
        raise ValueError("not JSON (nested too deep)") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    out: dict[str, str] = {}
    for key, value in obj.items():
        sysctl = KNOWN.get(key)
        if sysctl is None:
            raise ValueError(f"unknown key {_short(key)}")
        out[sysctl.kpath] = sysctl.check(value)
    return out


@dataclass
class StateRead:
    """What :meth:`StateFile.load` found."""

    originals: dict[str, str] | None = None  # kernel path -> value; None: no valid file
    problem: str = ""  # why the file is corrupt; "" if valid or absent


class StateFile:
    """The state file, read and written only through its directory's fd; never
    follows a symlink at its own name or at its ``.tmp``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.dir = self.path.parent
        self.name = self.path.name
        self.tmp_name = self.name + ".tmp"
        self.corrupt_name = self.name + ".corrupt"

    @property
    def corrupt_path(self) -> Path:
        return self.dir / self.corrupt_name

    def _open_dir(self, create: bool) -> int | None:
        """The checked directory's fd, or None if it is missing and not ``create``."""
        try:
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                return None
            os.makedirs(self.dir.parent, mode=0o755, exist_ok=True)
            try:
                os.mkdir(self.dir, 0o700)
            except FileExistsError:
                pass
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            st = os.fstat(dfd)
            if st.st_uid not in (0, os.geteuid()):
                raise SysctlStateError(
                    f"sysctl state directory {self.dir} is owned by uid {st.st_uid}, not root: "
                    "make it root's, mode 0700")
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise SysctlStateError(
                    f"sysctl state directory {self.dir} is writable by group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}): make it 0700")
        except BaseException:
            os.close(dfd)
            raise
        return dfd

    def load(self) -> StateRead:
        dfd = self._open_dir(create=False)
        if dfd is None:
            return StateRead()
        try:
            return self._load(dfd)
        finally:
            os.close(dfd)

    def _load(self, dfd: int) -> StateRead:
        try:
            # O_NONBLOCK: a FIFO planted at the name must not block the open.
            fd = os.open(self.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dfd)
        except FileNotFoundError:
            return StateRead()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return StateRead(problem="it is a symlink")
            return StateRead(problem=f"cannot open it: {exc.strerror}")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return StateRead(problem="not a regular file")
            if st.st_uid not in (0, os.geteuid()):
                return StateRead(problem=f"owned by uid {st.st_uid}")
            data = os.read(fd, STATE_MAX_BYTES + 1)
        except OSError as exc:
            return StateRead(problem=f"cannot read it: {exc.strerror}")
        finally:
            os.close(fd)
        if len(data) > STATE_MAX_BYTES:
            return StateRead(problem=f"larger than {STATE_MAX_BYTES} bytes")
        try:
            return StateRead(originals=parse_state(data))
        except ValueError as exc:
            return StateRead(problem=str(exc))

    def save(self, originals: Mapping[str, str]) -> None:
        """Write ``originals`` atomically and durably (tmp, fsync, rename, fsync dir)."""
        data = json.dumps(dict(originals)).encode("ascii")
        dfd = self._open_dir(create=True)
        assert dfd is not None
        try:
            try:
                os.unlink(self.tmp_name, dir_fd=dfd)  # a link is removed, not followed
            except FileNotFoundError:
                pass
            fd = os.open(self.tmp_name,
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dfd)
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.tmp_name, self.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def remove(self) -> None:
        dfd = self._open_dir(create=False)
        if dfd is None:
            return
        try:
            os.unlink(self.name, dir_fd=dfd)
            os.fsync(dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)

    def set_aside(self) -> None:
        """Rename the (corrupt) state file to ``.corrupt``, replacing an older one."""
        dfd = self._open_dir(create=False)
        if dfd is None:
            return
        try:
            os.replace(self.name, self.corrupt_name, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        except OSError as exc:
            log.error("could not rename the corrupt sysctl state file %s to %s: %s",
                      self.path, self.corrupt_name, exc.strerror)
        finally:
            os.close(dfd)

    def has_corrupt(self) -> bool:
        dfd = self._open_dir(create=False)
        if dfd is None:
            return False
        try:
            os.stat(self.corrupt_name, dir_fd=dfd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(dfd)


def _corrupt(state: StateFile, problem: str) -> None:
    state.set_aside()
    log.warning("ignoring corrupt sysctl state file %s (%s): kept as %s, nothing restored "
                "from it", state.path, problem, state.corrupt_path)


@dataclass
class Recovery:
    """What :func:`recover` did."""

    restored: dict[str, str] = field(default_factory=dict)  # sysctl name -> value written
    corrupt: int = 0  # corrupt state files set aside (0 or 1)
    failed: bool = False  # a write failed: the state file stays for the next start


def recover(fs: KernelFs, state_path: str | Path) -> Recovery:
    """Restore the values a daemon that did not exit cleanly left in the state file,
    then remove the file.  Raises :class:`SysctlStateError` for an unsafe directory."""
    state = StateFile(state_path)
    out = Recovery()
    try:
        found = state.load()
    except PermissionError as exc:  # not root: it could not restore a sysctl anyway
        log.warning("not restoring sysctls: cannot read %s: %s", state.dir, exc.strerror)
        return out
    if found.problem:
        _corrupt(state, found.problem)
        out.corrupt = 1
        return out
    if found.originals is None:
        return out
    for kpath, value in found.originals.items():
        sysctl = KNOWN[kpath]
        try:
            was = fs.read(sysctl.kpath).strip()
            fs.write(sysctl.kpath, value)
        except OSError as exc:
            log.error("could not restore %s=%s left changed by a previous run: %s; "
                      "keeping %s for the next start", sysctl.name, value, exc, state.path)
            out.failed = True
            return out
        log.warning("restored %s=%s (was %s), left changed by a previous run",
                    sysctl.name, value, was)
        out.restored[sysctl.name] = value
    state.remove()
    return out


class SysctlGuard:
    """Sets ``wanted`` (kernel path → value, keys of :data:`KNOWN`) and puts the
    originals back, following the module's rule."""

    def __init__(self, fs: KernelFs, state_path: str | Path, wanted: Mapping[str, str]) -> None:
        self.fs = fs
        self.state = StateFile(state_path)
        self.state_path = self.state.path
        self.wanted = {KNOWN[k].kpath: KNOWN[k].check(v) for k, v in wanted.items()}
        self.saved: dict[str, str] | None = None  # kernel path -> original
        self.unknown: list[str] = []  # kernel paths whose original is unknown

    def apply(self) -> None:
        """Save the originals, then set the wanted values."""
        found = self.state.load()
        if found.problem:
            _corrupt(self.state, found.problem)
        originals = dict(found.originals or {})
        if originals:
            log.warning("keeping the sysctl originals saved in %s by a previous run: %s",
                        self.state_path, ", ".join(f"{KNOWN[k].name}={v}"
                                                   for k, v in originals.items()))
        suspect = bool(found.problem) or self.state.has_corrupt()
        current: dict[str, str] = {}
        unknown: list[str] = []
        for kpath, value in self.wanted.items():
            sysctl = KNOWN[kpath]
            try:
                current[kpath] = sysctl.check(self.fs.read(kpath).strip())
            except ValueError as exc:
                raise SysctlStateError(f"{kpath}: unexpected value: {exc}") from None
            if kpath in originals:
                continue
            if suspect and current[kpath] == value:
                unknown.append(kpath)
            else:
                originals[kpath] = current[kpath]
        if unknown:
            log.warning("original value of %s unknown after a corrupt sysctl state file (%s): "
                        "it already holds what kmigratedd sets, so it is not saved as an "
                        "original and is left so at exit",
                        ", ".join(f"{KNOWN[k].name} (now {current[k]})" for k in unknown),
                        self.state.corrupt_path)
        if originals != (found.originals or {}):
            self.state.save(originals)
        self.saved = originals
        self.unknown = unknown
        try:
            for kpath, value in self.wanted.items():
                if current[kpath] != value:
                    log.info("setting %s=%s (was %s)", KNOWN[kpath].name, value, current[kpath])
                    self.fs.write(kpath, value)
        except BaseException:
            self.restore()
            raise

    def restore(self) -> None:
        """Put the saved values back and forget the state file (idempotent)."""
        if self.saved is None:
            return
        for kpath, value in self.saved.items():
            try:
                self.fs.write(kpath, value)
            except OSError as exc:
                log.error("could not restore %s=%s: %s", KNOWN[kpath].name, value, exc)
                return  # keep the state file: the next start retries
        for kpath in self.unknown:
            log.warning("left %s=%s: its original was lost with a corrupt sysctl state file "
                        "(%s); set it by hand, then remove that file", KNOWN[kpath].name,
                        self.wanted[kpath], self.state.corrupt_path)
        self.saved = None
        self.unknown = []
        self.state.remove()
