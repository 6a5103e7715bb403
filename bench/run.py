"""`make bench`: run every benchmark (C and Python), peers in the same run,
and print one table per workload with each peer's ratio to dispatchkit.

Ratio = peer figure / our figure for costs (ns, us: above 1 means we are
faster) and our figure / peer figure for rates (GB/s, frames/s, ops/s).
"""
import os
import pathlib
import subprocess
import sys
from collections import OrderedDict

ROOT = pathlib.Path(__file__).resolve().parent.parent
RATE_UNITS = ("/s",)


def run(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                           timeout=900)
    except subprocess.TimeoutExpired as e:
        print(f"# {' '.join(map(str, cmd))} timed out after 900 s",
              file=sys.stderr)
        out = e.stdout or b""
        return out.decode() if isinstance(out, bytes) else out
    if r.returncode != 0:
        print(f"# {' '.join(map(str, cmd))} failed:\n{r.stderr}",
              file=sys.stderr)
    return r.stdout


def table(lines, title):
    rows = OrderedDict()
    for line in lines:
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 4:
            continue
        workload, impl, value, unit = parts
        if value == "failed":  # unit holds the reason
            rows.setdefault(workload, []).append((impl, None, unit))
            continue
        rows.setdefault(workload, []).append((impl, float(value), unit))
    print(f"\n== {title} ==")
    for workload, entries in rows.items():
        ours = next((v for i, v, _ in entries if i == "dispatchkit"), None)
        print(f"{workload}")
        for impl, value, unit in entries:
            if value is None:
                print(f"  {impl:<40} {'FAILED':>14} {unit}")
                continue
            ratio = ""
            if ours and impl != "dispatchkit" and value:
                is_rate = unit.endswith(RATE_UNITS)
                r = ours / value if is_rate else value / ours
                ratio = f"  x{r:.2f} {'faster' if r >= 1 else 'slower'}" \
                        " for dispatchkit"
            print(f"  {impl:<40} {value:>14.1f} {unit}{ratio}")


def main():
    scale = os.environ.get("DK_BENCH_SCALE", "1")
    cbench = ROOT / "build" / "c" / "dispatch-bench"
    if cbench.exists():
        print("== C: dispatch_bench (libdispatch _f API over dk) ==")
        print("# libdispatch itself is not packaged for this machine's "
              "Debian; targets from the issue are shown instead")
        targets = {"serial_async": 150, "concurrent_group_async": 250,
                   "apply": 20, "after_1ms_lateness_p99": 100000}
        for line in run([str(cbench), scale]).splitlines():
            name, value = line.split()
            t = targets.get(name)
            note = f"  (target <= {t})" if t else ""
            unit = "ns"
            print(f"  {name:<32} {float(value):>12.1f} {unit}{note}")
    for script in sorted((ROOT / "bench" / "python").glob("bench_*.py")):
        out = run([sys.executable, str(script), scale])
        table(out.splitlines(), script.stem)


if __name__ == "__main__":
    main()
