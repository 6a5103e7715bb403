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


def main() -> None:
    scale = os.environ.get("DK_BENCH_SCALE", "1")
    start = time.monotonic()
    cbench = ROOT / "build" / "c" / "dispatch-bench"
    if cbench.exists():
        say("== C: dispatch_bench (libdispatch _f API over dk) ==")
        say("# libdispatch itself is not packaged for this machine's "
            "Debian; targets from the issue are shown instead")
        targets = {"serial_async": 150, "concurrent_group_async": 250,
                   "apply": 20, "after_1ms_lateness_p99": 100000}
        for line in stream([str(cbench), scale]):
            fields = line.split()
            if len(fields) != 2:
                continue
            name, value = fields
            t = targets.get(name)
            note = f"  (target <= {t})" if t else ""
            say(f"  {name:<32} {float(value):>12.1f} ns{note}")
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
