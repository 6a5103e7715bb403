"""`make bench`: run every benchmark (C and Python), peers in the same run,
and print each figure as soon as it is measured, with each peer's ratio to
dispatchkit.

Ratio = peer figure / our figure for costs (ns, us: above 1 means we are
faster) and our figure / peer figure for rates (GB/s, frames/s, ops/s).
A peer measured before dispatchkit in the same workload gets its ratio on
a line of its own once dispatchkit's figure is in.
"""
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
        self.rows: Dict[str, List[Tuple[str, Optional[float], str]]] = {}
        self.waiting: Dict[str, List[Tuple[str, float, str]]] = {}
        self.current: Optional[str] = None
        self.interleaved = False

    def ours(self, workload: str) -> Optional[float]:
        return next((v for i, v, _ in self.rows.get(workload, [])
                     if i == "dispatchkit"), None)

    def row(self, line: str) -> None:
        parts = line.rstrip("\n").split("\t")
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
    say(f"  median of {C_RUNS} runs each, alternating; ns")
    say(f"  {'row':<32} {'dispatchkit':>12} {'libdispatch':>12}")
    for name in runs["dispatchkit"][0]:
        ours = statistics.median(r[name] for r in runs["dispatchkit"]
                                 if name in r)
        theirs = [r[name] for r in runs["libdispatch"] if name in r]
        if not theirs:
            say(f"  {name:<32} {ours:>12.1f} {'skipped':>12}")
            continue
        theirs = statistics.median(theirs)
        ratio = theirs / ours if ours else float("inf")
        say(f"  {name:<32} {ours:>12.1f} {theirs:>12.1f}  x{ratio:.2f} "
              f"{'faster' if ratio >= 1 else 'slower'} for dispatchkit")


def main() -> None:
    scale = os.environ.get("DK_BENCH_SCALE", "1")
    start = time.monotonic()
    cbench = ROOT / "build" / "c" / "dispatch-bench"
    if cbench.exists():
        c_dispatch(cbench, scale)
    for script in sorted((ROOT / "bench" / "python").glob("bench_*.py")):
        t0 = time.monotonic()
        say(f"\n== {script.stem} ==")
        table = Table()
        for line in stream([sys.executable, str(script), scale]):
            table.row(line)
        table.finish(script.stem)
        say(f"# {script.stem}: {time.monotonic() - t0:.0f} s")
    say(f"\n# make bench: {time.monotonic() - start:.0f} s in all")


if __name__ == "__main__":
    main()
