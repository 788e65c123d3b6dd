#!/usr/bin/env bash
# Instruction counts per operation with valgrind --tool=callgrind (repeatable on noisy, shared machines).
#
#   bench/profile.sh WHAT [N1 N2]      e.g. bench/profile.sh request_pool
#
# Runs `modelpool_bench_suite --profile WHAT N` at N1 and N2 operations and prints
# (instructions(N2) - instructions(N1)) / (N2 - N1): set-up and tear-down cancel out. Keeps the N2 profile as
# build/release/bench/callgrind.WHAT.out for `callgrind_annotate --inclusive=yes`. WHAT: request_pool,
# request_floor, concurrent_pool, concurrent_floor, routing1:K, routing64:K, stream_pool, stream_floor,
# cold (N workers cold-started with 1 ms loads).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exe="$root/build/release/bin/modelpool_bench_suite"
what="$1"
n1="${2:-2000}"
n2="${3:-6400}"
out="$root/build/release/bench/callgrind.${what//:/_}.out"
count() { # $1: N, $2: output file
    valgrind --tool=callgrind --callgrind-out-file="$2" "$exe" --profile "$what" "$1" 2>&1 >/dev/null |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
i1="$(count "$n1" /dev/null)"
i2="$(count "$n2" "$out")"
echo "$what: $(( (i2 - i1) / (n2 - n1) )) instructions per operation (N=$n1: $i1, N=$n2: $i2); profile: $out"
