"""`make bench`: run every benchmark (C and Python), peers in the same run,
and print each figure as soon as it is measured, with each peer's ratio to
dispatchkit.

Ratio = peer figure / our figure for costs (ns, us: above 1 means we are
faster) and our figure / peer figure for rates (GB/s, frames/s, ops/s).
A peer measured before dispatchkit in the same workload gets its ratio on
a line of its own once dispatchkit's figure is in.
"""
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, Iterator, List, Optional, Tuple

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "bench"
RATE_UNITS = ("/s",)
SCRIPT_TIMEOUT = 900.0


def say(text: str = "") -> None:
    print(text, flush=True)


def stream(cmd: List[str]) -> Iterator[str]:
    """The lines cmd prints to stdout, each as soon as it is printed. A
    script that fails or outlives SCRIPT_TIMEOUT is reported with its
    stderr; the rows it printed before stay printed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    timed_out = threading.Event()
    with tempfile.TemporaryFile(mode="w+") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                             text=True, cwd=ROOT, env=env)

        def kill() -> None:
            timed_out.set()
            p.kill()

        watchdog = threading.Timer(SCRIPT_TIMEOUT, kill)
        watchdog.start()
        try:
            assert p.stdout is not None
            for line in p.stdout:
                yield line
            p.wait()
        finally:
            watchdog.cancel()
            if p.poll() is None:
                p.kill()
                p.wait()
        name = " ".join(map(str, cmd))
        if timed_out.is_set():
            say(f"# {name} timed out after {SCRIPT_TIMEOUT:.0f} s")
        elif p.returncode != 0:
            err.seek(0)
            say(f"# {name} failed (exit status {p.returncode}):\n"
                f"{err.read()}")


def ratio_text(ours: float, value: float, unit: str) -> str:
    if not ours or not value:
        return ""
    is_rate = unit.endswith(RATE_UNITS)
    r = ours / value if is_rate else value / ours
    return f"  x{r:.2f} {'faster' if r >= 1 else 'slower'} for dispatchkit"


def row_text(impl: str, value: Optional[float], unit: str,
             ours: Optional[float]) -> str:
    if value is None:  # a failed run: unit holds the reason
        return f"  {impl:<40} {'FAILED':>14} {unit}"
    ratio = ""
    if ours is not None and impl != "dispatchkit":
        ratio = ratio_text(ours, value, unit)
    return f"  {impl:<40} {value:>14.1f} {unit}{ratio}"


class Table:
    """Rows of one script, printed as they arrive. A script that measures
    several workloads in turn (p50 and p99, rate and bandwidth) gets its
    rows grouped by workload again at its end."""

    def __init__(self) -> None:
        self.curves: Dict[str, Dict[str, object]] = {}
        self.rows: Dict[str, List[Tuple[str, Optional[float], str]]] = {}
        self.waiting: Dict[str, List[Tuple[str, float, str]]] = {}
        self.current: Optional[str] = None
        self.interleaved = False

    def ours(self, workload: str) -> Optional[float]:
        return next((v for i, v, _ in self.rows.get(workload, [])
                     if i == "dispatchkit"), None)

    def point(self, parts: List[str]) -> None:
        """A curve's point: curve, name, implementation, x, value, unit."""
        _, name, impl, x, value, unit = parts
        curve = self.curves.setdefault(name, {"unit": unit, "series": {}})
        series = curve["series"]
        assert isinstance(series, dict)
        series.setdefault(impl, []).append([float(x), float(value)])
        if name != self.current:
            say(f"{name} ({unit})")
            self.current = name
        say(f"  {impl:<40} {x:>10} {float(value):>14.4g}")

    def row(self, line: str) -> None:
        parts = line.rstrip("\n").split("\t")
        if len(parts) == 6 and parts[0] == "curve":
            self.point(parts)
            return
        if len(parts) != 4:
            return
        workload, impl, value, unit = parts
        if workload != self.current:
            self.interleaved |= workload in self.rows
            say(workload)
            self.current = workload
        v = None if value == "failed" else float(value)
        self.rows.setdefault(workload, []).append((impl, v, unit))
        ours = self.ours(workload)
        say(row_text(impl, v, unit, ours))
        if v is None:
            return
        if impl == "dispatchkit":
            for peer, pv, pu in self.waiting.pop(workload, []):
                say(f"  {'  ' + peer + ' (above)':<40} {'':>14} "
                    f"{ratio_text(v, pv, pu).strip()}")
        elif ours is None:
            self.waiting.setdefault(workload, []).append((impl, v, unit))

    def finish(self, title: str) -> None:
        if not self.interleaved:
            return
        say(f"-- {title}, by workload --")
        for workload, entries in self.rows.items():
            say(workload)
            ours = self.ours(workload)
            for impl, value, unit in entries:
                say(row_text(impl, value, unit, ours))


C_RUNS = 5  # each C binary runs this many times, alternating; medians


def libdispatch_bench():
    """Build bench/c/dispatch_bench.c against the libdispatch in
    $LIBDISPATCH_DIR (a source tree with its build inside); return the
    binary, or None with the reason printed."""
    src = os.environ.get("LIBDISPATCH_DIR")
    if not src:
        say("# libdispatch column skipped: set LIBDISPATCH_DIR to a "
              "libdispatch source tree with its build inside")
        return None
    src = pathlib.Path(src).resolve()
    libs = sorted(src.glob("**/libdispatch.so"))
    if not (src / "dispatch" / "dispatch.h").exists() or not libs:
        say(f"# libdispatch column skipped: no dispatch/dispatch.h and "
              f"built libdispatch.so under {src}")
        return None
    out = OUT / "dispatch-bench-libdispatch"
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
        say(f"# libdispatch column skipped: {cc} failed:\n{r.stderr}")
        return None
    return out


def c_figures(binary: pathlib.Path, scale: str) -> Dict[str, float]:
    figures = {}
    for line in stream([str(binary), scale]):
        fields = line.split()
        if len(fields) == 2:
            figures[fields[0]] = float(fields[1])
    return figures


def c_dispatch(cbench, scale):
    """Our dispatch_bench and libdispatch's, alternating, C_RUNS runs each:
    median ns per row (lower is better) and libdispatch's / ours."""
    say("== C: dispatch_bench (libdispatch _f API over dk, and libdispatch "
          "itself) ==")
    peer = libdispatch_bench()
    runs = {"dispatchkit": [], "libdispatch": []}
    for _ in range(C_RUNS):
        runs["dispatchkit"].append(c_figures(cbench, scale))
        if peer is not None:
            runs["libdispatch"].append(c_figures(peer, scale))
    results: Dict[str, Dict[str, float]] = {}
    say(f"  median of {C_RUNS} runs each, alternating; ns")
    say(f"  {'row':<32} {'dispatchkit':>12} {'libdispatch':>12}")
    for name in runs["dispatchkit"][0]:
        ours = statistics.median(r[name] for r in runs["dispatchkit"]
                                 if name in r)
        theirs = [r[name] for r in runs["libdispatch"] if name in r]
        results[name] = {"dispatchkit": ours}
        if not theirs:
            say(f"  {name:<32} {ours:>12.1f} {'skipped':>12}")
            continue
        theirs = statistics.median(theirs)
        results[name]["libdispatch"] = theirs
        ratio = theirs / ours if ours else float("inf")
        say(f"  {name:<32} {ours:>12.1f} {theirs:>12.1f}  x{ratio:.2f} "
              f"{'faster' if ratio >= 1 else 'slower'} for dispatchkit")
    return results


def save(results: Dict[str, object]) -> pathlib.Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "results.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def draw(curves: Dict[str, Dict[str, object]], when: str) -> None:
    """One PNG per curve under build/bench/, and all of them on one page
    (build/bench/curves.png). Skipped, with the reason, without
    matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        say(f"# charts skipped: {e} (pip install -r requirements-bench.txt)")
        return
    titles = {
        "dispatch_vs_queues": "Dispatch: 100k blocks over N serial queues",
        "dispatch_vs_pending": "Dispatch: N blocks pending on one queue",
        "timer_vs_armed": "Timers: arm+cancel with N timers armed",
        "zerobuffer_vs_frame_size": "zerobuffer: throughput by frame size",
        "zerobuffer_time_per_frame_vs_frame_size":
            "zerobuffer: time per frame by frame size",
        "mutex_vs_processes": "sync.Mutex: N processes, empty loop",
    }
    xlabels = {"dispatch_vs_queues": "queues", "dispatch_vs_pending":
               "pending blocks", "timer_vs_armed": "armed timers",
               "zerobuffer_vs_frame_size": "frame size (bytes)",
               "zerobuffer_time_per_frame_vs_frame_size":
                   "frame size (bytes)",
               "mutex_vs_processes": "processes"}

    def plot(ax, name: str, curve: Dict[str, object]) -> None:
        series = curve["series"]
        assert isinstance(series, dict)
        for impl, pts in series.items():
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o",
                    linewidth=2.5 if impl == "dispatchkit" else 1.5,
                    label=impl)
        if name != "mutex_vs_processes":
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(titles.get(name, name), fontsize=10)
        ax.set_xlabel(xlabels.get(name, "x"))
        ax.set_ylabel(str(curve["unit"]) +
                      (" (higher is better)" if str(curve["unit"]).endswith(
                          RATE_UNITS) else " (lower is better)"))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)

    for name, curve in curves.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        plot(ax, name, curve)
        fig.tight_layout()
        fig.savefig(OUT / f"{name}.png", dpi=100)
        plt.close(fig)
    if curves:
        cols = 2
        rows = (len(curves) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(12, 4 * rows),
                                 squeeze=False)
        for ax, (name, curve) in zip(axes.flat, curves.items()):
            plot(ax, name, curve)
        for ax in list(axes.flat)[len(curves):]:
            ax.axis("off")
        fig.suptitle(f"dispatchkit beside its peers, make bench, {when}",
                     fontsize=12)
        fig.tight_layout()
        fig.savefig(OUT / "curves.png", dpi=90)
        plt.close(fig)
        say(f"# charts: {OUT / 'curves.png'} and one PNG per curve")


def main() -> None:
    scale = os.environ.get("DK_BENCH_SCALE", "1")
    only = os.environ.get("DK_BENCH_ONLY")  # e.g. "curves": bench_curves.py
    start = time.monotonic()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results: Dict[str, object] = {"when": when, "scale": scale,
                                  "load": os.getloadavg()}
    cbench = ROOT / "build" / "c" / "dispatch-bench"
    if cbench.exists() and not only:
        results["c_dispatch_bench_ns"] = c_dispatch(cbench, scale)
    rows: Dict[str, object] = {}
    curves: Dict[str, Dict[str, object]] = {}
    for script in sorted((ROOT / "bench" / "python").glob("bench_*.py")):
        if only and script.stem != f"bench_{only}":
            continue
        t0 = time.monotonic()
        say(f"\n== {script.stem} ==")
        table = Table()
        for line in stream([sys.executable, str(script), scale]):
            table.row(line)
        table.finish(script.stem)
        rows[script.stem] = {w: [{"impl": i, "value": v, "unit": u}
                                 for i, v, u in entries]
                             for w, entries in table.rows.items()}
        curves.update(table.curves)
        say(f"# {script.stem}: {time.monotonic() - t0:.0f} s")
    results["rows"] = rows
    results["curves"] = curves
    say(f"\n# figures: {save(results)}")
    draw(curves, when)
    say(f"\n# make bench: {time.monotonic() - start:.0f} s in all")


if __name__ == "__main__":
    main()
