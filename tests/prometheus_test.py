#!/usr/bin/env python3
"""A real Prometheus scraping a real local cluster (docs/observability.md).

Brings up deploy/local/cluster.sh (controller, 4 expert workers, 2 attention
workers, router; every process with /metrics on loopback) and Debian's
prometheus server with the scrape configuration `cluster.sh
prometheus-config` prints and the alert rules of deploy/prometheus, sends a
known set of requests through the router with `dsv2 client`, then asks
Prometheus's HTTP API and requires exact equalities: generation tokens equal
the tokens the client received, requests by finish reason and at the router
equal what was sent, histogram counts equal request counts, tokens per
expert sum per layer to computed tokens x num_experts_per_tok, the fan-out
never exceeds topk_group, both ends of the data plane count the same
traffic, the controller lists every worker alive. Every PromQL expression of
the Grafana dashboard and the alert rules must evaluate without error. Exits
77 (skipped) only when no prometheus binary exists.

usage: prometheus_test.py BUILD_DIR
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "tests/data/tiny-v2")


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def free_port():
    # Prometheus cannot report an OS-chosen port, so take one the OS chose
    # and hand it over (loopback; the window is a few milliseconds).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(base, expr):
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def scalar(base, expr):
    answer = query(base, expr)
    if answer.get("status") != "success":
        fail(f"{expr}: {answer}")
    result = answer["data"]["result"]
    return None if not result else float(result[0]["value"][1])


def run(args, **kw):
    out = subprocess.run(args, capture_output=True, text=True, timeout=180, **kw)
    if out.returncode != 0:
        fail(f"{' '.join(args)}: {out.stderr}")
    return out.stdout


def main():
    build = sys.argv[1]
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        print("SKIP: no prometheus binary (scripts/install-deps.sh installs Debian's)")
        sys.exit(77)
    tool = os.path.join(build, "tools/dsv2/dsv2")
    cluster = [os.path.join(ROOT, "deploy/local/cluster.sh")]
    tmp = tempfile.mkdtemp(prefix="dsv2-prometheus-")
    env = dict(os.environ, BUILD_DIR=build)
    state = ["--state", f"{tmp}/cluster"]
    prom = None
    try:
        # 4 expert workers: one routing group each, so topk_group bounds the
        # workers a token reaches (with fewer, it would be met trivially).
        router = run(cluster + ["up", "--model", MODEL, "--attention", "2", "--experts", "4",
                                "--timeout", "90"] + state, env=env).strip()
        client_flags = run(cluster + ["client-flags"] + state, env=env).split()
        web_port = free_port()
        shutil.copy(os.path.join(ROOT, "deploy/prometheus/dsv2-alerts.yml"), tmp)
        scrape = run(cluster + ["prometheus-config"] + state, env=env)
        with open(f"{tmp}/prometheus.yml", "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "rule_files: [dsv2-alerts.yml]\n" + scrape)
        prom = subprocess.Popen(
            [prometheus, f"--config.file={tmp}/prometheus.yml",
             f"--storage.tsdb.path={tmp}/data", f"--web.listen-address=127.0.0.1:{web_port}"],
            stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/prometheus.log", "w"))
        base = f"http://127.0.0.1:{web_port}"

        # The known traffic: 3 requests of 5 tokens (length), 1 of 4 tokens.
        received = 0
        requests = [(5, "1,2,3"), (5, "4,5,6,7"), (5, "8"), (4, "9,10")]
        for max_tokens, prompt in requests:
            out = run([tool, "client", "--addr", router, "--tokens", prompt,
                       "--max-tokens", str(max_tokens), "--ignore-eos"] + client_flags)
            received += len(re.findall(r"\d+", out))
        if received != sum(m for m, _ in requests):
            fail(f"client received {received} tokens")

        # Wait until Prometheus has scraped every process after the traffic
        # ended (each target on its own schedule).
        quiet = time.time()
        end = quiet + 60
        while time.time() < end:
            try:
                scraped = scalar(base, "min(timestamp(up))")
                targets = scalar(base, "count(up)")
            except OSError:
                scraped = targets = None
            if targets == 8 and scraped is not None and scraped > quiet:
                break
            time.sleep(0.25)
        else:
            fail("Prometheus never saw every request finish: " +
                 open(f"{tmp}/prometheus.log").read()[-2000:])

        config = json.load(open(os.path.join(MODEL, "config.json")))
        k, topk_group = config["num_experts_per_tok"], config["topk_group"]
        moe_layers = config["num_hidden_layers"] - config["first_k_dense_replace"]
        # Every token the model computed (the prompt, then each generated
        # token but the last) passes every MoE layer once.
        computed = sum(len(p.split(",")) + m - 1 for m, p in requests)
        checks = {
            # The serving set, summed over the attention workers.
            "sum(dsv2:generation_tokens_total)": received,
            'sum(dsv2:request_success_total{finished_reason!="length"})': 0,
            "sum(dsv2:time_to_first_token_seconds_count)": len(requests),
            "sum(dsv2:e2e_request_latency_seconds_count)": len(requests),
            "sum(dsv2:request_queue_time_seconds_count)": len(requests),
            "sum(dsv2:request_prefill_time_seconds_count)": len(requests),
            "sum(dsv2:request_decode_time_seconds_count)": len(requests),
            "sum(dsv2:inter_token_latency_seconds_count)": received - len(requests),
            "sum(dsv2:request_generation_tokens_sum)": received,
            "sum(dsv2:request_prompt_tokens_sum)": sum(len(p.split(",")) for _, p in requests),
            "sum(dsv2:num_requests_running)": 0,
            "sum(dsv2:num_requests_waiting)": 0,
            # The router.
            "sum(dsv2:router_requests_total)": len(requests),
            "sum(dsv2:router_forwarded_total)": len(requests),
            'dsv2:router_workers{state="eligible"}': 2,
            # Tokens per expert: each layer's sum is every computed token x k.
            "count(sum by (layer) (dsv2:moe_expert_tokens_total))": moe_layers,
            "min(sum by (layer) (dsv2:moe_expert_tokens_total))": computed * k,
            "max(sum by (layer) (dsv2:moe_expert_tokens_total))": computed * k,
            "sum(dsv2:moe_workers_per_token_count)": computed * moe_layers,
            # The fan-out never exceeds topk_group: every token is in its bucket.
            f'sum(dsv2:moe_workers_per_token_bucket{{le="{topk_group}"}})': computed * moe_layers,
            "count(count by (layer) (dsv2:moe_expert_imbalance >= 1))": moe_layers,
            # Traffic seen from both ends agrees.
            'sum(dsv2:data_plane_peer_messages_total{job="dsv2-attention",direction="sent"})':
                'sum(dsv2:data_plane_peer_messages_total{job="dsv2-expert",direction="received"})',
            'sum(dsv2:data_plane_peer_bytes_total{job="dsv2-attention",direction="received"})':
                'sum(dsv2:data_plane_peer_bytes_total{job="dsv2-expert",direction="sent"})',
            "sum(dsv2:data_plane_round_trip_seconds_count)":
                'sum(dsv2:data_plane_peer_messages_total{job="dsv2-attention",direction="received"})',
            "sum(dsv2:moe_wait_seconds_count)": "sum(dsv2:moe_calls_total)",
            # The controller.
            'dsv2:cluster_workers{role="expert",state="alive"}': 4,
            'dsv2:cluster_workers{role="attention",state="alive"}': 2,
            'sum(dsv2:cluster_workers{state!="alive"})': 0,
            "dsv2:cluster_map_complete": 1,
            "dsv2:controller_lease_expiries_total": 0,
            # Every process up.
            "count(up == 1)": 8,
        }
        for expr, want in checks.items():
            got = scalar(base, expr)
            if isinstance(want, str):
                want = scalar(base, want)
            if got != want:
                fail(f"{expr} = {got}, expected {want}")
        # The bound is reached, not trivially met.
        if scalar(base, "sum(dsv2:moe_workers_per_token_sum)") <= computed * moe_layers:
            fail("no token reached a second expert worker")
        if scalar(base, 'sum(dsv2:data_plane_peer_messages_total{job="dsv2-expert"})') == 0:
            fail("no expert traffic")
        if scalar(base, "min(process_resident_memory_bytes)") < (1 << 20):
            fail("process_resident_memory_bytes below 1 MiB")

        # Every expression of the dashboard and the rules evaluates.
        dashboard = json.load(open(os.path.join(ROOT, "deploy/grafana/dsv2-serve.json")))
        exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
        rules = open(os.path.join(ROOT, "deploy/prometheus/dsv2-alerts.yml")).read()
        exprs += [m.strip() for m in re.findall(r"expr: >\n((?:          .*\n)+)", rules)]
        exprs += re.findall(r"expr: ([^>\n].*)", rules)
        for expr in exprs:
            concrete = (expr.replace("$__rate_interval", "1m").replace("$job", "dsv2.*")
                        .replace("$layer", ".*"))
            answer = query(base, concrete)
            if answer.get("status") != "success":
                fail(f"{concrete}: {answer.get('error')}")
        # And the server loaded the rules.
        with urllib.request.urlopen(base + "/api/v1/rules", timeout=10) as r:
            loaded = sum(len(g["rules"]) for g in json.load(r)["data"]["groups"])
        if loaded != rules.count("- alert:"):
            fail(f"Prometheus loaded {loaded} rules")
        print(f"OK: {received} tokens, {len(requests)} requests, {computed} tokens x {k} experts "
              f"per layer, fan-out <= topk_group {topk_group}, {len(exprs)} expressions evaluated")
    finally:
        if prom is not None and prom.poll() is None:
            prom.send_signal(signal.SIGTERM)
            try:
                prom.wait(timeout=30)
            except subprocess.TimeoutExpired:
                prom.kill()
        subprocess.run(cluster + ["down"] + state, env=env, capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
