"""Expected failures explain themselves: every xfail names the peer's
defect in its reason, and the reason is printed by a plain run of the
suite, with the addopts that make test passes."""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_xfail_has_a_reason_naming_a_defect():
    found = 0
    for path in sorted((ROOT / "tests" / "python").glob("test_*.py")):
        text = path.read_text()
        for m in re.finditer(r"pytest\.mark\.xfail\((.*?)\)\n(?:@|def )",
                             text, re.S):
            found += 1
            assert "reason=" in m.group(1), path.name
            assert "defect" in m.group(1), (path.name, m.group(1))
    assert found >= 3


def test_the_run_prints_each_xfail_reason():
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-o", "addopts=-p no:cacheprovider",
         "tests/python/test_zerobuffer_interop.py", "-k",
         "peer_reader_no_writer_yet_defect"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("XFAIL tests/python/test_zerobuffer_interop.py::"
            "test_peer_reader_no_writer_yet_defect - zerobuffer-ipc defect: "
            in r.stdout), r.stdout
