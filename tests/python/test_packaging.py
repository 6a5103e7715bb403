"""What a user meets before importing anything: the version, the metadata
of the installed distribution, and an extension that exports nothing but its
module init."""
import importlib.metadata
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import dispatchkit
import dispatchkit._dk
import dispatchkit.zerobuffer

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_one_version_everywhere():
    pyproject = (ROOT / "pyproject.toml").read_text()
    meson = (ROOT / "meson.build").read_text()
    declared = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    assert re.search(r"version: '%s'" % re.escape(declared), meson)
    assert dispatchkit.__version__ == declared
    assert importlib.metadata.version("dispatchkit") == declared


def test_zerobuffer_reports_our_version_not_the_peers():
    assert dispatchkit.zerobuffer.__version__ == dispatchkit.__version__
    peer = importlib.metadata.version("zerobuffer-ipc")
    assert dispatchkit.zerobuffer.__version__ != peer


def test_metadata_claims_this_python_and_ships_the_license():
    meta = importlib.metadata.metadata("dispatchkit")
    classifiers = meta.get_all("Classifier")
    this = "Programming Language :: Python :: %d.%d" % sys.version_info[:2]
    assert this in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert meta["Requires-Python"] == ">=3.9"
    assert meta.get("License-Expression", meta.get("License")) == "MIT"
    files = importlib.metadata.files("dispatchkit")
    licenses = [f for f in files if f.name == "LICENSE"]
    assert licenses, "LICENSE is not in the installed distribution"
    assert "MIT License" in licenses[0].read_text()


@pytest.mark.skipif(shutil.which("nm") is None, reason="binutils' nm absent")
def test_extension_exports_only_its_module_init():
    out = subprocess.run(
        ["nm", "-D", "--defined-only", dispatchkit._dk.__file__],
        capture_output=True, text=True, check=True).stdout
    exported = sorted(line.split()[-1] for line in out.splitlines()
                      if line.split() and line.split()[1] in "TtDdBbRrWwVv")
    assert exported == ["PyInit__dk"], exported


def test_binding_uses_public_c_api_only():
    # Private _Py functions change between releases without notice (3.13
    # changed _PyLong_AsByteArray and dropped _PyArg_NoKeywords): the
    # binding calls none, and compat.h spells the few helpers older
    # releases lack.
    private = re.compile(r"\b_Py[A-Za-z_]+\s*\(")
    found = []
    for path in sorted((ROOT / "src" / "python").glob("*.[ch]")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if private.search(line):
                found.append("%s:%d: %s" % (path.name, n, line.strip()))
    assert not found, "\n".join(found)


def _venv_in_checkout():
    """This interpreter's venv, relative to the checkout, when it is one of
    the Makefile's (.venv, .venv-3.X); None for any other interpreter."""
    prefix = pathlib.Path(sys.prefix).resolve()
    if prefix.parent != ROOT or not prefix.name.startswith(".venv"):
        return None
    return prefix.name


@pytest.mark.skipif(shutil.which("make") is None, reason="make absent")
def test_make_install_is_a_no_op_when_nothing_changed():
    venv = _venv_in_checkout()
    if venv is None:
        pytest.skip("not run from a Makefile venv of this checkout")
    # -q: exit 0 only if the target is up to date, running nothing.
    r = subprocess.run(["make", "-q", "-C", str(ROOT), "install",
                        "VENV=" + venv], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make absent")
def test_make_demo_builds_only_the_package():
    r = subprocess.run(["make", "-n", "-C", str(ROOT), "demo"],
                       capture_output=True, text=True, check=True)
    assert "examples/python/demo.py" in r.stdout
    assert "build/c" not in r.stdout, r.stdout
