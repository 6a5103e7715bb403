#!/usr/bin/env bash
# Prints one interpreter path per CPython minor version the package claims
# (3.9 to 3.13), the newest patch release of each that pyenv has installed.
# Every machine of this project's kind carries them under pyenv; a missing
# one is an error, since the package must not claim a version it was not
# tested on. Free-threaded builds (3.13t) are left out: see
# docs/free-threading.md.
set -euo pipefail
root=${PYENV_ROOT:-$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")}
status=0
for minor in 9 10 11 12 13; do
    best=$(ls -d "$root"/versions/3."$minor".* 2>/dev/null |
        grep -E "/3\.$minor\.[0-9]+$" | sort -V | tail -n 1 || true)
    if [[ -z $best || ! -x $best/bin/python3.$minor ]]; then
        echo "pythons.sh: no CPython 3.$minor under $root/versions" >&2
        status=1
        continue
    fi
    echo "$best/bin/python3.$minor"
done
exit $status
