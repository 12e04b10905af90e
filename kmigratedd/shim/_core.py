"""The native extension (``kmigratedd._native``, the only import of it) and the argument
checks every call shares: buffers of the right item size, pids, -errno to exceptions."""

from __future__ import annotations

import os
from array import array
from typing import Any, Final

from ..errors import MovePagesError, NativeUnavailableError, ShimArgumentError

try:
    from .. import _native  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise NativeUnavailableError(
        f"kmigratedd's native extension is not built ({exc}); install with 'pip install .'"
    ) from exc

ffi: Final = _native.ffi
lib: Final = _native.lib

# move_pages(2) flags, from <numaif.h>.
MPOL_MF_MOVE: Final = 1 << 1
MPOL_MF_MOVE_ALL: Final = 1 << 2
_VALID_FLAGS: Final = MPOL_MF_MOVE | MPOL_MF_MOVE_ALL

# The kernel's MAX_NUMNODES is at most 1 << 10 (CONFIG_NODES_SHIFT <= 10).
MAX_NODES: Final = 1024

PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")

_ZERO_I32: Final = array("i", [0])


def _buffer(obj: Any, itemsize: int, what: str) -> tuple[Any, int]:
    try:
        view = memoryview(obj)
    except TypeError:
        code = "Q" if itemsize == 8 else "i"
        raise ShimArgumentError(f"{what}: needs a buffer (array('{code}')), "
                                f"got {type(obj).__name__}") from None
    if view.itemsize != itemsize or not view.c_contiguous or view.ndim != 1:
        raise ShimArgumentError(f"{what}: needs a flat buffer of {itemsize}-byte items")
    return ffi.from_buffer("uint64_t[]" if itemsize == 8 else "int32_t[]", obj), len(view)


def _bytes_buffer(obj: Any, n: int, what: str, writable: bool = True) -> Any:
    try:
        view = memoryview(obj)
    except TypeError:
        raise ShimArgumentError(f"{what}: needs a bytearray") from None
    if view.itemsize != 1 or len(view) < n or (writable and view.readonly):
        raise ShimArgumentError(f"{what}: needs a {'writable ' if writable else ''}buffer of "
                                f"at least {n} bytes")
    return ffi.from_buffer("uint8_t[]", obj, require_writable=writable)


def _check_pid(pid: int) -> None:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0 or pid > 0x7FFFFFFF:
        raise ShimArgumentError(f"pid: must be an int >= 0 (0 = this process), got {pid!r}")


def _raise_for(rc: int, pid: int, count: int) -> None:
    code = -rc
    raise MovePagesError(code, f"move_pages(pid={pid}, {count} pages): {os.strerror(code)}")
