"""The one exception hierarchy of kmigratedd.

Every error kmigratedd raises derives from :class:`KmigratedError` *and* from the
builtin it resembles, so callers may catch either.  CLIs print ``str(error)`` on
one line and show a traceback only with ``--debug``.
"""

from __future__ import annotations


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
