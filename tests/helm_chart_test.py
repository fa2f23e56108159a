#!/usr/bin/env python3
"""The Helm chart (helm/dsv2-serve), rendered by Helm's own code and checked
against Kubernetes' schema and against the binaries (docs/kubernetes.md).

1. Render: Helm v4's install action (helm-sdkpy, which bundles Helm's Go
   library) installs the chart with each values file — the defaults and
   helm/dsv2-serve/ci/*-values.yaml — against a fake Kubernetes API server
   in this process (discovery and create only; Helm's release storage in
   memory, HELM_DRIVER=memory). Helm validates the values against
   values.schema.json, renders every template, builds the objects against
   the API server's discovery, and creates them: the fake server receives
   exactly what a cluster would.
2. Validate: every object of a built-in kind against the OpenAPI schema of
   Kubernetes 1.30 (kubernetes-validate, strict: no unknown fields); the
   custom resources (cert-manager Certificate, Prometheus Operator
   ServiceMonitor and PrometheusRule) only for apiVersion, kind and name,
   their schemas not being bundled. The values files pass yamllint.
3. Refusals: values the schema must refuse are refused, naming the field.
4. No drift from the binaries: every server container's arguments (with
   $(POD_NAME) etc. substituted) are run through the binary with
   --check_flags; ports, probes, Services, the controller's and the
   advertised addresses, certificate identities and the expert topology
   agree.
5. Serve: the CPU values' rendered workloads are started as processes on
   loopback with their rendered arguments (addresses mapped to loopback
   ports, the model to the bundled demo model) and a greedy request is
   served through the rendered router.

usage: helm_chart_test.py BUILD_DIR (with the Python of .venv, which has the chart tools)
Exits 77 (skipped) only when the chart tools (helm/requirements.txt, which
scripts/install-deps.sh installs) are missing.
"""
import asyncio
import copy
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "helm/dsv2-serve")
K8S_VERSION = "1.30.0"

# Helm keeps its release records in memory. Go reads the environment the
# process started with, so the script runs itself again with it set.
if os.environ.get("HELM_DRIVER") != "memory":
    os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, HELM_DRIVER="memory"))

try:
    import yaml
    import kubernetes_validate
    from helm_sdkpy.actions import Configuration, Install
except ImportError as e:
    print(f"SKIP: {e} (scripts/install-deps.sh installs helm/requirements.txt)")
    sys.exit(77)


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------
# A fake Kubernetes API server: discovery of the kinds the chart uses, empty
# lists, 404 for single objects, and creation (recorded).

RESOURCES = [  # group, version, kind, plural, namespaced
    ("", "v1", "ConfigMap", "configmaps", True), ("", "v1", "Secret", "secrets", True),
    ("", "v1", "Service", "services", True), ("", "v1", "Pod", "pods", True),
    ("", "v1", "Namespace", "namespaces", False),
    ("apps", "v1", "Deployment", "deployments", True),
    ("apps", "v1", "StatefulSet", "statefulsets", True),
    ("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", True),
    ("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", True),
    ("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", True),
    ("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors", True),
    ("monitoring.coreos.com", "v1", "PrometheusRule", "prometheusrules", True),
    ("cert-manager.io", "v1", "Certificate", "certificates", True),
]
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "Certificate"}


class FakeApiServer:
    def __init__(self):
        self.created = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                parts = [p for p in url.path.split("/") if p]
                if url.path == "/version":
                    return self.send(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0"})
                if url.path == "/api":
                    return self.send(200, {"kind": "APIVersions", "versions": ["v1"]})
                if url.path == "/apis":
                    groups = {}
                    for g, v, *_ in RESOURCES:
                        if g:
                            groups.setdefault(g, v)
                    return self.send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                        {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                         "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}}
                        for g, v in groups.items()]})
                if parts == ["api", "v1"] or (parts and parts[0] == "apis" and len(parts) == 3):
                    group, version = ("", "v1") if parts[0] == "api" else (parts[1], parts[2])
                    return self.send(200, {
                        "kind": "APIResourceList", "apiVersion": "v1",
                        "groupVersion": f"{group}/{version}" if group else version,
                        "resources": [{"name": p, "namespaced": ns, "kind": k, "singularName": "",
                                       "verbs": ["create", "get", "list", "delete", "patch"]}
                                      for g, v, k, p, ns in RESOURCES
                                      if g == group and v == version]})
                if parts and parts[-1] in {r[3] for r in RESOURCES}:
                    return self.send(200, {"kind": "List", "apiVersion": "v1",
                                           "metadata": {"resourceVersion": "1"}, "items": []})
                return self.send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                       "reason": "NotFound", "code": 404})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                obj = json.loads(body)
                server.created.append(copy.deepcopy(obj))
                obj.setdefault("metadata", {}).update(resourceVersion="1", uid="u")
                return self.send(201, obj)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def kubeconfig(self, path):
        with open(path, "w") as f:
            yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {
                    "server": f"http://127.0.0.1:{self.httpd.server_address[1]}"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
                "current-context": "fake", "users": [{"name": "u", "user": {"token": "t"}}]}, f)


def render(api, kubeconfig, values, release="rel", namespace="dsv2"):
    """Installs the chart with `values` through Helm; returns (objects the
    API server received, hook objects, Helm's manifest)."""
    api.created.clear()
    config = Configuration(namespace=namespace, kubeconfig=kubeconfig)
    result = asyncio.run(Install(config).run(release, CHART, values=values, wait=False,
                                             timeout=60))
    hooks = [yaml.safe_load(h["manifest"]) for h in result.get("hooks") or []]
    return list(api.created), hooks, result["manifest"]


# ---------------------------------------------------------------------------
# Checks on the rendered objects.

BINARIES = {
    "dsv2-controller": "services/controller/dsv2-controller",
    "dsv2-router": "services/router/dsv2-router",
    "dsv2-attention": "services/attention/dsv2-attention",
    "dsv2-expert": "services/expert/dsv2-expert",
}


def workloads(objects):
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def flag(args, name):
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def pod_env(workload, namespace):
    name = workload["metadata"]["name"] + ("-0" if workload["kind"] == "StatefulSet" else "-x")
    return {"POD_NAME": name, "POD_IP": "10.1.2.3", "POD_NAMESPACE": namespace}


def substitute(arg, env):
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)


def check_objects(label, objects, hooks, build, namespace):
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
        if o.get("metadata", {}).get("namespace", namespace) != namespace:
            fail(f"{label}: {o['kind']} {o['metadata']['name']} outside the release namespace")
    # Schema.
    for o in objects + hooks:
        if o["kind"] in CUSTOM_KINDS:
            if not o.get("apiVersion") or not o.get("metadata", {}).get("name"):
                fail(f"{label}: {o['kind']} without apiVersion or name")
            continue
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{label}: {o['kind']} {o['metadata']['name']}: {e.message} at "
                 f"{'/'.join(map(str, e.path))}")
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    controller = next(w for w in workloads(objects) if w["metadata"]["name"].endswith("-controller"))
    controller_args = controller["spec"]["template"]["spec"]["containers"][0]["args"]
    certificates = {c["spec"]["secretName"]: c for c in by_kind.get("Certificate", [])}
    checked = 0
    for w in workloads(objects):
        pod = w["spec"]["template"]
        labels = pod["metadata"]["labels"]
        if w["spec"]["selector"]["matchLabels"].items() - labels.items():
            fail(f"{label}: {w['metadata']['name']}'s selector does not select its pods")
        for c in pod["spec"]["containers"]:
            binary = c["command"][0]
            if binary not in BINARIES:
                fail(f"{label}: unknown binary {binary}")
            env = pod_env(w, namespace)
            args = [substitute(a, env) for a in c["args"]]
            # The binary takes every flag.
            out = subprocess.run([os.path.join(build, BINARIES[binary])] + args + ["--check_flags"],
                                 capture_output=True, text=True, timeout=30)
            if out.returncode != 0 or "flags ok" not in out.stdout:
                fail(f"{label}: {binary} refuses its arguments {args}: {out.stderr.strip()}")
            checked += 1
            # Ports: each listen flag's port is the container port of that name.
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            for name, port_name in (("listen", "grpc"), ("http_listen", "http"),
                                    ("metrics_listen", "metrics"), ("data_listen", "data")):
                value = flag(args, name)
                if value is not None and int(value.rsplit(":", 1)[1]) != ports.get(port_name):
                    fail(f"{label}: {binary} --{name}={value} but container port {port_name} "
                         f"is {ports.get(port_name)}")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                p = c.get(probe, {})
                port = (p.get("grpc") or p.get("tcpSocket") or {}).get("port")
                if "exec" in p:
                    port = int(p["exec"]["command"][3].rsplit(":", 1)[1])
                if port != ports["grpc"]:
                    fail(f"{label}: {binary} {probe} checks port {port}, not {ports['grpc']}")
            # The controller address is the controller's Service and port.
            if binary != "dsv2-controller":
                host, port = flag(args, "controller").rsplit(":", 1)
                svc = services.get(host)
                if svc is None or svc["spec"]["selector"] != controller["spec"]["selector"]["matchLabels"] \
                        or int(port) not in [p["port"] for p in svc["spec"]["ports"]]:
                    fail(f"{label}: {binary} --controller={host}:{port} is not the controller's Service")
            # Workers advertise their pod's DNS name under the StatefulSet's
            # headless Service, which selects them and publishes not-ready pods.
            if w["kind"] == "StatefulSet":
                headless = services.get(w["spec"]["serviceName"])
                if headless is None or headless["spec"].get("clusterIP") != "None" or \
                        not headless["spec"].get("publishNotReadyAddresses") or \
                        headless["spec"]["selector"].items() - labels.items():
                    fail(f"{label}: {w['metadata']['name']}'s serviceName is not its headless Service")
                want = f"{env['POD_NAME']}.{w['spec']['serviceName']}.{namespace}.svc:{ports['grpc']}"
                if flag(args, "advertise") != want or flag(args, "worker_id") != env["POD_NAME"]:
                    fail(f"{label}: {binary} advertises {flag(args, 'advertise')}, not {want}")
            # TLS: each process's certificate names it (role and id) and the
            # names it is dialled by.
            cert_file = flag(args, "tls_cert")
            if cert_file and certificates:
                owner = env["POD_NAME"] if w["kind"] == "StatefulSet" else w["metadata"]["name"]
                cert = next((c for n, c in certificates.items() if n.endswith("-" + owner)), None)
                role = binary.split("-", 1)[1]
                if cert is None or cert["spec"]["uris"] != [f"spiffe://dsv2/{role}/{owner}"]:
                    fail(f"{label}: no certificate for {owner} as {role}")
                if w["kind"] == "StatefulSet" and flag(args, "advertise").rsplit(":", 1)[0] \
                        not in cert["spec"]["dnsNames"]:
                    fail(f"{label}: {owner}'s certificate does not name its advertised address")
    # Every Service's target ports are named ports of the pods it selects.
    for s in services.values():
        pods = [w["spec"]["template"] for w in workloads(objects)
                if not s["spec"]["selector"].items() - w["spec"]["template"]["metadata"]["labels"].items()]
        if not pods:
            fail(f"{label}: Service {s['metadata']['name']} selects no workload")
        names = {p["name"] for pod in pods for c in pod["spec"]["containers"] for p in c["ports"]}
        for p in s["spec"]["ports"]:
            if p["targetPort"] not in names:
                fail(f"{label}: Service {s['metadata']['name']} targets port {p['targetPort']}")
    # The topology: each routing group on `--replicas` expert workers needs
    # at least that many (the controller places groups on slots).
    experts = next(w for w in workloads(objects) if w["metadata"]["name"].endswith("-expert"))
    if experts["spec"]["replicas"] < int(flag(controller_args, "replicas")):
        fail(f"{label}: {experts['spec']['replicas']} expert workers for replication "
             f"{flag(controller_args, 'replicas')}")
    # The helm test hook talks to the router's Service.
    for hook in hooks:
        script = hook["spec"]["containers"][0]["args"][0]
        router = next(n for n in services if n.endswith("-router"))
        if f"--addr {router}:{services[router]['spec']['ports'][0]['port']}" not in script:
            fail(f"{label}: the test hook does not call the router's Service")
    return checked, by_kind


# ---------------------------------------------------------------------------
# The CPU values' workloads as processes on loopback.

def serve_on_loopback(objects, build, tmp, namespace):
    model = os.path.join(ROOT, "models/demo-v2")
    order = ["controller", "expert", "attention", "router"]
    ws = sorted(workloads(objects), key=lambda w: order.index(w["metadata"]["name"].rsplit("-", 1)[1]))
    procs, ports = [], {}
    try:
        for w in ws:
            component = w["metadata"]["name"].rsplit("-", 1)[1]
            c = w["spec"]["template"]["spec"]["containers"][0]
            for i in range(w["spec"].get("replicas", 1) if w["kind"] == "StatefulSet" else 1):
                env = pod_env(w, namespace)
                env["POD_NAME"] = f"{w['metadata']['name']}-{i}"
                args = []
                for a in (substitute(x, env) for x in c["args"]):
                    name = a[2:].split("=", 1)[0]
                    if name == "model":
                        a = f"--model={model}"
                    elif name in ("listen", "http_listen", "metrics_listen", "data_listen"):
                        a = f"--{name}=127.0.0.1:0"
                    elif name == "controller":
                        a = f"--controller=127.0.0.1:{ports['controller']}"
                    elif name == "advertise":
                        continue  # Loopback: the listen address is the one to dial.
                    args.append(a)
                port_file = f"{tmp}/{env['POD_NAME']}.port"
                log = open(f"{tmp}/{env['POD_NAME']}.log", "w")
                procs.append(subprocess.Popen(
                    [os.path.join(build, BINARIES[c["command"][0]])] + args +
                    [f"--port_file={port_file}"], stdout=log, stderr=log))
                end = time.time() + 60
                while not (os.path.exists(port_file) and open(port_file).read().strip()):
                    if procs[-1].poll() is not None or time.time() > end:
                        fail(f"{env['POD_NAME']} did not start: " + open(log.name).read()[-1500:])
                    time.sleep(0.05)
                ports.setdefault(component, int(open(port_file).read()))
        dsv2 = os.path.join(build, "tools/dsv2/dsv2")
        addr = f"127.0.0.1:{ports['router']}"
        subprocess.run([dsv2, "health", "--addr", addr, "--wait", "60"], check=True,
                       capture_output=True, timeout=90)
        out = subprocess.run([dsv2, "client", "--addr", addr, "--tokens", "1,2,3",
                              "--max-tokens", "4", "--ignore-eos"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0 or len(re.findall(r"\d+", out.stdout)) != 4:
            fail(f"no greedy answer through the rendered router: {out.stdout} {out.stderr}")
        return len(procs)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    build = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="dsv2-helm-")
    api = FakeApiServer()
    kubeconfig = f"{tmp}/kubeconfig"
    api.kubeconfig(kubeconfig)
    namespace = "dsv2"
    try:
        files = sorted(glob.glob(os.path.join(CHART, "ci/*-values.yaml")))
        if len(files) < 3:
            fail(f"expected 3 values files in ci/, found {files}")
        lint = subprocess.run([sys.executable, "-m", "yamllint", "-d",
                               "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}",
                               os.path.join(CHART, "values.yaml"), os.path.join(CHART, "Chart.yaml")] + files,
                              capture_output=True, text=True)
        if lint.returncode != 0:
            fail("yamllint: " + lint.stdout)
        summary = []
        for path in [None] + files:
            label = os.path.basename(path) if path else "values.yaml"
            values = yaml.safe_load(open(path)) if path else {}
            try:
                objects, hooks, manifest = render(api, kubeconfig, values, namespace=namespace)
            except Exception as e:
                fail(f"{label}: Helm refused the chart: {e}")
            checked, by_kind = check_objects(label, objects, hooks, build, namespace)
            summary.append(f"{label}: {len(objects)} objects "
                           f"({', '.join(f'{len(v)} {k}' for k, v in sorted(by_kind.items()))}), "
                           f"{checked} containers' flags checked")
            if label == "cpu-small-values.yaml":
                cpu_objects = objects

        # What the schema must refuse.
        refusals = [
            ({"image": {"flavor": "tpu"}}, "flavor"),
            ({"gpu": {"enabled": True}}, "flavor"),
            ({"tls": {"enabled": True}}, "tokensSecret"),
            ({"attention": {"replicas": 0}}, "replicas"),
            ({"expert": {"extraArgs": ["-x"]}}, "extraArgs"),
            ({"ports": {"grpc": 70000}}, "grpc"),
            ({"routr": {}}, "routr"),
        ]
        for values, field in refusals:
            try:
                render(api, kubeconfig, values, namespace=namespace)
            except Exception as e:
                if field not in str(e):
                    fail(f"{values} refused without naming {field}: {e}")
                continue
            fail(f"{values} was accepted")
        # A flag the binary does not take is caught by the flag check.
        objects, hooks, _ = render(api, kubeconfig, {"expert": {"extraArgs": ["--batch_windw_us=5"]}},
                                   namespace=namespace)
        expert = next(w for w in workloads(objects) if w["metadata"]["name"].endswith("-expert"))
        args = [substitute(a, pod_env(expert, namespace))
                for a in expert["spec"]["template"]["spec"]["containers"][0]["args"]]
        out = subprocess.run([os.path.join(build, BINARIES["dsv2-expert"])] + args + ["--check_flags"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0 or "batch_windw_us" not in out.stderr:
            fail(f"a misspelled flag passed the check: {out.stdout} {out.stderr}")

        served = serve_on_loopback(cpu_objects, build, tmp, namespace)
        for line in summary:
            print(line)
        print(f"OK: rendered by Helm, valid for Kubernetes {K8S_VERSION}, {len(refusals)} bad values "
              f"refused, flags agree with the binaries; the CPU values' {served} processes served "
              f"a greedy request on loopback")
    finally:
        api.httpd.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
