"""No public name of a dispatchkit module is Any to a type checker: mypy
reveals the type of every name the modules export (the C extension's
included, through its stubs). Run by make lint-python."""
import importlib
import sys
import tempfile

from mypy import api

MODULES = ["dispatchkit", "dispatchkit.sync", "dispatchkit.atomics",
           "dispatchkit.atomics.base", "dispatchkit.atomics.view",
           "dispatchkit.atomics.ctx", "dispatchkit.atomics.exc",
           "dispatchkit.zerobuffer", "dispatchkit.zerobuffer.core",
           "dispatchkit.zerobuffer.types",
           "dispatchkit.zerobuffer.exceptions",
           "dispatchkit.zerobuffer.duplex", "dispatchkit.asyncio"]


def public(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return [n for n in names
            if not type(getattr(module, n)).__name__ == "module"]


def main():
    lines, names = [], []
    for i, modname in enumerate(MODULES):
        module = importlib.import_module(modname)
        lines.append(f"import {modname} as m{i}")
        for n in public(module):
            lines.append(f"reveal_type(m{i}.{n})")
            names.append(f"{modname}.{n}")
    with tempfile.NamedTemporaryFile("w", suffix=".py") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        out, err, _ = api.run(["--no-incremental", "--cache-dir", "/dev/null",
                               f.name])
    revealed = [line.split("Revealed type is ", 1)[1].strip('"')
                for line in out.splitlines() if "Revealed type is" in line]
    if len(revealed) != len(names):
        print(out, err)
        return 1
    anys = [n for n, t in zip(names, revealed) if t == "Any"]
    print(f"{len(names)} public names, {len(anys)} typed Any")
    for n in anys:
        print("  " + n)
    return 1 if anys else 0


if __name__ == "__main__":
    sys.exit(main())
