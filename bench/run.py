"""`make bench`: run every benchmark (C and Python), peers in the same run,
and print one table per workload with each peer's ratio to dispatchkit.

Ratio = peer figure / our figure for costs (ns, us: above 1 means we are
faster) and our figure / peer figure for rates (GB/s, frames/s, ops/s).
"""
import os
import pathlib
import shutil
import statistics
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


C_RUNS = 5  # each C binary runs this many times, alternating; medians


def libdispatch_bench():
    """Build bench/c/dispatch_bench.c against the libdispatch in
    $LIBDISPATCH_DIR (a source tree with its build inside); return the
    binary, or None with the reason printed."""
    src = os.environ.get("LIBDISPATCH_DIR")
    if not src:
        print("# libdispatch column skipped: set LIBDISPATCH_DIR to a "
              "libdispatch source tree with its build inside")
        return None
    src = pathlib.Path(src).resolve()
    libs = sorted(src.glob("**/libdispatch.so"))
    if not (src / "dispatch" / "dispatch.h").exists() or not libs:
        print(f"# libdispatch column skipped: no dispatch/dispatch.h and "
              f"built libdispatch.so under {src}")
        return None
    out = ROOT / "build" / "bench" / "dispatch-bench-libdispatch"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Its headers need clang's __has_feature (GCC 14 has it too).
    cc = os.environ.get("CC") or shutil.which("clang") or "cc"
    libdir = libs[0].parent
    r = subprocess.run([cc, "-O2", "-D_GNU_SOURCE", "-DUSE_LIBDISPATCH",
                        f"-I{src}", str(ROOT / "bench/c/dispatch_bench.c"),
                        "-o", str(out), f"-L{libdir}", "-ldispatch",
                        f"-Wl,-rpath,{libdir}", "-lpthread"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"# libdispatch column skipped: {cc} failed:\n{r.stderr}")
        return None
    return out


def c_figures(binary, scale):
    figures = {}
    for line in run([str(binary), scale]).splitlines():
        name, value = line.split()
        figures[name] = float(value)
    return figures


def c_dispatch(cbench, scale):
    """Our dispatch_bench and libdispatch's, alternating, C_RUNS runs each:
    median ns per row (lower is better) and libdispatch's / ours."""
    print("== C: dispatch_bench (libdispatch _f API over dk, and libdispatch "
          "itself) ==")
    peer = libdispatch_bench()
    runs = {"dispatchkit": [], "libdispatch": []}
    for _ in range(C_RUNS):
        runs["dispatchkit"].append(c_figures(cbench, scale))
        if peer is not None:
            runs["libdispatch"].append(c_figures(peer, scale))
    print(f"  median of {C_RUNS} runs each, alternating; ns")
    print(f"  {'row':<32} {'dispatchkit':>12} {'libdispatch':>12}")
    for name in runs["dispatchkit"][0]:
        ours = statistics.median(r[name] for r in runs["dispatchkit"]
                                 if name in r)
        theirs = [r[name] for r in runs["libdispatch"] if name in r]
        if not theirs:
            print(f"  {name:<32} {ours:>12.1f} {'skipped':>12}")
            continue
        theirs = statistics.median(theirs)
        ratio = theirs / ours if ours else float("inf")
        print(f"  {name:<32} {ours:>12.1f} {theirs:>12.1f}  x{ratio:.2f} "
              f"{'faster' if ratio >= 1 else 'slower'} for dispatchkit")


def main():
    scale = os.environ.get("DK_BENCH_SCALE", "1")
    cbench = ROOT / "build" / "c" / "dispatch-bench"
    if cbench.exists():
        c_dispatch(cbench, scale)
    for script in sorted((ROOT / "bench" / "python").glob("bench_*.py")):
        out = run([sys.executable, str(script), scale])
        table(out.splitlines(), script.stem)


if __name__ == "__main__":
    main()
