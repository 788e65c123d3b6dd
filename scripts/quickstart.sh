#!/usr/bin/env bash
# The two Quick start commands of README.md:
#   scripts/quickstart.sh demo [args...]  install what is missing, build the release preset, run modelpool_demo
#   scripts/quickstart.sh test            install what is missing, build the dev preset (ASan+UBSan), run all tests
# Only apt-get runs as root (through sudo for a normal user); the build tree belongs to whoever runs this.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

usage() {
    echo "usage: $0 demo [demo-args...] | test" >&2
    exit 2
}
[[ $# -ge 1 ]] || usage
what=$1
shift

step() { printf '\n==> %s\n' "$*"; }

step "checking build dependencies (scripts/bootstrap.sh)"
scripts/bootstrap.sh

case "$what" in
demo)
    step "cmake --preset release"
    cmake --preset release
    step "cmake --build --preset release -j2 --target modelpool_demo"
    cmake --build --preset release -j2 --target modelpool_demo
    step "build/release/bin/modelpool_demo $*"
    exec build/release/bin/modelpool_demo "$@"
    ;;
test)
    [[ $# -eq 0 ]] || usage
    step "cmake --preset dev"
    cmake --preset dev
    step "cmake --build --preset dev -j2"
    cmake --build --preset dev -j2
    step "ctest --preset dev"
    ctest --preset dev
    ;;
*) usage ;;
esac
