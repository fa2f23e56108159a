# Steady load: Poisson arrivals at a fixed rate for a bounded time, on the
# local cluster; every request must succeed.
TARGET=cluster
CLUSTER_FLAGS=(--attention 1 --experts 2)
LOAD_FLAGS=(--rate "${RATE:-4}" --duration "${DURATION:-30}" --input-len 64 --input-jitter 16
            --max-tokens 32 --ignore-eos --slo-ttft-ms 1000 --slo-tpot-ms 200)
check() { python3 "$root/load-tests/scenarios/lib.py" "$1" no-errors; }
