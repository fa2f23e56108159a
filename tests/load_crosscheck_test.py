#!/usr/bin/env python3
"""dsv2-load against what the server and this test measure themselves
(docs/load-tests.md).

Runs a short closed-loop load and a short Poisson load against a fresh
dsv2-standalone (tiny model), then requires:
- the tool's counts equal the server's metrics exactly: requests
  (dsv2:request_success_total), output tokens (dsv2:generation_tokens_total),
  prompt tokens (dsv2:request_prompt_tokens_sum);
- its latencies agree with the server's own and with this test's clock: the
  server's mean TTFT and E2E (its histograms' sum / count) are at most the
  tool's (the client sees everything the server does, plus the network) and
  within 50 ms of them on loopback; every request's send and end lie within
  the wall-clock window this test measured around the tool, and its TTFT is
  at most its E2E;
- malformed flags and datasets are refused, exit 2, with a first line that
  names the problem (an unknown flag adds the list of flags), sending nothing.

usage: load_crosscheck_test.py BUILD_DIR
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def main():
    build = sys.argv[1]
    load = os.path.join(build, "tools/load/dsv2-load")
    tmp = tempfile.mkdtemp(prefix="dsv2-load-")
    server = subprocess.Popen(
        [os.path.join(build, "services/standalone/dsv2-standalone"),
         "--model", os.path.join(ROOT, "tests/data/tiny-v2"), "--listen", "127.0.0.1:0",
         "--port_file", f"{tmp}/port", "--metrics_listen", "127.0.0.1:0",
         "--metrics_port_file", f"{tmp}/metrics_port", "--kv_cache_mib", "64", "--http_listen="],
        stderr=open(f"{tmp}/server.log", "w"))
    try:
        end = time.time() + 60
        while not (os.path.exists(f"{tmp}/metrics_port") and os.path.exists(f"{tmp}/port")):
            if server.poll() is not None or time.time() > end:
                fail("dsv2-standalone did not start: " + open(f"{tmp}/server.log").read()[-2000:])
            time.sleep(0.05)
        addr = "127.0.0.1:" + open(f"{tmp}/port").read().strip()
        metrics_port = open(f"{tmp}/metrics_port").read().strip()

        runs = [
            ["--concurrency", "4", "--num-requests", "24", "--input-len", "12",
             "--input-jitter", "4", "--max-tokens", "6", "--ignore-eos", "--warmup", "0"],
            ["--rate", "40", "--num-requests", "30", "--input-len", "8", "--prefix-len", "4",
             "--max-tokens", "5", "--ignore-eos"],
        ]
        requests = output = prompt = 0
        ttft = []
        e2e = []
        for i, flags in enumerate(runs):
            before = time.time()
            out = subprocess.run([load, "--addr", addr, "--json", f"{tmp}/run{i}.json", "--quiet"] +
                                 flags, capture_output=True, text=True, timeout=120)
            after = time.time()
            if out.returncode != 0:
                fail(f"dsv2-load {flags}: {out.stderr}")
            if "TTFT" not in out.stdout or "requests" not in out.stdout:
                fail(f"no summary table: {out.stdout}")
            report = json.load(open(f"{tmp}/run{i}.json"))
            records = report["requests"]
            stage = report["stages"][0]
            if stage["succeeded"] != len(records) or stage["errors"]:
                fail(f"run {i}: {stage}")
            # The tool's clock runs from its start; this test's window bounds it.
            span = max(r["end"] for r in records) - min(r["start"] for r in records)
            if span > after - before:
                fail(f"run {i}: requests span {span:.3f} s, longer than the tool ran "
                     f"({after - before:.3f} s)")
            for r in records:
                if not (0 <= r["start"] <= r["first_token"] <= r["end"] <= after - before):
                    fail(f"run {i}: request timings out of order or outside the run: {r}")
                if r["output_tokens"] != len(r["token_times"]):
                    fail(f"run {i}: {r['output_tokens']} tokens, {len(r['token_times'])} times")
            requests += len(records)
            output += sum(r["output_tokens"] for r in records)
            prompt += sum(r["prompt_tokens"] for r in records)
            ttft += [r["first_token"] - r["start"] for r in records]
            e2e += [r["end"] - r["start"] for r in records]

        m = metrics(metrics_port)
        server_requests = sum(v for k, v in m.items() if k.startswith("dsv2:request_success_total"))
        for what, tool, srv in [("requests", requests, server_requests),
                                ("output tokens", output, m["dsv2:generation_tokens_total"]),
                                ("prompt tokens", prompt, m["dsv2:request_prompt_tokens_sum"])]:
            if tool != srv:
                fail(f"{what}: dsv2-load counted {tool}, the server {srv:g}")
        for what, tool, name in [("TTFT", ttft, "dsv2:time_to_first_token_seconds"),
                                 ("E2E", e2e, "dsv2:e2e_request_latency_seconds")]:
            tool_mean = sum(tool) / len(tool)
            server_mean = m[name + "_sum"] / m[name + "_count"]
            if not (server_mean <= tool_mean + 1e-4 and tool_mean - server_mean < 0.05):
                fail(f"{what}: dsv2-load mean {tool_mean * 1e3:.2f} ms, server "
                     f"{server_mean * 1e3:.2f} ms")

        # Refusals: exit 2, a first line naming the problem, nothing sent.
        with open(f"{tmp}/bad.jsonl", "w") as f:
            f.write('{"prompt": "ok"}\n{"token_ids": "x"}\n')
        for flags, says in [(["--rate", "-1"], "--rate"),
                            (["--rate", "1", "--burst", "2"], "at most one"),
                            (["--ramp", "1,x"], "--ramp"),
                            (["--dataset", f"{tmp}/bad.jsonl"], "bad.jsonl:2"),
                            (["--prefix-len", "200"], "--prefix-len"),
                            (["--plot", f"{tmp}/p.png"], "--plot needs --ramp"),
                            (["--concurency", "2"], "concurency")]:
            out = subprocess.run([load, "--addr", addr, "--quiet"] + flags, capture_output=True,
                                 text=True, timeout=60)
            first = out.stderr.splitlines()[0] if out.stderr else ""
            if out.returncode != 2 or says not in first or not first.startswith("dsv2-load: "):
                fail(f"{flags}: exit {out.returncode}, {out.stderr!r}")
        if metrics(metrics_port)["dsv2:generation_tokens_total"] != output:
            fail("a refused run sent requests")
        print(f"OK: {requests} requests, {output} output and {prompt} prompt tokens counted alike; "
              f"mean TTFT {sum(ttft) / len(ttft) * 1e3:.2f} ms, E2E "
              f"{sum(e2e) / len(e2e) * 1e3:.2f} ms agree with the server's")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
