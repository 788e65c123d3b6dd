#!/usr/bin/env bash
# Installs the Debian 12 packages modelpool needs to build and test, and nothing when they are all present.
#   scripts/bootstrap.sh [extra-package...]   (.ci/run passes clang-14 and clang-format-14)
# Runs apt-get as root directly, or through sudo for a normal user; refuses on systems it does not know.
set -euo pipefail

packages=(cmake ninja-build g++ libboost1.81-dev libfmt-dev libspdlog-dev catch2 libexpected-dev ccache pkg-config
    # The real inference runtimes of examples/runtimes/ (each optional in CMake, built and tested here):
    libtesseract-dev tesseract-ocr-eng libfreetype-dev fonts-dejavu-core # vision: Tesseract OCR
    libfasttext-dev                                                      # text_embedding: fastText
    libtorch-dev                                                         # text_to_text: a char-level RNN
    libboost-json1.81-dev                                                # modelpool::http (Boost.JSON)
    # The HTTP server's tests and benchmarks: nginx (replicas, the benchmark baseline), wrk (load), PyYAML (the
    # deploy/ manifests' check), curl (the README's curl lines).
    nginx wrk python3-yaml curl
    libeigen3-dev # the dynamic-batching benchmark's embedder (bench/batching.cpp)
    "$@")

# Node.js and npm run the official `openai` client's test (tests/openai/). A machine that already has them (for
# example from NodeSource, whose nodejs package ships npm and conflicts with Debian's npm) keeps its own; only
# when a command is missing are Debian's packages installed.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    packages+=(nodejs npm)
fi

say() { printf 'bootstrap: %s\n' "$*"; }
die() {
    printf 'bootstrap: %s\n' "$@" >&2
    exit 1
}
manual_hint() {
    printf 'bootstrap: install these by hand (Debian 12 package names): %s\n' "${packages[*]}" >&2
    printf 'bootstrap: then build as README.md "Manual setup" shows (cmake --preset dev ...).\n' >&2
}

# --- Which system is this? ------------------------------------------------------------------------------------
os_id="" os_version="" os_name="unknown"
if [[ -r /etc/os-release ]]; then
    # shellcheck disable=SC1091
    IFS='|' read -r os_id os_version os_name < <(
        . /etc/os-release
        printf '%s|%s|%s\n' "${ID:-}" "${VERSION_ID:-}" "${PRETTY_NAME:-${ID:-} ${VERSION_ID:-}}"
    )
fi
if [[ "$os_id" != debian || "$os_version" != 12 ]]; then
    manual_hint
    die "this script knows only Debian 12 (bookworm); this system is '$os_name'." \
        "modelpool needs: CMake >= 3.21, Ninja, g++ >= 12 (or clang >= 14), Boost >= 1.81 (headers)," \
        "fmt >= 9, spdlog >= 1.10 built with external fmt, Catch2 2.13 or 3, tl::expected 1.0; ccache optional."
fi

# --- What is missing? ---------------------------------------------------------------------------------------
installed() { [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]; }

missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0 # everything present: say nothing

# Boost 1.74's dev packages (libboost-dev, libboost1.74-dev and the libboost-*-dev family built on them)
# conflict with libboost1.81-dev; apt would remove them, and whatever depends on them, to install it.
if ! installed libboost1.81-dev && installed libboost1.74-dev; then
    if [[ "${MODELPOOL_REPLACE_BOOST:-}" != 1 ]]; then
        die "libboost1.74-dev (Boost 1.74, from libboost-dev or libboost-all-dev) is installed." \
            "modelpool needs Boost >= 1.81 (Asio 1.26), packaged as libboost1.81-dev, which conflicts with it:" \
            "installing libboost1.81-dev makes apt remove the Boost 1.74 dev packages and what depends on them." \
            "To let this script do that, run again with MODELPOOL_REPLACE_BOOST=1; or do it yourself:" \
            "  apt-get install libboost1.81-dev    (apt lists what it removes and asks first)"
    fi
    say "replacing the Boost 1.74 dev packages with libboost1.81-dev (MODELPOOL_REPLACE_BOOST=1)"
fi

# --- Install ------------------------------------------------------------------------------------------------
if [[ $(id -u) -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    die "missing Debian packages: ${missing[*]}" \
        "Installing them needs root, and sudo is not installed. As root, run: apt-get install ${missing[*]}" \
        "(or run this script as root), then run your command again."
fi

say "missing Debian packages: ${missing[*]}"
say "installing them with: ${as_root[*]:+${as_root[*]} }apt-get install -y --no-install-recommends ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"

still=()
for p in "${missing[@]}"; do
    installed "$p" || still+=("$p")
done
[[ ${#still[@]} -eq 0 ]] || die "apt-get finished but these are still not installed: ${still[*]}"
say "installed: ${missing[*]}"
