#!/usr/bin/env bash
# What can be checked of deploy/docker without a container engine:
#  - the runtime stage's package list (deploy/docker/runtime-packages.txt)
#    is exactly the Debian packages that own the libraries the binaries load
#    (ldd of this build), less what debian:12-slim already has;
#  - both images run as the non-root user the Helm chart's pods run as, and
#    build every binary the chart starts (the servers, and dsv2 for probes
#    and the helm test).
# Usage: docker_runtime_packages_test.sh BUILD_DIR (from the repo root).
set -euo pipefail
build="$1"
fail() { echo "FAIL: $*"; exit 1; }
base="libc6 libgcc-s1 libstdc++6 zlib1g"  # In debian:12-slim.
binaries=("$build/tools/dsv2/dsv2" "$build"/services/*/dsv2-*)
[ "${#binaries[@]}" -ge 6 ] || fail "binaries missing in $build"

# The package owning each loaded library (paths as dpkg knows them: Debian
# 12 merged /lib into /usr/lib, and dpkg may list either).
needed="$(for b in "${binaries[@]}"; do ldd "$b"; done | awk '/=> \// {print $3}' | sort -u |
  while read -r lib; do
    real="$(readlink -f "$lib")"
    for path in "$real" "${real#/usr}" "$lib" "${lib#/usr}"; do
      if owner="$(dpkg -S "$path" 2>/dev/null)"; then echo "${owner%%:*}"; break; fi
    done || true
  done | sort -u)"
[ -n "$needed" ] || fail "no package found for the binaries' libraries"
expected="$(comm -23 <(echo "$needed") <(tr ' ' '\n' <<<"$base" | sort))"
listed="$(grep -v '^#' deploy/docker/runtime-packages.txt | sort)"
if [ "$expected" != "$listed" ]; then
  echo "needed by ldd but not listed: $(comm -23 <(echo "$expected") <(echo "$listed") | tr '\n' ' ')"
  echo "listed but not needed:        $(comm -13 <(echo "$expected") <(echo "$listed") | tr '\n' ' ')"
  fail "deploy/docker/runtime-packages.txt disagrees with ldd"
fi

uid="$(awk '/runAsUser:/ {print $2}' helm/dsv2-serve/values.yaml)"
for f in deploy/docker/Dockerfile.cpu deploy/docker/Dockerfile.cuda; do
  grep -q "^USER $uid:$uid$" "$f" || fail "$f does not run as the chart's user $uid"
  grep -q -- "--uid $uid " "$f" || fail "$f does not create user $uid"
  targets="$(sed -n '/cmake --build/,/mkdir/p' "$f" | tr -s ' \\&' '\n\n\n')"
  for b in dsv2 dsv2-controller dsv2-router dsv2-attention dsv2-expert; do
    grep -qx "$b" <<<"$targets" || fail "$f does not build $b, which the chart runs"
  done
done
echo "PASS: $(wc -l <<<"$listed") runtime packages = ldd of ${#binaries[@]} binaries - the base image"
