# 10x overload: arrivals at ten times what the server can take, against a
# dsv2-standalone with a short waiting queue. The excess must be refused
# RESOURCE_EXHAUSTED or wait within the queue's bound: every request ends,
# none is lost or hangs (each has a deadline far beyond the run).
TARGET=standalone
STANDALONE_FLAGS=(--kv_cache_mib 256 --max_waiting 16)
LOAD_FLAGS=(--rate "${RATE:-400}" --duration "${DURATION:-15}" --input-len 64 --max-tokens 32
            --ignore-eos --timeout 300)
check() {
  python3 "$root/load-tests/scenarios/lib.py" "$1" only-codes RESOURCE_EXHAUSTED &&
    python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
stage = r["stages"][0]
if stage["succeeded"] == 0 or stage["succeeded"] == stage["requests"]:
    sys.exit(f"expected some served and some refused under 10x load: {stage['succeeded']} of "
             f"{stage['requests']} succeeded")
print(f"overload: {stage['succeeded']} served, {stage['requests'] - stage['succeeded']} refused "
      "RESOURCE_EXHAUSTED, none lost")
PY
}
