"""One daemon per control socket: an exclusive ``flock`` on ``<control.socket_path>.lock``
in the runtime directory, taken before anything else at start and held until exit.

The socket's existence cannot say whether a daemon runs (it can be deleted under a
running one, or left behind by a killed one); the lock goes away with the process
that holds it, SIGKILL included.  The file holds the pid of the daemon that took it,
so a second start names the running one.  It is left in place at exit: removing it
would let a start that opened it a moment before lock a file no longer at the path.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .errors import StartupError


class InstanceLock:
    def __init__(self, socket_path: str) -> None:
        self.path = Path(socket_path + ".lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise StartupError naming the daemon that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644)
        except OSError as exc:
            raise StartupError(f"cannot open the instance lock {self.path}: "
                               f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                who = f"pid {holder}" if holder.isdigit() else "another process"
                raise StartupError(f"another kmigratedd ({who}) is running with this control "
                                   f"socket (it holds {self.path}): stop it first, or give "
                                   "this one another control.socket_path") from None
            raise StartupError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
