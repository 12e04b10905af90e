"""Soak: an hour of exchange churn in the tiered guest, with the daemon's RSS, open file
descriptors and threads sampled every minute (benchmarks/guest/soak.py says how).

    python3 benchmarks/soak.py [--minutes 60]

Writes benchmarks/results/soak.md (first minute against the last, and every tenth) and
the raw samples in benchmarks/results/raw/soak.json.  A benchmark, not a test: it takes
the hour it measures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import common


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=int, default=60)
    ap.add_argument("--rotate-s", type=float, default=180)
    a = ap.parse_args()
    common.ensure_venv()
    out = common.RAW / "soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = f"python3 benchmarks/soak.py --minutes {a.minutes} --rotate-s {a.rotate_s:g}"
    common.run_guest("soak.py", ["--out", str(out), "--minutes", str(a.minutes),
                                 "--rotate-s", str(a.rotate_s)],
                     timeout=a.minutes * 60 + 1800, title="soak",
                     mem=["4608M", "2048M"])
    data = json.loads(out.read_text())
    rows = data["rows"]
    first, last = rows[1] if len(rows) > 1 else rows[0], rows[-1]
    lines = [f"| {r['minute']} | {r['rss_kib'] / 1024:.1f} | {r['fds']} | {r['threads']} | "
             f"{r['cpu_s']:.0f} | {r['promoted']:.0f} |"
             for r in rows if r["minute"] % 10 == 0 or r is first or r is last]
    host = common.host_info()
    text = (f"# Soak: {a.minutes} minutes of exchange churn\n\n"
            f"Command: `{command}` ({time.strftime('%Y-%m-%d')}; host {host['cpu']}, "
            f"{host['cores']} cores, no KVM; guest kernel {data['guest']['kernel_release']}). "
            + common.TCG_CAVEAT + "\n\n"
            "Node 0 (4.5 GiB) held by cold processes down to 120 MiB free; every "
            f"{a.rotate_s:g} s a new workload with a 256 MiB hot set (Zipf 0.99) on node 1 "
            "replaces the last, and node 0 is topped up again: an exchange on a full fast "
            f"tier each time ({rows[-1].get('cycles', 0)} in the run); kmigratedd on its "
            "embedded default config.  Every process's data verified: "
            f"{'OK' if data['verify'] else 'FAILED'}.\n\n"
            f"**RSS minute {first['minute']} → {last['minute']}: "
            f"{first['rss_kib'] / 1024:.1f} → {last['rss_kib'] / 1024:.1f} MiB; fds "
            f"{first['fds']} → {last['fds']}; threads {first['threads']} → "
            f"{last['threads']}.**\n\n"
            "| minute | RSS MiB | open fds | threads | CPU s | pages promoted |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")
    print("\n" + text)
    common.write_result("soak.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
