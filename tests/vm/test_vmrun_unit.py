"""Host side, no guest boot: pieces of the launcher."""

from __future__ import annotations

import glob
import gzip
import shutil
import subprocess
from pathlib import Path

import pytest
import vmrun


def test_topology_2node_args() -> None:
    a = " ".join(vmrun.topology_args("2node"))
    assert "hmat=on" in a
    assert "node,nodeid=0,cpus=0-1,memdev=mem0" in a
    assert "node,nodeid=1,memdev=mem1,initiator=0" in a
    assert "dist,src=0,dst=1,val=20" in a
    assert "target=1,hierarchy=memory,data-type=access-latency,latency=240" in a
    assert "target=0,hierarchy=memory,data-type=access-latency,latency=80" in a
    assert "-m 4096M" in a


def test_topology_3node_and_sizes() -> None:
    a = vmrun.topology_args("3node", ["1G", "512M", "256M"])
    s = " ".join(a)
    assert "-m 1792M" in s and "size=256M" in s and "node,nodeid=2,memdev=mem2,initiator=0" in s
    # both slow nodes are nearer to node 0 than to each other
    assert "dist,src=0,dst=2,val=24" in s and "dist,src=1,dst=2,val=40" in s
    with pytest.raises(ValueError):
        vmrun.topology_args("3node", ["1G", "1G"])
    with pytest.raises(ValueError):
        vmrun.topology_args("4node")


def test_guest_script_quoting() -> None:
    s = vmrun._guest_script(["python3", "-c", "print('a b')"], "/tmp/x y", {"K": "v w"})
    assert (
        "export K='v w'" in s
        and "cd '/tmp/x y'" in s
        and """exec python3 -c 'print('"'"'a b'"'"')'""" in s
    )
    with pytest.raises(ValueError):
        vmrun._guest_script(["true"], "/", {"BAD-NAME": "1"})


@pytest.mark.parametrize("pattern", ["/lib/modules/6.12*-amd64", "/lib/modules/6.1.0-*[0-9]-amd64"])
def test_module_order_dependencies_first(pattern: str) -> None:
    dirs = sorted(d for d in glob.glob(pattern) if Path(d, "modules.dep").exists())
    if not dirs:
        pytest.skip(f"no {pattern}")
    order = [n for n, _ in vmrun.module_load_order(Path(dirs[-1]))]
    assert order.index("9pnet") < order.index("9pnet_virtio") < order.index("9p")
    assert "overlay" in order
    if "netfs" in order:
        assert order.index("netfs") < order.index("9p")
    if "virtio_pci" in order:  # Debian 6.1 builds virtio as modules
        assert order.index("virtio") < order.index("virtio_pci") < order.index("9pnet_virtio")
        assert order.index("virtio_ring") < order.index("virtio_pci")


def test_cpio_is_valid(tmp_path: Path) -> None:
    if not shutil.which("cpio"):
        pytest.skip("no cpio tool")
    c = vmrun._Cpio()
    c.dir("bin")
    c.file("bin/hello", b"hi\n", 0o755)
    c.symlink("bin/sh", "hello")
    c.chardev("dev-console", 5, 1)
    data = c.finish()
    p = subprocess.run(["cpio", "-t", "-v"], input=data, check=False, capture_output=True)
    listing = p.stdout.decode()
    assert p.returncode == 0, p.stderr
    assert "bin/hello" in listing and "bin/sh -> hello" in listing and "dev-console" in listing
    assert listing.splitlines()[-1].startswith("c")


def test_initramfs_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        gk = vmrun.resolve_kernel("debian-6.12", build=False)
        vmrun.find_busybox()
    except vmrun.VMUnavailable as e:
        pytest.skip(str(e))
    monkeypatch.setattr(vmrun, "CACHE_ROOT", tmp_path)
    a = vmrun.build_initramfs(gk)
    mtime = a.stat().st_mtime_ns
    b = vmrun.build_initramfs(gk)
    assert a == b and b.stat().st_mtime_ns == mtime
    assert gk.release in a.name
    p = subprocess.run(
        ["cpio", "-t"], input=gzip.decompress(a.read_bytes()), check=False, capture_output=True
    )
    names = p.stdout.decode().split()
    assert "init" in names and "bin/busybox" in names and "dev/console" in names
    assert any(n.endswith("-9p.ko") for n in names)


def test_guests_at_once_follow_the_xdist_workers(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Under pytest-xdist each worker may hold a guest slot; a third guest waits for one."""
    import threading

    monkeypatch.setattr(vmrun, "CACHE_ROOT", tmp_path)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    assert vmrun.vm_slots() == 2
    third_in = threading.Event()

    def third() -> None:
        with vmrun._vm_lock():
            third_in.set()

    with vmrun._vm_lock(), vmrun._vm_lock():
        t = threading.Thread(target=third)
        t.start()
        assert not third_in.wait(2.5)
    assert third_in.wait(10)
    t.join()
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "x")
    assert vmrun.vm_slots() == 1
