"""Type-check the atomics seed README's code (the snippets here and the
three sample programs in examples/python/) with mypy and pyright
(basedpyright, which ships pyright in its wheel), once as written for
dispatchkit.atomics and once with the import switched to the real atomics
package. Fails if dispatchkit gives any diagnostic the real package does
not: the remaining ones (Thread.start() used as a value, SharedMemory.buf
being Optional in typeshed) are the README's own. Run by make lint-python.
"""
import json
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SOURCES = sorted(HERE.glob("readme_*.py")) + sorted(
    (ROOT / "examples" / "python").glob("atomics_*.py"))
BIN = pathlib.Path(sys.executable).parent


def variant(dest, ours):
    dest.mkdir()
    for src in SOURCES:
        text = src.read_text()
        if not ours:
            text = (text.replace("import dispatchkit.atomics as atomics",
                                 "import atomics")
                    .replace("from dispatchkit.atomics import",
                             "from atomics import"))
        (dest / src.name).write_text(text)
    return sorted(dest.glob("*.py"))


def mypy(files):
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--allow-redefinition",
         "--no-incremental", "--cache-dir", "/dev/null",
         "--disable-error-code", "import-untyped", *map(str, files)],
        capture_output=True, text=True)
    out = set()
    for line in r.stdout.splitlines():
        parts = line.split(":", 3)
        if len(parts) == 4 and parts[2].strip() == "error":
            out.add((pathlib.Path(parts[0]).name, int(parts[1]), line))
    return out


def pyright(files, workdir):
    (workdir / "pyrightconfig.json").write_text(json.dumps(
        {"typeCheckingMode": "standard", "pythonVersion": "%d.%d"
         % sys.version_info[:2]}))
    r = subprocess.run(
        [str(BIN / "basedpyright"), "--outputjson", "--pythonpath",
         sys.executable, "-p", str(workdir / "pyrightconfig.json"),
         *map(str, files)], capture_output=True, text=True)
    report = json.loads(r.stdout)
    return {(pathlib.Path(d["file"]).name, d["range"]["start"]["line"] + 1,
             f'{d["file"]}:{d["range"]["start"]["line"] + 1}: '
             f'{d["message"]}')
            for d in report["generalDiagnostics"] if d["severity"] == "error"}


def main():
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        ours = variant(tmp / "ours", True)
        theirs = variant(tmp / "theirs", False)
        for name, check in (("mypy", mypy), ("pyright", None)):
            if check is None:
                mine = pyright(ours, tmp / "ours")
                peer = pyright(theirs, tmp / "theirs")
            else:
                mine, peer = check(ours), check(theirs)
            peer_at = {(f, line) for f, line, _ in peer}
            extra = sorted(m for f, line, m in mine if (f, line) not in peer_at)
            print(f"{name}: {len(mine)} diagnostics with dispatchkit.atomics, "
                  f"{len(peer)} with the atomics package, {len(extra)} ours "
                  "alone")
            for m in extra:
                print("  " + m)
            failed |= bool(extra)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
