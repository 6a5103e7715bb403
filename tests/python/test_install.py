"""The suite tests the tree as it is: running any part of it from this
checkout's .venv installs the package again first when a source changed
(conftest.py), so one test needs no `make install` of its own."""
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

in_checkout_venv = pytest.mark.skipif(
    pathlib.Path(sys.prefix).resolve() != (ROOT / ".venv").resolve()
    or shutil.which("make") is None,
    reason="only the checkout's own .venv is installed by the suite")


@in_checkout_venv
def test_installed_package_is_built_from_the_tree_as_it_is():
    # make -q: exit status 0 when the install target is up to date.
    r = subprocess.run(["make", "-q", "install"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
