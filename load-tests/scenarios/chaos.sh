# Chaos: under steady load, an expert worker and an attention worker are
# restarted as a rolling restart does (SIGTERM: they drain; then started
# again). With two replicas of every routing group and two attention
# workers, no request may fail.
TARGET=cluster
CLUSTER_FLAGS=(--attention 2 --experts 3 --replicas 2)
LOAD_FLAGS=(--rate "${RATE:-4}" --duration "${DURATION:-30}" --input-len 32 --max-tokens 24
            --ignore-eos)
during() {
  sleep "${CHAOS_AFTER:-5}"
  "$cluster" restart expert-2 --state "$state/cluster"
  sleep "${CHAOS_BETWEEN:-5}"
  "$cluster" restart attention-1 --state "$state/cluster"
}
check() { python3 "$root/load-tests/scenarios/lib.py" "$1" no-errors; }
