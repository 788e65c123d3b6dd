#!/usr/bin/env bash
# Builds and runs the modelpool benchmarks (issue 5; see bench/RESULTS.md).
#
#   scripts/bench.sh            full run: prints one markdown table on stdout, writes bench/results.json
#   scripts/bench.sh --quick    small sizes, one repetition: proves the benchmarks build and run
#                               (writes build/release/bench/results-quick.json unless --json is given)
#   scripts/bench.sh [--quick] [--json PATH] [--cases cold_start,request_overhead,...]
#
# Uses the `release` preset (configured on first use) and builds only modelpool_bench_suite, with -j1: the
# machines are shared. Build output and progress go to stderr; stdout carries only the table.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

quick=0
json=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; args+=("$1") ;;
        --json) json="$2"; shift ;;
        *) args+=("$1") ;;
    esac
    shift
done
if [ -z "$json" ]; then
    if [ "$quick" = 1 ]; then json="build/release/bench/results-quick.json"; else json="bench/results.json"; fi
fi

{
    if [ ! -f build/release/build.ninja ]; then
        cmake --preset release
    fi
    cmake --build --preset release -j1 --target modelpool_bench_suite
} >&2

MODELPOOL_BENCH_REVISION="$(git describe --always --dirty 2>/dev/null || echo unknown)"
export MODELPOOL_BENCH_REVISION
exec "build/release/bin/modelpool_bench_suite" "${args[@]}" --json "$json"
