#!/usr/bin/env bash
# `make test-pythons`: the Python suite on each CPython that tools/pythons.sh
# finds, in its own venv (.venv-3.X) and build directory. One at a time, the
# output streams as it comes; with JOBS=2 (see the Makefile for why that is
# not the default) two run at once, each into build/test-pythons/3.X.log,
# printed whole in version order once all have ended. EXCEPT="3.11 ..."
# skips versions tested already.
#
# Every version's venv and extension (`make install`: a venv, the test
# dependencies, a build of the extension; about 20 s a version, half of it
# pip and venv work that leaves a core idle) are prepared first, PREP_JOBS
# (2) at a time, each into build/test-pythons/3.X.install.log, printed in
# version order; only then does the first suite start, so no suite shares
# the cores with a compiler or pip (the load under which timing flakes
# appeared when the next version was built beside a running suite).
set -uo pipefail
jobs=${JOBS:-1}
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

# make target $1 for version $2, in that version's venv and build.
make_for() {
    "$make" --no-print-directory "$1" PYTHON="${interpreter[$2]}" \
        VENV=".venv-$2" PYBUILD="$build/py-$2"
}

# Return once fewer than $1 background jobs run.
wait_for_slot() {
    while (($(jobs -rp | wc -l) >= $1)); do
        wait -n
    done
}

# The venv and the installed extension of version $1, output to its
# install log. A failure here shows again, in the suite's log, when
# test-python retries the install itself.
prepare() {
    local v=$1 start=$SECONDS rc
    make_for install "$v" >"$logs/$v.install.log" 2>&1
    rc=$?
    echo "== Python $v prepared (exit $rc) in $((SECONDS - start)) s" \
        >>"$logs/$v.install.log"
}

start=$SECONDS
for v in "${versions[@]}"; do
    wait_for_slot "${PREP_JOBS:-2}"
    prepare "$v" &
done
wait
for v in "${versions[@]}"; do
    cat "$logs/$v.install.log"
done
echo "== all versions prepared in $((SECONDS - start)) s"

run_one() {
    local v=$1 start=$SECONDS rc
    if ((jobs == 1)); then
        make_for test-python "$v" 2>&1 | tee "$logs/$v.log"
        rc=${PIPESTATUS[0]}
    else
        make_for test-python "$v" >"$logs/$v.log" 2>&1
        rc=$?
    fi
    echo "$rc" >"$logs/$v.rc"
    echo "== Python $v ended (exit $rc) after $((SECONDS - start)) s"
}

for v in "${versions[@]}"; do
    wait_for_slot "$jobs"
    echo "== Python $v (${interpreter[$v]})"
    if ((jobs == 1)); then
        run_one "$v"
    else
        run_one "$v" &
    fi
done
wait

status=0
for v in "${versions[@]}"; do
    ((jobs == 1)) || { echo "== Python $v"; cat "$logs/$v.log"; }
    if [[ $(cat "$logs/$v.rc") != 0 ]]; then
        echo "== Python $v FAILED"
        status=1
    fi
done
exit $status
