#!/usr/bin/env bash
# `make test-pythons`: the Python suite on each CPython that tools/pythons.sh
# finds, in its own venv (.venv-3.X) and build directory, JOBS versions at a
# time (the suite mostly waits on threads and processes, so two runs share
# two cores well). Each run's output goes to build/test-pythons/3.X.log and
# is printed whole, in version order, once all have ended; a line says when
# each one ends. EXCEPT="3.11 ..." skips versions tested already.
set -uo pipefail
jobs=${JOBS:-2}
except=" ${EXCEPT:-} "
make=${MAKE:-make}
build=${BUILD:-build}
logs=$build/test-pythons
mkdir -p "$logs"

declare -A interpreter
versions=()
for py in $(tools/pythons.sh); do
    v=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [[ $except == *" $v "* ]] && continue
    versions+=("$v")
    interpreter[$v]=$py
done

run_one() {
    local v=$1 start=$SECONDS
    "$make" --no-print-directory test-python PYTHON="${interpreter[$v]}" \
        VENV=".venv-$v" PYBUILD="$build/py-$v" >"$logs/$v.log" 2>&1
    local rc=$?
    echo "$rc" >"$logs/$v.rc"
    echo "== Python $v ended (exit $rc) after $((SECONDS - start)) s"
}

for v in "${versions[@]}"; do
    while (($(jobs -rp | wc -l) >= jobs)); do
        wait -n
    done
    echo "== Python $v started (${interpreter[$v]})"
    run_one "$v" &
done
wait

status=0
for v in "${versions[@]}"; do
    echo "== Python $v (${interpreter[$v]})"
    cat "$logs/$v.log"
    if [[ $(cat "$logs/$v.rc") != 0 ]]; then
        echo "== Python $v FAILED"
        status=1
    fi
done
exit $status
