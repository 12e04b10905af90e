#!/usr/bin/env python3
"""Boot a tiered-memory qemu guest and run one command in it.

CLI::

    python3 tests/vm/vmrun.py --topology 2node --kernel debian-6.12 --timeout 300 -- CMD ARGS...

API::

    from vmrun import run_in_vm
    res = run_in_vm(["python3", "-c", "print(1)"], topology="2node", kernel="debian-6.12")
    res.returncode, res.output

The guest reuses the host root file system read-only over 9p (with a tmpfs overlay on top, so it
looks writable and every write is lost at power-off), gets a fresh tmpfs /tmp, and additionally
sees the current directory (normally the repo checkout) READ-WRITE over 9p at the same absolute
path, so the project's venv works and files written there come back to the host.  The command
runs as root with cwd = the launcher's cwd, stdin = /dev/null, numa_balancing = 0 and the
environment KMIGRATEDD_IN_VM=1, KMIGRATEDD_VM_TOPOLOGY, KMIGRATEDD_VM_KERNEL (+ --env K=V).

Topologies (sizes configurable with --mem):
  2node: node 0 = 2 vCPUs + 2G DRAM; node 1 = CPU-less 2G, ~3x latency, 1/4 bandwidth (HMAT).
  3node: node 0 = CPUs + DRAM; nodes 1 and 2 CPU-less with 3x / 6x latency and 1/4 / 1/8 bandwidth,
         both in lower memory tiers than node 0 and nearer to node 0 than to each other.
Kernels: debian-6.12 (default), debian-6.1 (highest installed generic 6.1.0-N), idle (custom build
with CONFIG_IDLE_PAGE_TRACKING and DAMON, see build_kernel.sh), or a path to a bzImage.

Exit status of the CLI: the command's own status; 124 on timeout; 125 when the guest died without
reporting a status (panic, init failure); 77 when qemu or the kernel is not available.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import dataclasses
import fcntl
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import secrets
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
CACHE_ROOT = Path(
    os.environ.get("KMIGRATEDD_VM_CACHE", str(Path.home() / ".cache" / "kmigratedd-vm"))
)
DEFAULT_LOG_DIR = Path(os.environ.get("KMIGRATEDD_VM_LOG_DIR", str(HERE / "logs")))
BUILD_KERNEL = HERE / "build_kernel.sh"
QBOOT = Path("/usr/share/qemu/qboot.rom")
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

KERNELS = ("debian-6.12", "debian-6.1", "idle")
TOPOLOGIES = ("2node", "3node")
DEFAULT_MEM = {"2node": ("2G", "2G"), "3node": ("2G", "1G", "1G")}

EXIT_TIMEOUT = 124
EXIT_VM_ERROR = 125
EXIT_UNAVAILABLE = 77

# Modules the initramfs loads (with their dependencies) when the kernel does not have them built in.
NEEDED_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MSIZE = 512000

# ---------------------------------------------------------------------------------------------
# Guest init, stage 1: runs from the initramfs as PID 1.  Loads modules, mounts the host root
# (9p, read-only) under a tmpfs overlay, the per-run control share, and switches root to stage 2.
INIT_SH = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
fail() {
    echo "KMVM-INIT-FAIL: $*"
    sync
    poweroff -f
    echo o > /proc/sysrq-trigger
    sleep 100
}
for m in $(cat /modules.order); do
    insmod "/lib/modules/$m" || fail "insmod $m"
done
mkdir -p /lower /upper /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=@MSIZE@ kmvmroot /lower \
    || fail "mount 9p host root"
mount -t tmpfs -o mode=0755 tmpfs /upper || fail "mount tmpfs upper"
mkdir -p /upper/up /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/up,workdir=/upper/work overlay /newroot \
    || fail "mount overlay"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run || fail "mount /run"
mkdir -p /newroot/run/kmvm/ctl
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=@MSIZE@ \
    kmvmctl /newroot/run/kmvm/ctl || fail "mount 9p control share"
cp /bin/busybox /stage2 /newroot/run/kmvm/ || fail "copy stage2"
for d in dev proc sys; do
    mkdir -p /newroot/$d
    mount --move /$d /newroot/$d || fail "move /$d"
done
exec switch_root /newroot /run/kmvm/busybox sh /run/kmvm/stage2
fail "switch_root"
""".replace("@MSIZE@", str(MSIZE))

# Stage 2: PID 1 in the overlay root.  Mounts /tmp, /dev/shm, debugfs, cgroup2, the RW cwd share,
# brings up lo (servers under test listen on 127.0.0.1),
# runs the command from the control share and powers off.
STAGE2_SH = r"""BB=/run/kmvm/busybox
CTL=/run/kmvm/ctl
. $CTL/config
fail() {
    echo "KMVM-INIT-FAIL: $*"
    $BB sync
    $BB poweroff -f
    echo o > /proc/sysrq-trigger
    $BB sleep 100
}
$BB mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp || fail "mount /tmp"
$BB mkdir -p /dev/shm /dev/pts
$BB mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
$BB mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
$BB mount -t debugfs debugfs /sys/kernel/debug
$BB mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
$BB mount -t cgroup2 cgroup2 /sys/fs/cgroup
if [ "$KMVM_SHARE_CWD" = 1 ]; then
    $BB mkdir -p "$KMVM_CWD" || fail "mkdir $KMVM_CWD"
    $BB mount -t 9p -o trans=virtio,version=9p2000.L,cache=$KMVM_CWD_CACHE,msize=@MSIZE@ \
        kmvmcwd "$KMVM_CWD" || fail "mount 9p cwd share at $KMVM_CWD"
fi
$BB hostname kmvm
$BB ip link set lo up || $BB ifconfig lo 127.0.0.1 up || fail "loopback up"
echo 0 > /proc/sys/kernel/numa_balancing
echo "4 4 1 7" > /proc/sys/kernel/printk
echo "KMVM-START-$KMVM_NONCE"
$BB sh $CTL/cmd.sh </dev/null
rc=$?
$BB sync
echo $rc > $CTL/rc
$BB sync
echo "KMVM-EXIT-$KMVM_NONCE rc=$rc"
$BB poweroff -f
echo o > /proc/sysrq-trigger
$BB sleep 100
""".replace("@MSIZE@", str(MSIZE))


class VMUnavailable(RuntimeError):
    """The VM cannot be started here (reason in str(exc))."""


class QemuMissing(VMUnavailable):
    """No qemu-system-x86_64 (and therefore no TCG): the only reason the pytest layer skips."""


class KernelMissing(VMUnavailable):
    """The requested guest kernel is not installed / cannot be built."""


@dataclasses.dataclass
class GuestKernel:
    name: str  # debian-6.12 / debian-6.1 / idle / path
    image: Path  # bzImage
    release: str  # uname -r (or a cache key for custom builds)
    modules_dir: Path | None  # /lib/modules/<release> or None when everything is built in


@dataclasses.dataclass
class VMResult:
    returncode: int
    output: str  # what the command printed (guest console between the markers)
    console: str  # the whole console log (boot + command + shutdown)
    log_path: Path | None  # where the console log was kept (failure/timeout/keep_log)
    boot_seconds: float | None
    wall_seconds: float
    timed_out: bool
    accel: str
    kernel: str
    kernel_release: str
    topology: str
    status_reported: bool  # False when the guest died/hung before reporting an exit status

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# --------------------------------------------------------------------------------------- helpers
def _log(msg: str) -> None:
    print(f"vmrun: {msg}", file=sys.stderr, flush=True)


def find_qemu() -> str:
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise QemuMissing("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    return qemu


def _version_key(s: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)]


def _debian_kernel(pattern: str, name: str) -> GuestKernel:
    found: list[tuple[list[object], Path, str]] = []
    for img in glob.glob(pattern):
        rel = os.path.basename(img)[len("vmlinuz-") :]
        if rel.endswith(".dpkg-new") or "-rt-" in rel or "-cloud-" in rel:
            continue
        if not (Path("/lib/modules") / rel / "modules.dep").exists():
            continue
        found.append((_version_key(rel), Path(img), rel))
    if not found:
        raise KernelMissing(f"no kernel matching {pattern} with /lib/modules (kernel {name})")
    found.sort(key=lambda t: t[0])
    _, image, release = found[-1]
    if not os.access(image, os.R_OK):
        raise KernelMissing(f"{image} is not readable")
    return GuestKernel(name, image, release, Path("/lib/modules") / release)


def resolve_kernel(name: str, build: bool = True) -> GuestKernel:
    """Find (or for 'idle', build once) the guest kernel."""
    if name == "debian-6.12":
        return _debian_kernel("/boot/vmlinuz-6.12*-amd64", name)
    if name == "debian-6.1":
        return _debian_kernel("/boot/vmlinuz-6.1.0-*-amd64", name)
    if name == "idle":
        res = subprocess.run(
            ["bash", str(BUILD_KERNEL), "--print"], check=False, capture_output=True, text=True
        )
        if res.returncode != 0:
            if not build:
                raise KernelMissing("idle kernel not built yet (bash tests/vm/build_kernel.sh)")
            _log("idle kernel not cached: building it (tests/vm/build_kernel.sh)")
            res = subprocess.run(
                ["bash", str(BUILD_KERNEL)], check=False, stdout=subprocess.PIPE, text=True
            )
            if res.returncode != 0:
                raise KernelMissing(f"building the idle kernel failed (rc={res.returncode})")
        img = Path(res.stdout.strip().splitlines()[-1])
        rel_file = img.parent / "kernelrelease"
        rel = rel_file.read_text().strip() if rel_file.exists() else "idle"
        return GuestKernel(name, img, f"{rel}-{img.parent.name}", None)
    custom = Path(name)
    if custom.is_file():
        key = hashlib.sha256(str(custom.resolve()).encode()).hexdigest()[:12]
        return GuestKernel(str(custom), custom.resolve(), f"custom-{key}", None)
    raise KernelMissing(
        f"unknown kernel {name!r} (choose one of {', '.join(KERNELS)} or a bzImage path)"
    )


# ------------------------------------------------------------------------------------ initramfs
def _parse_modules_dep(modules_dir: Path) -> dict[str, tuple[str, list[str]]]:
    """module name -> (relative path, [dependency names])."""

    def mod_name(rel: str) -> str:
        base = os.path.basename(rel)
        base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
        return base.replace("-", "_")

    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        rel, rest = line.split(":", 1)
        deps[mod_name(rel)] = (rel, [mod_name(d) for d in rest.split()])
    return deps


def _builtin_modules(modules_dir: Path) -> set[str]:
    f = modules_dir / "modules.builtin"
    if not f.exists():
        return set()
    return {
        re.sub(r"\.ko$", "", os.path.basename(line)).replace("-", "_")
        for line in f.read_text().split()
    }


def module_load_order(
    modules_dir: Path, wanted: Sequence[str] = NEEDED_MODULES
) -> list[tuple[str, Path]]:
    """Modules to insmod, dependencies first (depth-first topological order over modules.dep)."""
    deps = _parse_modules_dep(modules_dir)
    builtin = _builtin_modules(modules_dir)
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name not in deps:
            raise KernelMissing(
                f"module {name} (needed by {' <- '.join(stack) or 'init'}) is neither "
                f"built in nor in {modules_dir}/modules.dep"
            )
        seen.add(name)
        rel, dlist = deps[name]
        for d in dlist:
            visit(d, stack + (name,))
        order.append((name, modules_dir / rel))

    for w in wanted:
        visit(w, ())
    return order


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    return data


class _Cpio:
    """Minimal 'newc' cpio writer (lets us create /dev/console without being root or mknod)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        nameb = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nameb), 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        self.buf.write(nameb)
        self.buf.write(b"\0" * (-(110 + len(nameb)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, 0o020000 | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def _is_static_elf(path: Path) -> bool:
    """True if the ELF64 file has no PT_INTERP (needs no dynamic loader in the initramfs)."""
    import struct

    with open(path, "rb") as f:
        hdr = f.read(64)
        if hdr[:4] != b"\x7fELF" or hdr[4] != 2:
            return False
        (phoff,) = struct.unpack_from("<Q", hdr, 32)
        phentsize, phnum = struct.unpack_from("<HH", hdr, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def find_busybox() -> Path:
    for c in BUSYBOX_CANDIDATES:
        p = Path(c)
        if p.exists() and _is_static_elf(p):
            return p
    raise VMUnavailable("no static busybox found (apt-get install busybox-static)")


def build_initramfs(kernel: GuestKernel) -> Path:
    """Build (or reuse) the initramfs for this kernel; cached by kernel release + script hash."""
    busybox = find_busybox()
    mods = module_load_order(kernel.modules_dir) if kernel.modules_dir else []
    h = hashlib.sha256()
    h.update(INIT_SH.encode())
    h.update(STAGE2_SH.encode())
    h.update(busybox.read_bytes())
    for name, path in mods:
        st = path.stat()
        h.update(f"{name}:{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    out = CACHE_ROOT / "initramfs" / f"{kernel.release}-{h.hexdigest()[:16]}.cpio.gz"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    c = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "lower", "upper", "newroot", "lib", "lib/modules"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.file("bin/busybox", busybox.read_bytes(), 0o755)
    c.symlink("bin/sh", "busybox")
    c.file("init", INIT_SH.encode(), 0o755)
    c.file("stage2", STAGE2_SH.encode(), 0o644)
    names = []
    for i, (name, path) in enumerate(mods):
        fname = f"{i:02d}-{name}.ko"
        c.file(f"lib/modules/{fname}", _read_module(path))
        names.append(fname)
    c.file("modules.order", ("\n".join(names) + "\n").encode() if names else b"")
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(gzip.compress(c.finish(), compresslevel=1))
    tmp.replace(out)
    _log(f"built initramfs {out} ({len(mods)} modules: {' '.join(n for n, _ in mods) or 'none'})")
    return out


# ------------------------------------------------------------------------------------- topology
def _size_mib(s: str) -> int:
    m = re.fullmatch(r"(\d+)([MmGg]?)", s.strip())
    if not m:
        raise ValueError(f"bad memory size {s!r} (use e.g. 512M or 2G)")
    n = int(m.group(1))
    return n * 1024 if m.group(2).lower() == "g" else n


def topology_args(topology: str, mem: Sequence[str] | None = None, smp: int = 2) -> list[str]:
    """qemu arguments for the NUMA/HMAT topology."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r} (choose {', '.join(TOPOLOGIES)})")
    sizes = [_size_mib(s) for s in (mem or DEFAULT_MEM[topology])]
    nnodes = 2 if topology == "2node" else 3
    if len(sizes) != nnodes:
        raise ValueError(f"{topology} needs {nnodes} memory sizes, got {len(sizes)}")
    # node: (latency ns, bandwidth) as seen from initiator node 0
    perf = [(80, "20G"), (240, "5G"), (480, "2500M")]
    # SLIT: slow nodes are nearer to node 0 than to each other
    dist = {(0, 1): 20, (0, 2): 24, (1, 2): 40}
    args = ["-machine", "pc,hmat=on", "-smp", str(smp), "-m", f"{sum(sizes)}M"]
    for n, size in enumerate(sizes):
        args += ["-object", f"memory-backend-ram,id=mem{n},size={size}M"]
        if n == 0:
            args += ["-numa", f"node,nodeid=0,cpus=0-{smp - 1},memdev=mem0"]
        else:
            args += ["-numa", f"node,nodeid={n},memdev=mem{n},initiator=0"]
    for a in range(nnodes):
        for b in range(a + 1, nnodes):
            args += ["-numa", f"dist,src={a},dst={b},val={dist[(a, b)]}"]
    for n in range(nnodes):
        lat, bw = perf[n]
        args += [
            "-numa",
            f"hmat-lb,initiator=0,target={n},hierarchy=memory,data-type=access-latency,latency={lat}",
            "-numa",
            f"hmat-lb,initiator=0,target={n},hierarchy=memory,data-type=access-bandwidth,bandwidth={bw}",
        ]
    return args


# ---------------------------------------------------------------------------------------- accel
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def probe_kvm(qemu: str, kernel_image: Path, timeout: float = 30.0) -> tuple[bool, str]:
    """Does KVM actually run a guest here?  /dev/kvm existing is not enough (nested setups abort
    with 'failed to set MSR'): boot the kernel with no root under KVM until it panics.  The result
    is cached per host boot and qemu binary."""
    if not os.path.exists("/dev/kvm"):
        return False, "no /dev/kvm"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"cannot open /dev/kvm: {e.strerror}"
    try:
        api = fcntl.ioctl(fd, 0xAE00)  # KVM_GET_API_VERSION
        if api != 12:
            return False, f"KVM API version {api}"
        vm = fcntl.ioctl(fd, 0xAE01, 0)  # KVM_CREATE_VM
        os.close(vm)
    except OSError as e:
        return False, f"KVM ioctl failed: {e.strerror}"
    finally:
        os.close(fd)
    st = os.stat(qemu)
    key = hashlib.sha256(f"{_boot_id()}:{qemu}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = CACHE_ROOT / "kvm-probe.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return bool(cached["ok"]), str(cached["reason"]) + " (cached)"
    except (OSError, ValueError, KeyError):
        pass
    cmd = [
        qemu,
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "256",
        "-smp",
        "1",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        str(kernel_image),
        "-append",
        "console=ttyS0 panic=-1 loglevel=4",
    ]
    if QBOOT.exists():
        cmd[1:1] = ["-bios", str(QBOOT)]
    try:
        p = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, check=False, capture_output=True, timeout=timeout
        )
        out = (p.stdout + p.stderr).decode(errors="replace")
        ok = p.returncode == 0 and "Kernel panic" in out
        reason = (
            "KVM boots a guest"
            if ok
            else f"KVM test boot failed (rc={p.returncode}): {_first_line(out)}"
        )
    except subprocess.TimeoutExpired:
        ok, reason = False, f"KVM test boot did not finish in {timeout:.0f}s"
    try:
        CACHE_ROOT.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "ok": ok, "reason": reason}))
    except OSError:
        pass
    return ok, reason


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no output"


def accel_args(accel: str) -> list[str]:
    """TCG runs its vCPUs in one host thread unless KMIGRATEDD_VM_TCG_THREAD=multi: under
    multi-threaded TCG a guest kernel that patches its own text (static keys flipped by perf
    events and the numa_balancing sysctl, text_poke_bp) now and then takes an int3 Oops on the
    other vCPU mid-patch and panics ('Oops: int3', seen once in CI and once here, in
    do_user_addr_fault and sched_clock_idle_wakeup_event)."""
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    thread = os.environ.get("KMIGRATEDD_VM_TCG_THREAD", "single")
    if thread not in ("single", "multi"):
        raise SystemExit(f"vmrun: KMIGRATEDD_VM_TCG_THREAD={thread!r}: use single or multi")
    return ["-accel", f"tcg,thread={thread}", "-cpu", "max"]


def choose_accel(requested: str, qemu: str, kernel: GuestKernel) -> str:
    if requested in ("kvm", "tcg"):
        return requested
    ok, reason = probe_kvm(qemu, kernel.image)
    if not ok:
        _log(f"using TCG: {reason}")
    return "kvm" if ok else "tcg"


# -------------------------------------------------------------------------------------- running
def availability(kernel: str = "debian-6.12") -> str | None:
    """None if a guest can be booted with this kernel, else a one-line reason."""
    try:
        find_qemu()
        find_busybox()
        resolve_kernel(kernel, build=False)
    except VMUnavailable as e:
        return str(e)
    return None


def vm_slots() -> int:
    """How many guests this run may boot at once: one, or under pytest-xdist one per worker
    (tests/run.sh starts as many workers as the machine has room for guests)."""
    raw = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    return max(1, int(raw)) if raw.isdigit() else 1


@contextlib.contextmanager
def _vm_lock() -> Iterator[None]:
    """At most vm_slots() guests at a time on this machine: each holds one of the lock files
    vm.lock, vm.lock.1, ...  A run with one slot (a benchmark, a plain pytest) waits for
    vm.lock only, so it shares the machine with at most one other guest."""
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    paths = [CACHE_ROOT / ("vm.lock" if i == 0 else f"vm.lock.{i}") for i in range(vm_slots())]
    files = [open(path, "w") for path in paths]
    try:
        waited = False
        while True:
            for f in files:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                yield
                return
            if not waited:
                _log("another guest is running; waiting for it")
                waited = True
            if len(files) == 1:
                fcntl.flock(files[0], fcntl.LOCK_EX)
                yield
                return
            time.sleep(1)
    finally:
        for f in files:
            f.close()


def _guest_script(cmd: Sequence[str], cwd: str, env: Mapping[str, str]) -> str:
    lines = ["# generated by tests/vm/vmrun.py"]
    for k, v in env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise ValueError(f"bad environment variable name {k!r}")
        lines.append(f"export {k}={shlex.quote(v)}")
    lines.append(f"cd {shlex.quote(cwd)} || exit 126")
    lines.append("exec " + " ".join(shlex.quote(a) for a in cmd))
    return "\n".join(lines) + "\n"


def _qarg(value: str) -> str:
    """Escape a value inside a qemu -opt list (commas are doubled)."""
    return value.replace(",", ",,")


def _save_log(console: str, log_dir: Path, kernel: str, topology: str) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = log_dir / f"vm-{stamp}-{kernel.replace('/', '_')}-{topology}-{os.getpid()}.log"
    path.write_text(console)
    return path


def run_in_vm(
    cmd: Sequence[str],
    *,
    topology: str = "2node",
    kernel: str = "debian-6.12",
    timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    share_cwd: bool = True,
    mem: Sequence[str] | None = None,
    smp: int = 2,
    accel: str = "auto",
    log_dir: Path | str | None = None,
    keep_log: bool = False,
    stream: IO[str] | None | str = "stdout",
    append: str = "",
    quiet_boot: bool = True,
    cwd_cache: str = "loose",
) -> VMResult:
    """Boot a guest, run cmd in it, return its exit status and output.

    stream: where the command's output goes while it runs ("stdout" = sys.stdout at call time,
    None = nowhere; it is always in the result).
    Raises QemuMissing / KernelMissing / VMUnavailable if the guest cannot be started at all.
    """
    out_stream: IO[str] | None = sys.stdout if stream == "stdout" else stream  # type: ignore[assignment]
    if os.environ.get("KMIGRATEDD_IN_VM") == "1":
        raise VMUnavailable("already inside the kmigratedd VM (KMIGRATEDD_IN_VM=1): no nesting")
    if not cmd:
        raise ValueError("no command")
    qemu = find_qemu()
    gk = resolve_kernel(kernel)
    initrd = build_initramfs(gk)
    topo = topology_args(topology, mem, smp)
    node_mib = [_size_mib(s) for s in (mem or DEFAULT_MEM[topology])]
    cwd = os.path.abspath(cwd or os.getcwd())
    if cwd == "/":
        share_cwd = False
    if cwd_cache not in ("none", "loose", "mmap", "readahead", "fscache"):
        raise ValueError(f"bad 9p cache mode {cwd_cache!r}")
    log_dir = Path(log_dir) if log_dir else DEFAULT_LOG_DIR

    with _vm_lock():  # vm_slots() guests at a time; the KVM probe boots one too
        acc = choose_accel(accel, qemu, gk)
        genv: dict[str, str] = {
            "PATH": os.environ.get("PATH", GUEST_PATH) + ":" + GUEST_PATH,
            "HOME": "/root",
            "USER": "root",
            "LOGNAME": "root",
            "SHELL": "/bin/sh",
            "TERM": "dumb",
            "LANG": "C.UTF-8",
            "COLUMNS": "120",
            "PY_COLORS": "0",
            "NO_COLOR": "1",
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": "/tmp",
        }
        for k in ("VIRTUAL_ENV", "PYENV_VERSION", "PYENV_ROOT", "PYTHONSAFEPATH",
                  "KMIGRATEDD_TEST_DIST"):
            if k in os.environ:
                genv[k] = os.environ[k]
        genv.update(env or {})
        genv.update(
            {
                "KMIGRATEDD_IN_VM": "1",
                "KMIGRATEDD_VM_TOPOLOGY": topology,
                "KMIGRATEDD_VM_KERNEL": gk.name,
                "KMIGRATEDD_VM_ACCEL": acc,
                "KMIGRATEDD_VM_NODE_MEM_MIB": ",".join(map(str, node_mib)),
            }
        )

        nonce = secrets.token_hex(8)
        start_marker = f"KMVM-START-{nonce}"
        exit_re = re.compile(rf"KMVM-EXIT-{nonce} rc=(\d+)")
        cmdline = (
            "console=ttyS0,115200 panic=-1 rdinit=/init mitigations=off i8042.noaux i8042.nokbd "
            "i8042.nopnp 8250.nr_uarts=1 no_timer_check tsc=reliable random.trust_cpu=on"
        )
        if quiet_boot:
            cmdline += " quiet loglevel=4"
        if append:
            cmdline += " " + append

        with tempfile.TemporaryDirectory(prefix="kmvm-ctl-") as ctl:
            Path(ctl, "config").write_text(
                f"KMVM_NONCE={nonce}\nKMVM_CWD={shlex.quote(cwd)}\n"
                f"KMVM_SHARE_CWD={1 if share_cwd else 0}\nKMVM_CWD_CACHE={shlex.quote(cwd_cache)}\n"
            )
            Path(ctl, "cmd.sh").write_text(_guest_script(cmd, cwd, genv))
            qcmd = [
                qemu,
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
                "-name",
                f"kmvm-{topology}",
                *accel_args(acc),
                *topo,
                "-kernel",
                str(gk.image),
                "-initrd",
                str(initrd),
                "-append",
                cmdline,
                "-chardev",
                "stdio,id=con0,signal=off",
                "-serial",
                "chardev:con0",
                "-fsdev",
                "local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device",
                "virtio-9p-pci,fsdev=fsroot,mount_tag=kmvmroot",
                "-fsdev",
                f"local,id=fsctl,path={_qarg(ctl)},security_model=none",
                "-device",
                "virtio-9p-pci,fsdev=fsctl,mount_tag=kmvmctl",
            ]
            if share_cwd:
                qcmd += [
                    "-fsdev",
                    f"local,id=fscwd,path={_qarg(cwd)},security_model=none,multidevs=remap",
                    "-device",
                    "virtio-9p-pci,fsdev=fscwd,mount_tag=kmvmcwd",
                ]
            if QBOOT.exists():
                qcmd += ["-bios", str(QBOOT)]

            t0 = time.monotonic()
            proc = subprocess.Popen(
                qcmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            console: list[str] = [f"# {shlex.join(qcmd)}\n"]
            output: list[str] = []
            boot_s: float | None = None
            rc_reported: int | None = None
            timed_out = False
            state = "boot"  # boot -> run -> done
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            pending = ""
            last_data = time.monotonic()
            sel = selectors.DefaultSelector()
            assert proc.stdout is not None
            os.set_blocking(proc.stdout.fileno(), False)
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = t0 + timeout

            def emit(text: str) -> None:
                output.append(text)
                if out_stream is not None:
                    out_stream.write(text)
                    out_stream.flush()

            def handle_line(line: str) -> None:
                nonlocal state, boot_s, rc_reported
                console.append(line)
                body = line.rstrip("\r\n")
                if state == "boot":
                    if body.endswith(start_marker):
                        state = "run"
                        boot_s = time.monotonic() - t0
                        _log(
                            f"boot {boot_s:.2f}s (qemu start -> guest command start), "
                            f"kernel {gk.name} ({gk.release}), accel {acc}, topology {topology}"
                        )
                    elif body.startswith("KMVM-INIT-FAIL"):
                        _log(f"guest init failed: {body}")
                elif state == "run":
                    m = exit_re.search(body)
                    if m:
                        if m.start():
                            emit(body[: m.start()] + "\n")
                        rc_reported = int(m.group(1))
                        state = "done"
                    else:
                        emit(body + "\n")

            try:
                eof = False
                while not eof:
                    now = time.monotonic()
                    if now >= deadline:
                        timed_out = True
                        break
                    for key, _ in sel.select(timeout=min(0.2, deadline - now)):
                        try:
                            chunk = os.read(key.fd, 65536)
                        except BlockingIOError:
                            continue
                        if not chunk:
                            eof = True
                            break
                        last_data = time.monotonic()
                        pending += decoder.decode(chunk).replace("\r\n", "\n").replace("\r", "")
                        *lines, pending = pending.split("\n")
                        for ln in lines:
                            handle_line(ln + "\n")
                    # flush a partial line (pytest progress dots) once output pauses
                    if (
                        pending
                        and state == "run"
                        and time.monotonic() - last_data > 0.3
                        and not pending.startswith("KMVM-")
                        and not "KMVM-".startswith(pending)
                    ):
                        console.append(pending)
                        emit(pending)
                        pending = ""
                if pending:
                    handle_line(pending)
            finally:  # timeout, or an exception (e.g. KeyboardInterrupt) while reading
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                else:
                    proc.wait()
            sel.close()
            proc.stdout.close()
            wall = time.monotonic() - t0
            if rc_reported is None:
                with contextlib.suppress(OSError, ValueError):
                    rc_reported = int(Path(ctl, "rc").read_text().strip())

        if timed_out:
            rc = EXIT_TIMEOUT
            console.append(f"\n# vmrun: TIMEOUT after {timeout:.0f}s (qemu killed)\n")
            where = "command was running" if state == "run" else "guest never started the command"
            _log(f"timeout after {timeout:.0f}s ({where})")
        elif rc_reported is None:
            rc = EXIT_VM_ERROR
            console.append(
                "\n# vmrun: guest ended without reporting an exit status "
                f"(qemu rc={proc.returncode})\n"
            )
            _log(
                f"guest ended without reporting an exit status (qemu rc={proc.returncode}; "
                "panic or init failure?)"
            )
        else:
            rc = rc_reported
        log_path: Path | None = None
        if rc != 0 or timed_out or keep_log:
            log_path = _save_log("".join(console), log_dir, gk.name, topology)
            _log(f"guest console log: {log_path}")
        return VMResult(
            returncode=rc,
            output="".join(output),
            console="".join(console),
            log_path=log_path,
            boot_seconds=boot_s,
            wall_seconds=wall,
            timed_out=timed_out,
            accel=acc,
            kernel=gk.name,
            kernel_release=gk.release,
            topology=topology,
            status_reported=rc_reported is not None,
        )


# ------------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--topology", default="2node", choices=TOPOLOGIES)
    ap.add_argument(
        "--kernel", default="debian-6.12", help=f"{', '.join(KERNELS)} or a bzImage path"
    )
    ap.add_argument("--mem", help="per-node memory sizes, comma separated (e.g. 2G,2G or 2G,1G,1G)")
    ap.add_argument("--smp", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds (qemu is killed after)")
    ap.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    ap.add_argument("--env", action="append", default=[], metavar="K=V")
    ap.add_argument("--cwd", help="directory to run in and share read-write (default: cwd)")
    ap.add_argument("--no-share-cwd", action="store_true")
    ap.add_argument(
        "--cwd-cache",
        default="loose",
        choices=("loose", "mmap", "none"),
        help="9p cache mode of the read-write cwd share (default loose: the guest is "
        "its only writer while it runs)",
    )
    ap.add_argument(
        "--log-dir", help=f"where console logs of failed runs go (default {DEFAULT_LOG_DIR})"
    )
    ap.add_argument("--keep-log", action="store_true", help="keep the console log even on success")
    ap.add_argument(
        "--verbose-boot", action="store_true", help="full kernel boot messages in the log"
    )
    ap.add_argument("--append", default="", help="extra kernel command line")
    ap.add_argument("--check", action="store_true", help="only report whether a guest can start")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if a.check:
        reason = availability(a.kernel)
        print(reason or "ok")
        return EXIT_UNAVAILABLE if reason else 0
    if not cmd:
        ap.error("no command given (use -- CMD ARGS...)")
    env: dict[str, str] = {}
    for kv in a.env:
        if "=" not in kv:
            ap.error(f"--env needs K=V, got {kv!r}")
        k, v = kv.split("=", 1)
        env[k] = v
    try:
        res = run_in_vm(
            cmd,
            topology=a.topology,
            kernel=a.kernel,
            timeout=a.timeout,
            env=env,
            cwd=a.cwd,
            share_cwd=not a.no_share_cwd,
            mem=a.mem.split(",") if a.mem else None,
            smp=a.smp,
            accel=a.accel,
            log_dir=a.log_dir,
            keep_log=a.keep_log,
            append=a.append,
            quiet_boot=not a.verbose_boot,
            cwd_cache=a.cwd_cache,
        )
    except VMUnavailable as e:
        print(f"vmrun: unavailable: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    _log(f"exit status {res.returncode}, wall {res.wall_seconds:.1f}s")
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
