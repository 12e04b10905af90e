"""The move pipeline and the idle sampler, before a restructuring and after, measured
alternately in one guest boot.

    python3 benchmarks/ab/restructure.py [--base REV] [--reps N]

The host installs the wheel of ``--base`` (default 1b7e92a, the checkout before the
restructuring into demotion/, damon/, config/, shim/ and the sampler parts) into a venv
of its own (~/.cache/kmigratedd-ab/REV/), next to the test venv of this checkout
(tests/setup.sh), and compiles each tree's workload.  Then one guest boot (the kernel
with idle page tracking) runs, ``--reps`` times and alternating which goes first, each
tree's own benchmark scripts with its own venv:

- pipeline: benchmarks/guest/throughput.py's pipeline section: 64 MiB of candidates
  pushed into the queues and promoted by the router and a real node worker, against raw
  batched move_pages of as many pages; the figure is the pipeline's pages/s over raw's
  in the same repetition (the emulator's speed drifts by more than the effect);
- idle: benchmarks/idle_scan.py (fresh layout): CPU seconds per GiB of one
  ``IdleSampler.scan_round()`` over just reading pagemap and the bitmap, in the same
  repetition.

It prints the medians (min-max) of both and the ratio after/before, and writes
benchmarks/results/ab-restructure.md.  TCG: only the ratios mean anything.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
STATE = Path(os.environ.get("KMIGRATEDD_AB_HOME", Path.home() / ".cache" / "kmigratedd-ab"))


def base_tree(rev: str) -> tuple[Path, Path]:
    """(source tree, venv python) of ``rev``, built once."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", rev],
                         capture_output=True, text=True, check=True).stdout.strip()
    home = STATE / sha
    tree, venv = home / "src", home / "venv"
    py = venv / "bin" / "python"
    if not (home / ".done").exists():
        shutil.rmtree(home, ignore_errors=True)
        tree.mkdir(parents=True)
        data = subprocess.run(["git", "-C", str(REPO), "archive", sha], capture_output=True,
                              check=True).stdout
        tarfile.open(fileobj=io.BytesIO(data)).extractall(tree)
        print(f"ab: building {rev} ({sha}) into {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        str(tree)], check=True)
        (home / ".done").write_text(sha + "\n")
    return tree, py


def build_workload(tree: Path, py: Path) -> None:
    """Compile the tree's workload on the host (the guest sees the trees read-only)."""
    code = ("import sys; sys.path.insert(0, 'tests/vm/guest'); import workload; "
            "print(workload.binary())")
    subprocess.run([str(py), "-P", "-c", code], cwd=tree, check=True, capture_output=True)


def summary(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})" if xs else "-"


def main() -> int:
    if os.environ.get("KMIGRATEDD_IN_VM") == "1":
        return guest()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="1b7e92a")
    ap.add_argument("--reps", type=int, default=4)
    a = ap.parse_args()
    import common

    common.ensure_venv()
    old_tree, old_py = base_tree(a.base)
    new_tree, new_py = REPO, common.VENV_PY
    for tree, py in ((old_tree, old_py), (new_tree, new_py)):
        build_workload(tree, py)
    os.environ.setdefault("KMIGRATEDD_VM_TCG_THREAD", "multi")
    print(f"== ab: {a.base} against this checkout, {a.reps} repetitions in one boot "
          "(kernel idle; qemu TCG) ==", flush=True)
    cmd = [str(new_py), str(Path(__file__).resolve()), "--reps", str(a.reps),
           "--side", f"before={old_tree}={old_py}", "--side", f"after={new_tree}={new_py}"]
    res = common.vmrun.run_in_vm(cmd, topology="2node", kernel="idle", timeout=5400,
                                 cwd=str(REPO), stream=sys.stdout)
    line = next((ln for ln in res.output.splitlines() if ln.startswith("AB-RESULT ")), None)
    if res.returncode != 0 or line is None:
        print(f"ab: the guest run failed (exit {res.returncode}); console log {res.log_path}",
              file=sys.stderr)
        return 1
    r = json.loads(line[len("AB-RESULT "):])
    rows = []
    for what, key, better in (("pipeline pages/s over raw move_pages pages/s", "pipeline",
                               "higher"),
                              ("idle scan CPU s/GiB over raw pagemap + bitmap read", "idle",
                               "lower")):
        b, f = r["before"][key], r["after"][key]
        ratio = statistics.median(f) / statistics.median(b) if b and f else float("nan")
        rows.append(f"| {what} | {summary(b)} | {summary(f)} | {ratio:.3f} | {better} |")
    command = f"python3 benchmarks/ab/restructure.py --base {a.base} --reps {a.reps}"
    text = ("# Before and after the restructuring: pipeline and idle sampler cost\n\n"
            f"Command: `{command}` ({r['date']}, guest kernel {r['kernel']}, {r['cpus']} "
            "vCPUs; host: 2 cores, no KVM). " + common.TCG_CAVEAT + "\n\n"
            f"Both measured alternately in one guest boot, {a.reps} repetitions each; each "
            "figure is a ratio within one repetition (median, min-max).\n\n"
            "| measure | before | after | after/before | better |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
    print("\n" + text)
    common.write_result("ab-restructure.md", text)
    return 0


def run_side(tree: Path, py: Path, tmp: Path, tag: str) -> tuple[float | None, float | None]:
    """One repetition of one side: (pipeline/raw ratio, idle sampler/raw CPU ratio)."""
    out = tmp / f"{tag}.json"
    # Each script finds its helpers beside it (sys.path[0]); kmigratedd comes from the venv.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    p = subprocess.run([str(py), str(tree / "benchmarks/guest/throughput.py"), "--out", str(out),
                        "--skip", "moves,idle", "--pipeline-reps", "1", "--backlog-mib", "0"],
                       env=env, capture_output=True, text=True, timeout=1200)
    pipe = None
    if p.returncode == 0 and out.exists():
        ratio = json.loads(out.read_text()).get("pipeline", {}).get("ratio")
        pipe = ratio["median"] if isinstance(ratio, dict) else ratio
    else:
        print(f"  {tag} pipeline failed: {p.stdout[-400:]} {p.stderr[-800:]}", flush=True)
    q = subprocess.run([str(py), str(tree / "benchmarks/idle_scan.py"), "--layouts", "fresh",
                        "--repeat", "3"], env=env, capture_output=True, text=True,
                       timeout=1200)
    idle = None
    for ln in q.stdout.splitlines():
        if ln.startswith("fresh: ") and "; {" in ln:
            idle = ast.literal_eval(ln[ln.index("; {") + 2:])["ratio_raw"]
    if idle is None:
        print(f"  {tag} idle failed: {q.stdout[-400:]} {q.stderr[-800:]}", flush=True)
    return pipe, idle


def guest() -> int:
    import platform
    import tempfile
    import time

    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--side", action="append", default=[])
    a = ap.parse_args()
    sides = [s.split("=", 2) for s in a.side]
    result: dict[str, object] = {"date": time.strftime("%Y-%m-%d %H:%M"),
                                 "kernel": platform.release(), "cpus": os.cpu_count()}
    got = {name: {"pipeline": [], "idle": []} for name, _, _ in sides}
    tmp = Path(tempfile.mkdtemp())
    for rep in range(a.reps):
        order = sides if rep % 2 == 0 else sides[::-1]
        for name, tree, py in order:
            pipe, idle = run_side(Path(tree), Path(py), tmp, f"{name}{rep}")
            if pipe is not None:
                got[name]["pipeline"].append(pipe)
            if idle is not None:
                got[name]["idle"].append(idle)
            print(f"rep {rep + 1}/{a.reps} {name}: pipeline/raw {pipe}, idle sampler/raw {idle}",
                  flush=True)
    result.update(got)
    print("AB-RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
