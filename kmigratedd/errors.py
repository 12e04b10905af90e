"""The one exception hierarchy of kmigratedd.

Every error kmigratedd raises derives from :class:`KmigratedError` *and* from the
builtin it resembles, so callers may catch either.  CLIs print ``str(error)`` on
one line and show a traceback only with ``--debug``.
"""

from __future__ import annotations

import errno
import reprlib
import resource


class KmigratedError(Exception):
    """Base of every kmigratedd error."""


class ConfigError(KmigratedError, ValueError):
    """A configuration file or value is invalid.

    ``str()`` is the one-line ``FILE: key.path: problem`` report.
    """

    def __init__(self, source: str, path: str, problem: str) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {problem}")


class _Brief(reprlib.Repr):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = self.maxlong = limit

    def repr_int(self, x: int, level: int) -> str:
        # repr() of an int over 4300 digits raises ValueError (sys.int_info); say its size.
        if x.bit_length() > 256:
            return f"<{'-' if x < 0 else ''}{int(x.bit_length() * 0.30103) + 1}-digit integer>"
        return repr(x)


def brief(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message: one line of at most ``limit`` characters,
    in bounded time however long, wide or deep ``value`` is."""
    text = _Brief(limit).repr(value)
    text = " ".join(text.split())  # repr escapes newlines in str; other types may not
    return text if len(text) <= limit else text[:limit - 3] + "..."


class StartupError(KmigratedError, RuntimeError):
    """The daemon cannot start for a reason only the operator can fix (another daemon
    running, a port in use, missing privileges, a resource limit): one line, exit 2, so
    that systemd does not restart it in a loop (RestartPreventExitStatus=2)."""


class TopologyError(KmigratedError, RuntimeError):
    """The NUMA topology cannot be read or does not allow promotion as configured."""


class ShimArgumentError(KmigratedError, ValueError):
    """Arguments handed to the native shim are malformed (checked before the syscall)."""


class MovePagesError(KmigratedError, OSError):
    """move_pages(2) failed as a whole call; ``errno`` says why (ESRCH, EPERM, ENODEV...)."""


class NativeUnavailableError(KmigratedError, ImportError):
    """The compiled extension is missing (the package was not installed with pip)."""


class SamplerUnavailableError(KmigratedError, RuntimeError):
    """A sampler cannot run here; the message says what is missing (PMU event,
    kernel option, capability) and what to do."""


class SysctlStateError(KmigratedError, OSError):
    """The sysctl state cannot be kept safely: the state directory is writable by
    others or not root's, or a sysctl shows a value outside its valid range."""


def startup_error(exc: OSError) -> Exception:
    """What to raise for an OSError at start: a StartupError (one line, exit 2) where only
    the operator can help (limits, privileges), else the error itself."""
    where = f" ({exc.filename})" if exc.filename else ""
    if isinstance(exc, KmigratedError):
        return exc
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return StartupError(f"too many open files{where}: the open-file limit is {soft}; "
                            "raise it (LimitNOFILE= in the unit, ulimit -n)")
    if exc.errno == errno.ENOMEM:
        return StartupError(f"out of memory{where}: raise the memory limit (MemoryMax=, "
                            "ulimit -v) or lower queues.capacity_per_cpu")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StartupError(f"permission denied{where}: kmigratedd needs root, or the "
                            "capabilities deploy/kmigratedd.service grants")
    return exc
