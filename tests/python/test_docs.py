"""Every ```python block of README.md and docs/*.md runs as written: each
in a fresh interpreter (as a script file, so that multiprocessing's spawn
can re-import it), bounded in time, with nothing on stderr and no shared
memory left behind. A block that is deliberately a fragment is fenced
```python-fragment instead (rendered the same by most viewers) and is
only compiled here, never run."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[ \t]*$")


def blocks(path):
    """(language, first line number, code) of each fenced block."""
    found = []
    lang = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        m = FENCE.match(line)
        if lang is None:
            if m:
                lang, start, body = m.group(1), number + 1, []
        elif m and not m.group(1):
            found.append((lang, start, "\n".join(body) + "\n"))
            lang = None
        else:
            body.append(line)
    assert lang is None, f"{path.name}: a block opened and never closed"
    return found


def collect(language):
    return [pytest.param(path, start, code,
                         id=f"{path.relative_to(ROOT)}:{start}")
            for path in DOCS
            for lang, start, code in blocks(path) if lang == language]


PYTHON = collect("python")
FRAGMENTS = collect("python-fragment")


def shm_entries():
    """Names under /dev/shm, the PID directories' contents included."""
    found = set()
    for dirpath, dirnames, filenames in os.walk("/dev/shm"):
        for n in dirnames + filenames:
            found.add(os.path.join(dirpath, n))
    return found


def test_the_docs_have_python_blocks():
    # An extractor that silently finds nothing would pass every doc.
    per_file = {p.name: sum(1 for lang, _, _ in blocks(p) if lang == "python")
                for p in DOCS}
    assert per_file["README.md"] >= 4
    assert per_file["zerobuffer.md"] >= 3 and per_file["sync.md"] >= 2
    assert len(PYTHON) >= 10
    # Exceptions stay few.
    assert len(FRAGMENTS) <= 2


@pytest.mark.parametrize("path,start,code", PYTHON)
def test_python_block_runs(path, start, code, tmp_path):
    script = tmp_path / f"{path.stem}_{start}.py"
    script.write_text(code)
    before = shm_entries()
    p = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    where = f"{path.relative_to(ROOT)}, block at line {start}"
    assert p.returncode == 0, f"{where}:\n{err}"
    assert err == "", f"{where} wrote to stderr:\n{err}"
    # Blocks name what they create after their pid: none may stay behind.
    # The pid as a whole number, not a run of digits inside another one:
    # with pytest-xdist, the other worker's tests create entries named
    # after their own pids meanwhile (pids wrap at pid_max, 32768 here).
    own = re.compile(rf"(?<![0-9]){p.pid}(?![0-9])")
    left = [n for n in shm_entries() - before if own.search(n)]
    assert left == [], f"{where} left {left}"


def test_python_fragments_compile():
    for path, start, code in (p.values for p in FRAGMENTS):
        compile(code, f"{path.name}:{start}", "exec")


def test_design_map_names_only_files_that_exist():
    """docs/design.md maps the tree: every file it names in backquotes (a
    path's tail such as `python/queue.c`, or a glob such as
    `test_zerobuffer*.py`) is a file of the repository, so a rename or a
    removal that leaves the map stale fails here."""
    # Walked without descending into .git, build directories or venvs
    # (.venv and test-pythons' .venv-3.X): rglob listed all of their tens
    # of thousands of files only to drop them.
    tracked = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in (".git", "build")
                       and not d.startswith(".venv")]
        rel = pathlib.Path(dirpath).relative_to(ROOT)
        tracked += [(rel / f).as_posix() for f in filenames]
    text = (ROOT / "docs" / "design.md").read_text()
    names = set(re.findall(r"`([\w./*{},-]+\.(?:c|h|py|md|toml))`", text))
    assert len(names) > 50
    missing = []
    for name in sorted(names):
        pattern = re.compile(
            r"(^|/)" + re.escape(name).replace(r"\*", r"[^/]*") + "$")
        if not any(pattern.search(path) for path in tracked):
            missing.append(name)
    assert not missing, missing
