#!/usr/bin/env python3
"""A real Prometheus scraping a real dsv2-standalone (docs/observability.md).

Starts dsv2-standalone with --metrics_listen on loopback and Debian's
prometheus server with a scrape configuration for it and the alert rules of
deploy/prometheus, sends a known set of requests with `dsv2 client`, then asks
Prometheus's HTTP API and requires exact equalities: generation tokens equal
the tokens the client received, requests by finish reason equal what was
sent, histogram counts equal request counts, the fan-out never exceeds
topk_group. Every PromQL expression of the Grafana dashboard and the alert
rules must evaluate without error. Exits 77 (skipped) only when no prometheus
binary exists.

usage: prometheus_test.py DSV2_TOOL DSV2_STANDALONE
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


def wait_for_file(path, process, seconds=60):
    end = time.time() + seconds
    while time.time() < end:
        if os.path.exists(path) and open(path).read().strip():
            return open(path).read().strip()
        if process.poll() is not None:
            fail(f"{process.args[0]} exited {process.returncode} before writing {path}")
        time.sleep(0.05)
    fail(f"no {path} after {seconds} s")


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


def main():
    tool, standalone = sys.argv[1], sys.argv[2]
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        print("SKIP: no prometheus binary (scripts/install-deps.sh installs Debian's)")
        sys.exit(77)
    tmp = tempfile.mkdtemp(prefix="dsv2-prometheus-")
    procs = []
    try:
        server = subprocess.Popen(
            [standalone, "--model", MODEL, "--listen", "127.0.0.1:0",
             "--port_file", f"{tmp}/port", "--metrics_listen", "127.0.0.1:0",
             "--metrics_port_file", f"{tmp}/metrics_port", "--kv_cache_mib", "64"],
            stderr=open(f"{tmp}/standalone.log", "w"))
        procs.append(server)
        port = wait_for_file(f"{tmp}/port", server)
        metrics_port = wait_for_file(f"{tmp}/metrics_port", server)

        web_port = free_port()
        shutil.copy(os.path.join(ROOT, "deploy/prometheus/dsv2-alerts.yml"), tmp)
        with open(f"{tmp}/prometheus.yml", "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [dsv2-alerts.yml]
scrape_configs:
  - job_name: dsv2-standalone
    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]
""")
        prom = subprocess.Popen(
            [prometheus, f"--config.file={tmp}/prometheus.yml",
             f"--storage.tsdb.path={tmp}/data", f"--web.listen-address=127.0.0.1:{web_port}"],
            stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/prometheus.log", "w"))
        procs.append(prom)
        base = f"http://127.0.0.1:{web_port}"

        # The known traffic: 3 requests of 5 tokens (length), 1 of 4 tokens.
        received = 0
        requests = [(5, "1,2,3"), (5, "4,5,6,7"), (5, "8"), (4, "9,10")]
        for max_tokens, prompt in requests:
            out = subprocess.run(
                [tool, "client", "--addr", f"127.0.0.1:{port}", "--tokens", prompt,
                 "--max-tokens", str(max_tokens), "--ignore-eos"],
                capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                fail(f"dsv2 client: {out.stderr}")
            received += len(re.findall(r"\d+", out.stdout))
        if received != sum(m for m, _ in requests):
            fail(f"client received {received} tokens")

        # Wait until Prometheus has scraped the final figures.
        end = time.time() + 60
        while time.time() < end:
            try:
                got = scalar(base, 'dsv2:request_success_total{finished_reason="length"}')
            except OSError:
                got = None
            if got == len(requests):
                break
            time.sleep(0.25)
        else:
            fail("Prometheus never saw every request finish: " +
                 open(f"{tmp}/prometheus.log").read()[-2000:])

        checks = {
            "dsv2:generation_tokens_total": received,
            'sum(dsv2:request_success_total{finished_reason!="length"})': 0,
            "dsv2:time_to_first_token_seconds_count": len(requests),
            "dsv2:e2e_request_latency_seconds_count": len(requests),
            "dsv2:request_queue_time_seconds_count": len(requests),
            "dsv2:request_prefill_time_seconds_count": len(requests),
            "dsv2:request_decode_time_seconds_count": len(requests),
            "dsv2:inter_token_latency_seconds_count": received - len(requests),
            "dsv2:request_generation_tokens_sum": received,
            "dsv2:request_prompt_tokens_sum": sum(len(p.split(",")) for _, p in requests),
            "dsv2:num_requests_running": 0,
            "dsv2:num_requests_waiting": 0,
            'up{job="dsv2-standalone"}': 1,
        }
        config = json.load(open(os.path.join(MODEL, "config.json")))
        for expr, want in checks.items():
            got = scalar(base, expr)
            if got != want:
                fail(f"{expr} = {got}, expected {want}")
        fan_out = scalar(base, "dsv2:moe_max_workers_per_token")
        if fan_out is None or fan_out < 1 or fan_out > config["topk_group"]:
            fail(f"dsv2:moe_max_workers_per_token = {fan_out}, topk_group = {config['topk_group']}")
        if scalar(base, "process_resident_memory_bytes") < (1 << 20):
            fail("process_resident_memory_bytes below 1 MiB")

        # Every expression of the dashboard and the rules evaluates.
        dashboard = json.load(open(os.path.join(ROOT, "deploy/grafana/dsv2-serve.json")))
        exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
        rules = open(os.path.join(ROOT, "deploy/prometheus/dsv2-alerts.yml")).read()
        exprs += [m.strip() for m in re.findall(r"expr: >\n((?:          .*\n)+)", rules)]
        exprs += re.findall(r"expr: ([^>\n].*)", rules)
        for expr in exprs:
            concrete = expr.replace("$__rate_interval", "1m").replace("$job", "dsv2.*")
            answer = query(base, concrete)
            if answer.get("status") != "success":
                fail(f"{concrete}: {answer.get('error')}")
        # And the server loaded the rules.
        with urllib.request.urlopen(base + "/api/v1/rules", timeout=10) as r:
            loaded = sum(len(g["rules"]) for g in json.load(r)["data"]["groups"])
        if loaded != rules.count("- alert:"):
            fail(f"Prometheus loaded {loaded} rules")
        print(f"OK: {received} tokens, {len(requests)} requests, fan-out {fan_out:g} <= "
              f"topk_group {config['topk_group']}, {len(exprs)} expressions evaluated")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
