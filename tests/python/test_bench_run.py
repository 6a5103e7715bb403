"""bench/run.py (`make bench`) shows each figure as soon as a benchmark
measures it, instead of one table per script at its end, and still
reports failed and hung scripts. Driven with small stand-in benchmark
scripts in real processes."""
import importlib.util
import pathlib
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_run():
    spec = importlib.util.spec_from_file_location("bench_run",
                                                  ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script(tmp_path, body):
    path = tmp_path / "bench_fake.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def test_rows_arrive_while_the_benchmark_still_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # as a user's shell
    run = load_run()
    gate = tmp_path / "gate"
    # The stand-in prints a row with print() (no flush), then waits until
    # the test has seen it: a runner that reads only at exit, or a child
    # whose stdout is block-buffered into the pipe, never lets it go on.
    cmd = script(tmp_path, f"""
        import os, time
        print("w\\tdispatchkit\\t1.0\\tns/op")
        deadline = time.monotonic() + 60
        while not os.path.exists({str(gate)!r}):
            assert time.monotonic() < deadline, "row never seen"
            time.sleep(0.01)
        print("w\\tpeer\\t3.0\\tns/op")
    """)
    lines = []
    for line in run.stream(cmd):
        lines.append(line)
        gate.touch()
    assert lines == ["w\tdispatchkit\t1.0\tns/op\n", "w\tpeer\t3.0\tns/op\n"]


def test_table_prints_each_row_with_its_ratio(capsys):
    run = load_run()
    table = run.Table()
    table.row("lat\tpeer\t30.0\tns/op\n")
    first = capsys.readouterr().out
    assert first.splitlines() == ["lat", f"  {'peer':<40} {30.0:>14.1f} ns/op"]
    table.row("lat\tdispatchkit\t10.0\tns/op\n")
    table.row("rate\tdispatchkit\t5.0\tGB/s\n")
    table.row("rate\tpeer\t2.5\tGB/s\n")
    table.row("rate\tbroken peer\tfailed\tit hung\n")
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["dispatchkit", "10.0", "ns/op"]
    assert "peer (above)" in out[1] and "x3.00 faster" in out[1]
    assert out[2] == "rate"
    assert "x2.00 faster for dispatchkit" in out[4]
    assert "FAILED" in out[5] and "it hung" in out[5]
    table.finish("fake")  # one workload after the other: no regrouping
    assert capsys.readouterr().out == ""


def test_interleaved_workloads_are_grouped_at_the_end(capsys):
    run = load_run()
    table = run.Table()
    for line in ["p50\tdispatchkit\t2.0\tus", "p99\tdispatchkit\t8.0\tus",
                 "p50\tpeer\t4.0\tus", "p99\tpeer\t4.0\tus"]:
        table.row(line)
    streamed = capsys.readouterr().out.splitlines()
    assert streamed[0::2] == ["p50", "p99", "p50", "p99"]
    assert "x2.00 faster" in streamed[5] and "x0.50 slower" in streamed[7]
    table.finish("fake")
    grouped = capsys.readouterr().out.splitlines()
    assert grouped[0] == "-- fake, by workload --"
    assert [g for g in grouped if not g.startswith(" ")][1:] == ["p50", "p99"]
    assert grouped[1:4] == ["p50", streamed[1], streamed[5]]


def test_failed_and_hung_scripts_are_reported(tmp_path, capsys, monkeypatch):
    run = load_run()
    cmd = script(tmp_path, """
        import sys
        print("w\\tdispatchkit\\t1.0\\tns/op")
        sys.exit("the benchmark broke")
    """)
    assert list(run.stream(cmd)) == ["w\tdispatchkit\t1.0\tns/op\n"]
    out = capsys.readouterr().out
    assert "failed (exit status 1)" in out and "the benchmark broke" in out

    monkeypatch.setattr(run, "SCRIPT_TIMEOUT", 1.0)
    cmd = script(tmp_path, """
        import time
        print("w\\tdispatchkit\\t1.0\\tns/op")
        time.sleep(120)
    """)
    assert list(run.stream(cmd)) == ["w\tdispatchkit\t1.0\tns/op\n"]
    assert "timed out after 1 s" in capsys.readouterr().out
