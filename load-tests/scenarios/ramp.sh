# A ramp of Poisson rates, one stage each, to find the saturation knee: the
# last rate whose achieved rate keeps up with the offered one and whose TTFT
# p99 stays bounded. Plots latency against offered load (SCENARIO.png).
TARGET=cluster
CLUSTER_FLAGS=(--attention 1 --experts 2)
LOAD_FLAGS=(--ramp "${RATES:-1,2,4,8,16,32}" --stage-duration "${STAGE_SECONDS:-20}"
            --concurrency 512 --input-len 64 --max-tokens 32 --ignore-eos
            --plot "$out/$name.png")
check() { python3 "$root/load-tests/scenarios/lib.py" "$1" only-codes RESOURCE_EXHAUSTED; }
