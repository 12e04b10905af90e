"""The control socket: JSON-RPC 2.0 over a unix stream socket, one request per line.

Scriptable with ``nc -U``::

    echo '{"jsonrpc": "2.0", "id": 1, "method": "status"}' | nc -U /run/kmigratedd/control.sock

Methods: ``status``, ``pause``, ``resume``, ``reload``, ``config``. The socket is
created mode 0600 (root only), or 0660 owned by ``control.group`` when one is
set. The peer's credentials are checked again on every connection, as the kernel
checks the file mode: root, the daemon's own uid, or a process whose primary *or
supplementary* group is ``control.group`` (SO_PEERCRED and SO_PEERGROUPS, socket(7)).
A refused peer gets a JSON-RPC error (-32001) that says what is required; a method that
refuses for an expected reason (a reload of a bad config) gets -32002 with the reason.
A request with a duplicate key is invalid, and a notification (no ``id``) gets no reply.

The socket path is ours only if it holds nothing or a stale socket: a live socket
means another daemon (refused), and a regular file, directory, fifo or symlink is
never replaced (a config error). At shutdown the socket is removed only if the path
still holds the one this daemon created (same device and inode).

Every request is bounded: at most :data:`MAX_LINE` bytes, nested at most
:data:`MAX_DEPTH` levels (checked by a linear scan before ``json.loads``, which
recurses), and complete within :data:`REQUEST_TIMEOUT_S` of its first byte; an
idle client is let go after :data:`IDLE_TIMEOUT_S`. A malformed request gets a
JSON-RPC error; an over-long or too slow one gets an error and is disconnected;
neither disturbs other clients.
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import re
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import jsonstrict
from .config import MAX_SOCKET_PATH_BYTES
from .errors import ConfigError, KmigratedError
from .kernelfs import KernelFs
from .procfs import peer_ids

log = logging.getLogger("kmigratedd.control")

MAX_LINE = 64 * 1024
MAX_DEPTH = 32
IDLE_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 5.0
# socket(7): SO_PEERGROUPS (Linux 4.13) returns the peer's supplementary groups as they
# were at connect(2); Python's socket module does not name it.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
NOT_ALLOWED = -32001
REFUSED = -32002  # the method ran and refused, say a reload of a bad config


class RequestRefused(KmigratedError):
    """Raised by a method that refuses for an expected reason: the client gets
    :data:`REFUSED` with the message, and the daemon logs it once (the method did)."""


Handler = Callable[[], Awaitable[Any]]

_JSON_SPECIAL = re.compile(rb'[\[\]{}"\\]')


def _error(id_: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}}


def json_depth_exceeds(data: bytes, limit: int) -> bool:
    """Whether ``data`` nests arrays and objects deeper than ``limit``, brackets inside
    strings not counted. Linear in ``len(data)`` and without recursion, so it can run
    before ``json.loads`` (which recurses once per level)."""
    depth = 0
    in_string = False
    skip = -1
    for m in _JSON_SPECIAL.finditer(data):
        i = m.start()
        if i == skip:
            continue
        c = data[i]
        if in_string:
            if c == 0x5C:  # backslash: the next byte is escaped
                skip = i + 1
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif c in (0x5D, 0x7D):
            depth -= 1
    return False


def socket_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a unix socket's path, or None."""
    n = len(os.fsencode(path))
    if n > MAX_SOCKET_PATH_BYTES:
        return (f"{path}: {n} bytes long; a unix socket path holds at most "
                f"{MAX_SOCKET_PATH_BYTES} bytes (sun_path with its NUL, unix(7)): "
                "choose a shorter path")
    return None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a fifo"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a socket"


class ControlServer:
    def __init__(self, path: str, methods: dict[str, Handler], group: str = "", *,
                 source: str = "config", fs: KernelFs | None = None) -> None:
        """``source`` names the config in errors; ``fs`` reads /proc/PID/status when the
        kernel has no SO_PEERGROUPS."""
        self.path = Path(path)
        self.methods = methods
        self.group = group
        self.source = source
        self.fs = fs or KernelFs()
        self.gid: int | None = None
        self.server: asyncio.base_events.Server | None = None
        self.clients: set[asyncio.Task[None]] = set()
        self.refused = 0
        self._ours: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we bound

    def _config_error(self, problem: str) -> ConfigError:
        return ConfigError(self.source, "control.socket_path", problem)

    def _clear_stale(self) -> None:
        """Remove a stale socket at the path; refuse anything else that is there."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise self._config_error(
                f"{self.path} is {_kind(st.st_mode)}, not a socket; kmigratedd replaces only "
                "a stale socket of its own: remove it or choose another path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # nobody listens: stale
        else:
            raise OSError(f"another kmigratedd is listening on {self.path}")
        finally:
            probe.close()
        try:
            again = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (again.st_dev, again.st_ino) == (st.st_dev, st.st_ino):
            os.unlink(self.path)
            log.info("removed the stale control socket %s", self.path)
        else:
            raise OSError(f"{self.path} changed while kmigratedd checked it; not replacing it")

    async def start(self) -> None:
        problem = socket_path_problem(str(self.path))
        if problem:
            raise self._config_error(problem)
        if self.group:
            try:
                self.gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise OSError(f"control.group: no group named {self.group!r}") from None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clear_stale()
        old = os.umask(0o177)  # the socket is never world-accessible, not even briefly
        try:
            self.server = await asyncio.start_unix_server(self._client, str(self.path),
                                                          limit=MAX_LINE)
        finally:
            os.umask(old)
        st = os.lstat(self.path)
        self._ours = (st.st_dev, st.st_ino)
        if self.gid is not None:
            os.chown(self.path, -1, self.gid)
            os.chmod(self.path, 0o660)
        else:
            os.chmod(self.path, 0o600)
        log.info("control socket %s", self.path)

    def _peer_groups(self, sock: socket.socket, pid: int, uid: int) -> frozenset[int]:
        try:
            # 1024 bytes (256 groups) is the most Python's getsockopt takes; more gives ERANGE.
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
            return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
        except OSError:
            pass
        # No SO_PEERGROUPS (or more than 256 groups): the groups the process has now, if it
        # is still the same user.
        ids = peer_ids(self.fs, pid) if pid > 0 else None
        if ids is None or uid not in ids[0]:
            return frozenset()
        return ids[1]

    def refusal(self, sock: socket.socket | None) -> str | None:
        """None if the peer may use the socket, else the reason (sent to the peer)."""
        if sock is None:
            return "permission denied: no peer credentials"
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        if uid == 0 or uid == os.geteuid():
            return None
        if self.gid is None:
            return (f"permission denied: uid {uid} is not root, and control.group is not set "
                    "(root only)")
        if gid == self.gid or self.gid in self._peer_groups(sock, pid, uid):
            return None
        return (f"permission denied: uid {uid} is neither root nor in group {self.group} "
                f"(gid {self.gid}, control.group), as its primary or a supplementary group")

    async def _send(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write((json.dumps(reply, default=str) + "\n").encode())
        await asyncio.wait_for(writer.drain(), 10)

    async def _discard_input(self, reader: asyncio.StreamReader) -> None:
        """Read and drop what the client still sends (for a second, up to 1 MiB) before
        closing: a unix socket closed with unread data resets its peer (ECONNRESET),
        which could then miss the error reply."""
        try:
            async with asyncio.timeout(1):
                left = 1 << 20
                while left > 0 and (chunk := await reader.read(65536)):
                    left -= len(chunk)
        except (TimeoutError, ConnectionError):
            pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.clients.add(task)
        try:
            why = self.refusal(writer.get_extra_info("socket"))
            if why is not None:
                self.refused += 1
                log.warning("control socket: %s", why)
                await self._send(writer, _error(None, NOT_ALLOWED, why))
                await self._discard_input(reader)
                return
            loop = asyncio.get_running_loop()
            idle_until = loop.time() + IDLE_TIMEOUT_S  # moved on by requests, not blank lines
            while True:
                try:
                    first = await asyncio.wait_for(reader.read(1),
                                                   max(0.0, idle_until - loop.time()))
                except TimeoutError:
                    return  # an idle client is let go
                if not first:
                    return
                if first in b"\r\n\t ":
                    continue
                try:
                    line = first + await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
                except TimeoutError:
                    await self._send(writer, _error(None, INVALID_REQUEST,
                                                    f"request not complete within "
                                                    f"{REQUEST_TIMEOUT_S:g}s"))
                    return
                except (ValueError, asyncio.LimitOverrunError):
                    await self._send(writer, _error(None, INVALID_REQUEST,
                                                    f"request longer than {MAX_LINE} bytes"))
                    await self._discard_input(reader)
                    return
                if not line.strip():
                    continue
                idle_until = loop.time() + IDLE_TIMEOUT_S
                reply = await self.dispatch(line)
                if reply is not None:
                    await self._send(writer, reply)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            if task is not None:
                self.clients.discard(task)
            writer.close()

    async def dispatch(self, line: bytes) -> dict[str, Any] | None:
        """The reply to one request line (None for a notification: a valid request with
        no ``id`` member, which JSON-RPC 2.0 answers with nothing); never raises (but for
        cancellation)."""
        if len(line) > MAX_LINE:
            return _error(None, INVALID_REQUEST, f"request longer than {MAX_LINE} bytes")
        if json_depth_exceeds(line, MAX_DEPTH):
            return _error(None, INVALID_REQUEST,
                          f"invalid request: nested deeper than {MAX_DEPTH} levels")
        try:
            req = jsonstrict.loads(line)
        except jsonstrict.DuplicateKey as exc:
            return _error(None, INVALID_REQUEST, f"invalid request: {exc}")
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return _error(None, PARSE_ERROR, f"parse error: {str(exc)[:200]}")
        id_ = req.get("id") if isinstance(req, dict) else None
        if not (id_ is None or isinstance(id_, str) or
                (isinstance(id_, int) and not isinstance(id_, bool))):
            return _error(None, INVALID_REQUEST, "invalid request: id must be a string, an "
                                                 "integer or null")
        if not isinstance(req, dict) or req.get("jsonrpc") != "2.0" or \
                not isinstance(req.get("method"), str):
            return _error(id_, INVALID_REQUEST,
                          "invalid request: needs jsonrpc '2.0' and a method")
        method: str = req["method"]
        handler = self.methods.get(method)
        if handler is None:
            return _error(id_, METHOD_NOT_FOUND,
                          f"method not found: {method[:100]} (known: {', '.join(self.methods)})")
        params = req.get("params")
        if params not in (None, {}, []):
            return _error(id_, INVALID_PARAMS, f"{method} takes no parameters")
        notification = "id" not in req
        try:
            result = await handler()
        except RequestRefused as exc:
            return None if notification else _error(id_, REFUSED, str(exc))
        except Exception as exc:  # reported to the client; the daemon goes on
            log.exception("control method %s failed", method)
            return None if notification else _error(id_, INTERNAL_ERROR, f"{method} failed: {exc}")
        return None if notification else {"jsonrpc": "2.0", "id": id_, "result": result}

    async def stop(self) -> None:
        if self.server is None:
            return  # never listened: the path may be another daemon's
        self.server.close()
        for t in list(self.clients):
            t.cancel()
        await self.server.wait_closed()
        self.server = None
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._ours:
            os.unlink(self.path)
        else:
            log.warning("%s is no longer the socket kmigratedd created; leaving it", self.path)
