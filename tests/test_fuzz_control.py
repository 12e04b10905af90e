"""Property-based fuzzing of the control protocol (kmigratedd.control), in process.

Arbitrary bytes and JSON-RPC-like payloads go to the dispatcher and, over a real unix
socket, to a running ControlServer. Never may an exception escape: every request line
gets one JSON-RPC 2.0 response (a result or an error with an integer code), or the
connection is closed cleanly, within a bounded time; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzzutil import FUZZ, reported  # noqa: E402

from kmigratedd import control  # noqa: E402
from kmigratedd.control import ControlServer  # noqa: E402

BOUND_S = 5.0  # one dispatch or one exchange; a generous bound on a loaded CI machine


async def _ok() -> object:
    return {"ok": True}


async def _boom() -> object:
    raise RuntimeError("handler failed")


def server(path: str = "/nonexistent/control.sock") -> ControlServer:
    return ControlServer(path, {"status": _ok, "pause": _ok, "explode": _boom})


def check_reply(reply: Any) -> None:
    assert isinstance(reply, dict), reply
    assert reply["jsonrpc"] == "2.0" and "id" in reply, reply
    assert ("result" in reply) != ("error" in reply), reply
    if "error" in reply:
        err = reply["error"]
        assert isinstance(err["code"], int) and isinstance(err["message"], str), reply
        assert len(err["message"]) < 1000, reply
    assert json.loads(json.dumps(reply, default=str, allow_nan=False)) is not None


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)
requests = st.fixed_dictionaries({}, optional={
    "jsonrpc": st.one_of(st.just("2.0"), json_values),
    "id": json_values,
    "method": st.one_of(st.sampled_from(["status", "pause", "explode", "nope", ""]),
                        json_values),
    "params": st.one_of(st.just({}), st.just([]), json_values),
})


def nested(depth: int, opener: str) -> bytes:
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "{":
        return ('{"a":' * depth + "1" + closer * depth).encode()
    return (opener * depth + closer * depth).encode()


def repeat(n: int, b: bytes) -> bytes:
    return b * n


lines = st.one_of(
    st.binary(max_size=2048),
    requests.map(lambda r: json.dumps(r).encode()),
    st.builds(nested, st.integers(0, 70_000), st.sampled_from("[{")),
    st.builds(repeat, st.integers(1, 70_000), st.sampled_from([b"[", b"{", b'"', b"\\"])),
    st.builds(lambda a, b: a + b, requests.map(lambda r: json.dumps(r).encode()),
              st.binary(max_size=64)),
)


def test_dispatch_always_answers(request: pytest.FixtureRequest) -> None:
    srv = server()
    with reported(request) as count:
        @FUZZ
        @given(line=lines)
        def prop(line: bytes) -> None:
            count()
            t0 = time.monotonic()
            reply = asyncio.run(srv.dispatch(line))
            assert time.monotonic() - t0 < BOUND_S
            if reply is None:  # a notification (a valid request without "id"): no reply
                req = json.loads(line)
                assert isinstance(req, dict) and "id" not in req and \
                    req.get("jsonrpc") == "2.0" and isinstance(req.get("method"), str), line
                return
            check_reply(reply)
            if line.count(b"[") > control.MAX_DEPTH + 1 and b'"' not in line and \
                    line.lstrip().startswith(b"[" * (control.MAX_DEPTH + 1)):
                assert reply["error"]["code"] in (control.INVALID_REQUEST,
                                                  control.PARSE_ERROR), reply

        prop()


def test_json_depth_scan_matches_the_nesting() -> None:
    assert not control.json_depth_exceeds(nested(32, "["), 32)
    assert control.json_depth_exceeds(nested(33, "["), 32)
    assert control.json_depth_exceeds(nested(33, "{"), 32)
    assert not control.json_depth_exceeds(b'{"a": "' + b"[" * 100 + b'"}', 32)
    assert not control.json_depth_exceeds(b'["\\"' + b"[" * 100 + b'"]', 32)
    assert control.json_depth_exceeds(b'["\\\\"' + b"[" * 100 + b"]", 32)


async def exchange(path: str, payload: bytes) -> list[bytes]:
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    try:
        writer.write(payload)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed first (an over-long request)
    out = []
    while line := await reader.readline():
        out.append(line)
    writer.close()
    return out


def test_socket_always_answers_or_closes(request: pytest.FixtureRequest) -> None:
    with tempfile.TemporaryDirectory() as d, reported(request) as count:
        path = f"{d}/c.sock"

        @FUZZ
        @given(chunks=st.lists(lines, min_size=1, max_size=4), newline=st.booleans())
        def prop(chunks: list[bytes], newline: bool) -> None:
            count()
            payload = b"\n".join(chunks) + (b"\n" if newline else b"")

            async def scenario() -> None:
                srv = server(path)
                await srv.start()
                try:
                    out = await asyncio.wait_for(exchange(path, payload), BOUND_S)
                    for line in out:
                        check_reply(json.loads(line))
                    requests_sent = [c for c in payload.split(b"\n") if c.strip()]
                    assert len(out) <= len(requests_sent), (out, requests_sent)
                    # The server is still there for the next client.
                    again = await asyncio.wait_for(exchange(
                        path, b'{"jsonrpc":"2.0","id":7,"method":"status"}\n'), BOUND_S)
                    assert json.loads(again[0]) == {"jsonrpc": "2.0", "id": 7,
                                                    "result": {"ok": True}}
                finally:
                    await srv.stop()

            asyncio.run(scenario())

        prop()
