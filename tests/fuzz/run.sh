#!/usr/bin/env bash
# Run each fuzz target for SECONDS on its corpus in tests/fuzz/corpus/:
# the committed inputs are replayed first, and what the fuzzer finds goes
# to a scratch directory under BUILD (never into the repository). Any
# crash, leak, timeout or sanitizer report fails the run; its input is
# left in BUILD/artifacts/. One summary line per target.
#
#   tests/fuzz/run.sh BUILD SECONDS PYTHON TARGET...
#   (TARGET "python" runs tests/fuzz/fuzz_python.py under PYTHON)
set -uo pipefail
build=$1 seconds=$2 python=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$build/artifacts"
failed=0
for t in "$@"; do
    scratch="$build/scratch/$t"
    rm -rf "$scratch"
    mkdir -p "$scratch"
    log="$build/fuzz_$t.log"
    opts=(-max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048
          -max_len=4096 -print_final_stats=1
          -artifact_prefix="$build/artifacts/$t-"
          "$scratch" "$here/corpus/$t")
    start=$(date +%s)
    if [ "$t" = python ]; then
        "$python" "$here/fuzz_python.py" "${opts[@]}" >"$log" 2>&1
    else
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
            UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
            "$build/fuzz_$t" "${opts[@]}" >"$log" 2>&1
    fi
    rc=$?
    took=$(($(date +%s) - start))
    # A crashed zerobuffer run cannot clean its shared objects up.
    rm -f /dev/shm/dkfuzz-zb-* /dev/shm/sem.sem-[rw]-dkfuzz-zb-* \
        /tmp/zerobuffer/dkfuzz-zb-*.lock
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -E '^#[0-9]+' "$log" | tail -1 |
        sed -n 's/.*\(cov: [0-9]* ft: [0-9]*\).*/\1/p')
    if [ "$rc" -ne 0 ]; then
        tail -40 "$log"
        echo "fuzz_$t: FAILED (exit $rc) after ${took}s; input in $build/artifacts/"
        failed=1
    else
        echo "fuzz_$t: ${runs:-?} runs in ${took}s, ${cov:-no coverage line}, 0 crashes"
    fi
done
exit $failed
