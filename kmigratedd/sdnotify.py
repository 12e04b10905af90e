"""sd_notify(3) without libsystemd: READY, STATUS, WATCHDOG and STOPPING datagrams
to $NOTIFY_SOCKET (an abstract socket when it starts with '@'). A no-op when the
daemon does not run under systemd with Type=notify."""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = ("\0" + path[1:]) if path.startswith("@") else (path or None)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog_for_us = not pid or pid == str(os.getpid())
        self.watchdog_s: float | None = (int(usec) / 1e6 if usec.isdigit() and watchdog_for_us
                                         else None)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        if self.address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=stopping")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1", "STATUS=reloading")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
