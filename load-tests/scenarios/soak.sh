# A bounded soak: moderate load for SOAK_SECONDS (default 300); no request
# may fail and the E2E p99 of the last third may be at most twice the
# first third's.
TARGET=cluster
CLUSTER_FLAGS=(--attention 1 --experts 2)
LOAD_FLAGS=(--rate "${RATE:-2}" --duration "${SOAK_SECONDS:-300}" --input-len 48
            --input-jitter 16 --max-tokens 24 --output-jitter 8 --ignore-eos)
check() {
  python3 "$root/load-tests/scenarios/lib.py" "$1" no-errors &&
    python3 "$root/load-tests/scenarios/lib.py" "$1" p99-stable 2
}
