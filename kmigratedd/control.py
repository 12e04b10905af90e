"""The control socket: JSON-RPC 2.0 over a unix stream socket, one request per line.

Scriptable with ``nc -U``::

    echo '{"jsonrpc": "2.0", "id": 1, "method": "status"}' | nc -U /run/kmigratedd/control.sock

Methods: ``status``, ``pause``, ``resume``, ``reload``, ``config``. The socket is
created mode 0600 (root only), or 0660 owned by ``control.group`` when one is
set; the peer's credentials (SO_PEERCRED) are checked again on every connection.
A malformed request gets a JSON-RPC error; a line longer than the limit or a
client idle past the time-out is disconnected; neither disturbs other clients.
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("kmigratedd.control")

MAX_LINE = 64 * 1024
IDLE_TIMEOUT_S = 30.0

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
NOT_ALLOWED = -32001

Handler = Callable[[], Awaitable[Any]]


def _error(id_: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}}


class ControlServer:
    def __init__(self, path: str, methods: dict[str, Handler], group: str = "") -> None:
        self.path = Path(path)
        self.methods = methods
        self.group = group
        self.gid: int | None = None
        self.server: asyncio.base_events.Server | None = None
        self.clients: set[asyncio.Task[None]] = set()
        self.refused = 0

    async def start(self) -> None:
        if self.group:
            try:
                self.gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise OSError(f"control.group: no group named {self.group!r}") from None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_socket() or self.path.exists():
            # A stale socket from a previous run; refuse if a live daemon answers.
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.path))
                raise OSError(f"another kmigratedd is listening on {self.path}")
            except (ConnectionRefusedError, FileNotFoundError):
                self.path.unlink(missing_ok=True)
            finally:
                probe.close()
        old = os.umask(0o177)  # the socket is never world-accessible, not even briefly
        try:
            self.server = await asyncio.start_unix_server(self._client, str(self.path),
                                                          limit=MAX_LINE)
        finally:
            os.umask(old)
        if self.gid is not None:
            os.chown(self.path, -1, self.gid)
            os.chmod(self.path, 0o660)
        else:
            os.chmod(self.path, 0o600)
        log.info("control socket %s", self.path)

    def _allowed(self, writer: asyncio.StreamWriter) -> bool:
        sock = writer.get_extra_info("socket")
        if sock is None:
            return False
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, gid = struct.unpack("3i", creds)
        if uid == 0 or uid == os.geteuid():
            return True
        if self.gid is None:
            return False
        if gid == self.gid:
            return True
        try:
            import pwd

            name = pwd.getpwuid(uid).pw_name
            return name in grp.getgrgid(self.gid).gr_mem
        except KeyError:
            return False

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.clients.add(task)
        try:
            if not self._allowed(writer):
                self.refused += 1
                writer.write((json.dumps(_error(None, NOT_ALLOWED, "permission denied")) + "\n")
                             .encode())
                await asyncio.wait_for(writer.drain(), 5)
                return
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT_S)
                except TimeoutError:
                    return  # a slow or idle client is let go
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write((json.dumps(_error(None, INVALID_REQUEST,
                                                    f"request longer than {MAX_LINE} bytes"))
                                  + "\n").encode())
                    await asyncio.wait_for(writer.drain(), 5)
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                reply = await self.dispatch(line)
                writer.write((json.dumps(reply, default=str) + "\n").encode())
                await asyncio.wait_for(writer.drain(), 10)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            if task is not None:
                self.clients.discard(task)
            writer.close()

    async def dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(None, PARSE_ERROR, f"parse error: {exc}")
        if not isinstance(req, dict) or req.get("jsonrpc") != "2.0" or \
                not isinstance(req.get("method"), str):
            return _error(req.get("id") if isinstance(req, dict) else None, INVALID_REQUEST,
                          "invalid request: needs jsonrpc '2.0' and a method")
        id_ = req.get("id")
        handler = self.methods.get(req["method"])
        if handler is None:
            return _error(id_, METHOD_NOT_FOUND,
                          f"method not found: {req['method']} (known: {', '.join(self.methods)})")
        params = req.get("params")
        if params not in (None, {}, []):
            return _error(id_, INVALID_PARAMS, f"{req['method']} takes no parameters")
        try:
            result = await handler()
        except Exception as exc:  # reported to the client; the daemon goes on
            log.exception("control method %s failed", req["method"])
            return _error(id_, INTERNAL_ERROR, f"{req['method']} failed: {exc}")
        return {"jsonrpc": "2.0", "id": id_, "result": result}

    async def stop(self) -> None:
        if self.server is None:
            return  # never listened: the path may be another daemon's
        self.server.close()
        for t in list(self.clients):
            t.cancel()
        await self.server.wait_closed()
        self.server = None
        self.path.unlink(missing_ok=True)
