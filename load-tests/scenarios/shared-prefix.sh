# Long shared prefixes: every prompt starts with the same 136 tokens, so
# the prefix cache serves its two full 64-token blocks (--block_size) of each
# prompt after the first; more than half the prompt tokens must be found.
TARGET=standalone
LOAD_FLAGS=(--rate "${RATE:-4}" --duration "${DURATION:-20}" --input-len 160 --prefix-len 136
            --max-tokens 16 --ignore-eos)
check() {
  python3 "$root/load-tests/scenarios/lib.py" "$1" no-errors || return 1
  local queries hits
  queries="$(metric_sum dsv2:prefix_cache_queries_total)"
  hits="$(metric_sum dsv2:prefix_cache_hits_total)"
  echo "prefix cache: $hits of $queries prompt tokens found"
  [ "$queries" -gt 0 ] && [ $((hits * 2)) -gt "$queries" ] ||
    { echo "prefix cache hit rate below 50%"; return 1; }
}
