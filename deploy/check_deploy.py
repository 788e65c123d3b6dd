#!/usr/bin/env python3
"""Checks deploy/: that the manifests parse and agree with each other and with modelpool_server.

Always (needs PyYAML, Debian's python3-yaml):
  every YAML file of deploy/kubernetes/ parses (all documents) and holds the kinds expected; the Deployment's
  probes, args, Prometheus annotations and the Service point at the container's port; the probes use the
  server's routes (startup and readiness /readyz, liveness /healthz); the server config in the ConfigMap parses,
  and its shutdown grace plus the preStop sleep fits in terminationGracePeriodSeconds, its memory budget in the
  container's memory limit with headroom, its cache_dir on a writable volume; the HPA scales the Deployment on
  a metric the prometheus-adapter rule exposes; kustomization.yaml lists every manifest. Then a self-test feeds
  the same checks broken copies of the manifests (a wrong port, path, grace, metric...) and requires each to
  be caught, so that the checks above cannot pass vacuously.
With --server BINARY:
  `BINARY --check-config` accepts the ConfigMap's config; the real server, run with that config on 127.0.0.1
  and an ephemeral port, answers 200 on every probed path once ready, serves every configured model on
  /v1/models, exposes on /metrics the series the adapter rule reads, and exits 0 on SIGTERM.
With --nginx (and --server):
  `nginx -t` accepts deploy/nginx/nginx.conf under a temporary prefix; then three server replicas behind that
  config (its listen port and upstream list rewritten to free ports) answer GET /v1/models, POST /v1/embeddings
  (X-Request-Id passed through) and a streamed chat completion through nginx, and still do after one replica
  was stopped (nginx moves to the next upstream).

Traffic goes to 127.0.0.1 only; every wait has a deadline; every process started is killed on exit, and dies
with this script. Exit status 0 when everything holds, 1 with one line per problem (file: field: what) else.

    python3 deploy/check_deploy.py --server build/release/bin/modelpool_server --nginx
"""

import argparse
import copy
import ctypes
import http.client
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
from pathlib import Path

try:
    import yaml
except ImportError:
    sys.exit("check_deploy.py: needs PyYAML (Debian: apt-get install python3-yaml)")

DEPLOY = Path(__file__).resolve().parent
KUBERNETES = DEPLOY / "kubernetes"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
UPSTREAMS_CONF = DEPLOY / "nginx" / "upstream-servers.conf"

# The server's routes that a probe may use, and which probe must use which (liveness must not be /readyz: a
# draining or degraded pod would be restarted instead of taken out of the Service).
PROBE_PATHS = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
# The least memory the container must have beyond the pool's budget, for the server's own use (request and
# response bodies, allocator slack): see deploy/README.md, "Sizing".
MIN_HEADROOM_MIB = 256
# The least time the startup probe must allow for loading the models.
MIN_STARTUP_SECONDS = 60
DEFAULT_SHUTDOWN_GRACE_MS = 30000  # the server's default server.shutdown_grace_ms


class CheckFailed(Exception):
    """A live check failed: the message names what and where."""


# ---- static checks -----------------------------------------------------------------------------------------


def load_manifests():
    """Every document of every YAML file under deploy/kubernetes/: [(file name, document)], and parse errors."""
    docs, problems = [], []
    files = sorted(p for p in KUBERNETES.iterdir() if p.suffix in (".yaml", ".yml"))
    if not files:
        problems.append(f"{rel(KUBERNETES)}: no YAML files")
    for path in files:
        try:
            with path.open(encoding="utf-8") as f:
                for doc in yaml.safe_load_all(f):
                    if doc is not None:
                        docs.append((path.name, doc))
        except yaml.YAMLError as e:
            problems.append(f"{rel(path)}: does not parse: {e}")
    return docs, problems


def rel(path):
    try:
        return str(Path(path).resolve().relative_to(DEPLOY.parent))
    except ValueError:
        return str(path)


def mebibytes(quantity):
    """A Kubernetes memory quantity ("2Gi", "1536Mi", "2G", "1073741824") in MiB, or None."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(Ki|Mi|Gi|Ti|k|M|G|T)?\s*", str(quantity))
    if not match:
        return None
    scale = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9,
             "T": 10**12}[match.group(2)]
    return float(match.group(1)) * scale / 2**20


def option(args, name):
    """The value of `--name V` or `--name=V` in an argument list, or None."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return str(args[i + 1])
        if str(arg).startswith(name + "="):
            return str(arg)[len(name) + 1:]
    return None


def prestop_seconds(lifecycle):
    """The preStop sleep in seconds (sleep action, or exec of `sleep N` / `sh -c "sleep N"`), or None."""
    pre_stop = (lifecycle or {}).get("preStop") or {}
    if "sleep" in pre_stop:
        return pre_stop["sleep"].get("seconds")
    command = " ".join(str(c) for c in (pre_stop.get("exec") or {}).get("command") or [])
    match = re.search(r"(?:^|\s|/)sleep\s+([0-9.]+)", command)
    return float(match.group(1)) if match else None


def exposed_metrics(rule):
    """(series name the rule's seriesQuery selects, the name prometheus-adapter gives it) for one rule."""
    match = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule.get("seriesQuery") or "")
    if not match:
        return None, None
    series = match.group(1)
    name = rule.get("name") or {}
    matches = name.get("matches") or "^(.*)$"
    found = re.search(matches, series)
    if not found:
        return series, None
    # The adapter's default `as` is "$1" when the pattern has one group, else the whole name; Go's $1/${1}
    # become Python's \g<1>.
    as_ = name.get("as") or ("$1" if re.compile(matches).groups == 1 else "$0")
    as_ = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", as_)
    return series, found.expand(as_)


def check_manifests(docs):
    """The cross-checks on parsed manifests: (problems, facts for the live checks)."""
    problems = []
    facts = {}

    def problem(file, field, message):
        problems.append(f"deploy/kubernetes/{file}: {field}: {message}")

    def of_kind(kind):
        return [(f, d) for f, d in docs if isinstance(d, dict) and d.get("kind") == kind]

    def one(kind, what=None):
        found = [(f, d) for f, d in of_kind(kind) if what is None or what(d)]
        if len(found) != 1:
            problems.append(f"deploy/kubernetes: expected one {kind}, found {len(found)}")
            return None, None
        return found[0]

    dep_file, deployment = one("Deployment")
    svc_file, service = one("Service")
    hpa_file, hpa = one("HorizontalPodAutoscaler")
    cfg_file, config_map = one("ConfigMap", lambda d: "config.json" in (d.get("data") or {}))
    adapter_file, adapter = one("ConfigMap", lambda d: "config.yaml" in (d.get("data") or {}))
    kust_file, kustomization = one("Kustomization")

    # kustomization.yaml lists every other manifest, and only existing files.
    if kustomization is not None:
        listed = set(kustomization.get("resources") or [])
        present = {f for f, _ in docs if f != kust_file}
        for missing in sorted(present - listed):
            problem(kust_file, "resources", f"does not list {missing}")
        for extra in sorted(listed - present):
            problem(kust_file, "resources", f"lists {extra}, which is not a manifest here")

    # The server config.
    config = None
    if config_map is not None:
        try:
            config = json.loads(config_map["data"]["config.json"])
            facts["config_json"] = config_map["data"]["config.json"]
            facts["models"] = [m.get("name") for m in config.get("models") or []]
        except (json.JSONDecodeError, TypeError) as e:
            problem(cfg_file, "data.config.json", f"is not JSON: {e}")
    grace_ms = DEFAULT_SHUTDOWN_GRACE_MS
    if config is not None:
        grace_ms = ((config.get("server") or {}).get("shutdown_grace_ms", DEFAULT_SHUTDOWN_GRACE_MS))
        if not (config.get("pool") or {}).get("memory_limit_mb"):
            problem(cfg_file, "data.config.json: pool.memory_limit_mb",
                    "not set (the default, 80% of the node's memory, ignores the container's limit)")

    # The Deployment's server container.
    container, port_number, port_name, pod_labels = None, None, None, {}
    if deployment is not None:
        pod = (deployment.get("spec") or {}).get("template") or {}
        pod_labels = (pod.get("metadata") or {}).get("labels") or {}
        pod_spec = pod.get("spec") or {}
        containers = pod_spec.get("containers") or []
        if len(containers) != 1:
            problem(dep_file, "spec.template.spec.containers", f"expected one container, found {len(containers)}")
        if containers:
            container = containers[0]
        selector = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
            problem(dep_file, "spec.selector.matchLabels",
                    f"{selector} does not select the pod labels {pod_labels}")
    if container is not None:
        c = "spec.template.spec.containers[0]"
        ports = container.get("ports") or []
        http_ports = [p for p in ports if p.get("name") == "http"]
        if len(http_ports) != 1:
            problem(dep_file, f"{c}.ports", "expected one port named http")
        else:
            port_number, port_name = http_ports[0].get("containerPort"), "http"
            facts["container_port"] = port_number

        args = [str(a) for a in (container.get("args") or [])]
        if option(args, "--port") != str(port_number):
            problem(dep_file, f"{c}.args",
                    f"--port is {option(args, '--port')}, the container port is {port_number}")
        if option(args, "--host") not in ("0.0.0.0", "::"):
            problem(dep_file, f"{c}.args", f"--host is {option(args, '--host')}: the kubelet's probes and the "
                    "Service reach the pod's IP, so listen on 0.0.0.0 (or ::)")

        # --config names a file of a volume made from the server's ConfigMap.
        config_path = option(args, "--config")
        mounts = container.get("volumeMounts") or []
        volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
        if config_path is None:
            problem(dep_file, f"{c}.args", "no --config")
        elif config_map is not None:
            mount = next((m for m in mounts if config_path == f"{m.get('mountPath', '').rstrip('/')}/"
                          f"{Path(config_path).name}"), None)
            source = (volumes.get(mount.get("name")) or {}).get("configMap") or {} if mount else {}
            if source.get("name") != config_map["metadata"]["name"]:
                problem(dep_file, f"{c}.args", f"--config {config_path} is not in a volume of ConfigMap "
                        f"{config_map['metadata']['name']}")
            elif Path(config_path).name not in config_map["data"]:
                problem(dep_file, f"{c}.args",
                        f"--config {config_path}: the ConfigMap has no key {Path(config_path).name}")

        # cache_dir on a writable mount when the root file system is read-only.
        read_only_root = (container.get("securityContext") or {}).get("readOnlyRootFilesystem")
        cache_dir = (config or {}).get("cache_dir") or option(args, "--cache-dir") or "/tmp/modelpool-demo"
        writable = [m["mountPath"].rstrip("/") for m in mounts if not m.get("readOnly") and m.get("mountPath")]
        if read_only_root and not any(cache_dir == p or cache_dir.startswith(p + "/") for p in writable):
            problem(dep_file, f"{c}.volumeMounts",
                    f"the cache_dir {cache_dir} is on the read-only root file system")

        # The probes: the server's routes, on the container port.
        facts["probe_paths"] = []
        for probe_name, want_path in PROBE_PATHS.items():
            probe = container.get(probe_name)
            get = (probe or {}).get("httpGet")
            if not get:
                problem(dep_file, f"{c}.{probe_name}", "missing, or not an httpGet probe")
                continue
            if get.get("port") not in (port_name, port_number):
                problem(dep_file, f"{c}.{probe_name}.httpGet.port",
                        f"{get.get('port')!r} is not the container port ({port_name} / {port_number})")
            if get.get("path") != want_path:
                problem(dep_file, f"{c}.{probe_name}.httpGet.path", f"{get.get('path')!r}, expected {want_path}")
            facts["probe_paths"].append(get.get("path"))
            if probe_name == "startupProbe":
                budget = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
                if budget < MIN_STARTUP_SECONDS:
                    problem(dep_file, f"{c}.startupProbe", f"allows {budget} s to load the models, "
                            f"less than {MIN_STARTUP_SECONDS} s")

        # preStop sleep + drain grace < terminationGracePeriodSeconds.
        sleep = prestop_seconds(container.get("lifecycle"))
        period = pod_spec.get("terminationGracePeriodSeconds", 30)
        if sleep is None:
            problem(dep_file, f"{c}.lifecycle.preStop", "no sleep: endpoints may still route to a draining pod")
        elif sleep + grace_ms / 1000 >= period:
            problem(dep_file, "spec.template.spec.terminationGracePeriodSeconds",
                    f"{period} s does not exceed the preStop sleep ({sleep} s) plus {cfg_file}'s "
                    f"server.shutdown_grace_ms ({grace_ms} ms)")

        # Memory: the container's limit covers the pool's budget plus headroom.
        limit = mebibytes(((container.get("resources") or {}).get("limits") or {}).get("memory"))
        budget = ((config or {}).get("pool") or {}).get("memory_limit_mb")
        if limit is None:
            problem(dep_file, f"{c}.resources.limits.memory", "not set")
        elif budget and limit - budget < MIN_HEADROOM_MIB:
            problem(dep_file, f"{c}.resources.limits.memory", f"{limit:.0f} MiB leaves less than "
                    f"{MIN_HEADROOM_MIB} MiB beyond {cfg_file}'s pool.memory_limit_mb ({budget})")

        # Prometheus scrapes the container port, on the path the server serves its metrics.
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        if str(annotations.get("prometheus.io/port")) != str(port_number):
            problem(dep_file, "spec.template.metadata.annotations.prometheus.io/port",
                    f"{annotations.get('prometheus.io/port')!r}, the container port is {port_number}")
        facts["metrics_path"] = annotations.get("prometheus.io/path", "/metrics")

    # The Service sends its port to the container port, to the Deployment's pods.
    if service is not None:
        selector = (service.get("spec") or {}).get("selector") or {}
        if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
            problem(svc_file, "spec.selector", f"{selector} does not select the pod labels {pod_labels}")
        for i, port in enumerate((service.get("spec") or {}).get("ports") or []):
            if port.get("targetPort", port.get("port")) not in (port_name, port_number):
                problem(svc_file, f"spec.ports[{i}].targetPort",
                        f"{port.get('targetPort')!r} is not the container port ({port_name} / {port_number})")

    # The adapter's rules, and the HPA's metrics among the names they expose.
    exposed = {}
    if adapter is not None:
        try:
            rules = (yaml.safe_load(adapter["data"]["config.yaml"]) or {}).get("rules") or []
        except yaml.YAMLError as e:
            problem(adapter_file, "data.config.yaml", f"does not parse: {e}")
            rules = []
        for i, rule in enumerate(rules):
            series, name = exposed_metrics(rule)
            if series is None:
                problem(adapter_file, f"rules[{i}].seriesQuery", "names no metric")
                continue
            if name is None:
                problem(adapter_file, f"rules[{i}].name.matches", f"does not match the series {series}")
                continue
            overrides = (rule.get("resources") or {}).get("overrides") or {}
            resources = {(v or {}).get("resource") for v in overrides.values()}
            if not {"pod", "namespace"} <= resources:
                problem(adapter_file, f"rules[{i}].resources.overrides", "must map labels to pod and namespace")
            query = rule.get("metricsQuery") or ""
            for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
                if placeholder not in query:
                    problem(adapter_file, f"rules[{i}].metricsQuery", f"lacks {placeholder}")
            exposed[name] = series
    if hpa is not None:
        target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if deployment is not None and (target.get("kind"), target.get("name")) != (
                "Deployment", deployment["metadata"]["name"]):
            problem(hpa_file, "spec.scaleTargetRef", f"{target} is not the Deployment "
                    f"{deployment['metadata']['name']}")
        facts["series"] = []
        for i, metric in enumerate((hpa.get("spec") or {}).get("metrics") or []):
            if metric.get("type") not in ("Pods", "Object"):
                continue
            name = ((metric.get(metric["type"].lower()) or {}).get("metric") or {}).get("name")
            if name not in exposed:
                problem(hpa_file, f"spec.metrics[{i}].{metric['type'].lower()}.metric.name",
                        f"{name!r} is not exposed by {adapter_file} (it exposes {sorted(exposed)})")
            else:
                facts["series"].append(exposed[name])
        if not facts["series"]:
            problem(hpa_file, "spec.metrics", "no Pods or Object metric served by the adapter rules")
    return problems, facts


def self_test(docs):
    """Breaks the manifests one way at a time and requires check_manifests to notice each: [problem]."""

    def container(d):
        return find(d, "Deployment")["spec"]["template"]["spec"]["containers"][0]

    def find(d, kind, key=None):
        return next(doc for _, doc in d if doc.get("kind") == kind and (key is None or key in doc.get("data", {})))

    def set_arg(d, name, value):
        args = container(d)["args"]
        args[args.index(name) + 1] = value

    def set_grace(d, ms):
        cm = find(d, "ConfigMap", "config.json")
        config = json.loads(cm["data"]["config.json"])
        config.setdefault("server", {})["shutdown_grace_ms"] = ms
        cm["data"]["config.json"] = json.dumps(config)

    def rename_hpa_metric(d):
        find(d, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"] = "modelpool_unknown"

    breakages = [
        ("--port differs from the container port", "--port is", lambda d: set_arg(d, "--port", "9999")),
        ("readiness probe on another port", "readinessProbe.httpGet.port",
         lambda d: container(d)["readinessProbe"]["httpGet"].update(port=9999)),
        ("liveness probe on /readyz", "livenessProbe.httpGet.path",
         lambda d: container(d)["livenessProbe"]["httpGet"].update(path="/readyz")),
        ("Service targets another port", "targetPort",
         lambda d: find(d, "Service")["spec"]["ports"][0].update(targetPort=9999)),
        ("shutdown grace longer than the termination grace period", "terminationGracePeriodSeconds",
         lambda d: set_grace(d, 600000)),
        ("HPA metric the adapter does not expose", "metric.name", rename_hpa_metric),
        ("memory limit below the pool's budget", "limits.memory",
         lambda d: container(d)["resources"]["limits"].update(memory="1Gi")),
    ]
    missed = []
    for what, field, breakage in breakages:
        broken = copy.deepcopy(docs)
        try:
            breakage(broken)
        except (KeyError, IndexError, StopIteration, ValueError) as e:
            missed.append(f"self-test: cannot apply '{what}' to the manifests ({type(e).__name__}: {e})")
            continue
        problems, _ = check_manifests(broken)
        if not any(field in p for p in problems):
            missed.append(f"self-test: the checks missed: {what} (problems reported: {problems})")
    return missed, len(breakages)


# ---- processes ---------------------------------------------------------------------------------------------


def die_with_parent():
    """preexec_fn: the child gets SIGKILL when this script dies, even by SIGKILL (e.g. a CTest timeout)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Processes:
    """The processes this script started: stopped (SIGTERM, then SIGKILL) when the `with` block ends."""

    def __init__(self):
        self.running = []

    def __enter__(self):
        return self

    def start(self, args, stdout, stderr):
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                   preexec_fn=die_with_parent)
        self.running.append(process)
        return process

    def __exit__(self, *exc):
        for process in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return False


def tail(path, lines=20):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def wait_until(condition, timeout, what):
    """Polls `condition` (returning a true value when met) every 50 ms until `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Server:
    """One modelpool_server on 127.0.0.1 and an ephemeral port."""

    LISTENING = re.compile(r"^modelpool_server: listening on http://127\.0\.0\.1:(\d+)$", re.M)

    def __init__(self, processes, binary, workdir, name, extra_args=()):
        self.name, self.workdir = name, Path(workdir)
        self.stdout, self.stderr = self.workdir / f"{name}.stdout", self.workdir / f"{name}.stderr"
        args = [binary, "--host", "127.0.0.1", "--port", "0", "--cache-dir", str(self.workdir / "cache"),
                *extra_args]
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.process = processes.start(args, out, err)
        self.port = None

    def wait_listening(self, timeout=60):
        def listening():
            if self.process.poll() is not None:
                raise CheckFailed(f"{self.name} exited with {self.process.returncode} before listening:\n"
                                  f"{tail(self.stderr)}")
            match = self.LISTENING.search(self.stdout.read_text(errors="replace"))
            return int(match.group(1)) if match else None

        self.port = wait_until(listening, timeout, f"{self.name}'s 'listening on' line")
        return self.port

    def stop(self, timeout):
        """SIGTERM, then requires exit status 0 within `timeout` seconds."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"{self.name} did not exit within {timeout} s of SIGTERM") from None
        if code != 0:
            raise CheckFailed(f"{self.name} exited with {code} after SIGTERM (want 0):\n{tail(self.stderr)}")


def request(port, method, path, body=None, headers=None, timeout=30):
    """One HTTP request to 127.0.0.1:port: (status, headers, body bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        all_headers.update(headers or {})
        connection.request(method, path, body=data, headers=all_headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def status_of(port, path):
    try:
        return request(port, "GET", path, timeout=5)[0]
    except OSError:
        return None


def expect(port, method, path, body=None, headers=None, where=""):
    """A request that must answer 200: (headers, body)."""
    try:
        status, got_headers, data = request(port, method, path, body, headers)
    except OSError as e:
        raise CheckFailed(f"{where}{method} {path}: {e}") from None
    if status != 200:
        raise CheckFailed(f"{where}{method} {path}: status {status}: {data[:300]!r}")
    return got_headers, data


# ---- live checks -------------------------------------------------------------------------------------------


def check_server(binary, facts, workdir):
    """The shipped config is valid for the real server, which serves what the manifests probe and scrape."""
    config_file = Path(workdir) / "config.json"
    config_file.write_text(facts["config_json"])
    checked = subprocess.run([binary, "--config", str(config_file), "--check-config"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=60)
    if checked.returncode != 0:
        raise CheckFailed(f"deploy/kubernetes/configmap.yaml: data.config.json: modelpool_server --check-config "
                          f"exited with {checked.returncode}: {checked.stdout}{checked.stderr}")
    print("ok: modelpool_server --check-config accepts the ConfigMap's config.json")

    with Processes() as processes:
        server = Server(processes, binary, workdir, "server", ["--config", str(config_file)])
        port = server.wait_listening()
        # The startup probe's wait: every probed path answers 200 once the models loaded.
        for path in dict.fromkeys(facts["probe_paths"]):
            wait_until(lambda: status_of(port, path) == 200, 60, f"GET {path} to answer 200 (the probes' path)")
        paths = ", ".join(dict.fromkeys(facts["probe_paths"]))
        print(f"ok: the server (ConfigMap config, port {port}) answers 200 on {paths}")

        _, body = expect(port, "GET", "/v1/models")
        served = {m.get("id") for m in json.loads(body).get("data", [])}
        missing = [m for m in facts["models"] if m not in served]
        if missing:
            raise CheckFailed(f"deploy/kubernetes/configmap.yaml: models {missing} are not on /v1/models "
                              f"(served: {sorted(served)})")

        _, body = expect(port, "GET", facts["metrics_path"])
        text = body.decode(errors="replace")
        for series in facts["series"]:
            if not re.search(rf"^{re.escape(series)}[{{ ]", text, re.M):
                raise CheckFailed(f"deploy/kubernetes/prometheus-adapter-rules.yaml: seriesQuery: {series} is "
                                  f"not on the server's {facts['metrics_path']}")
        print(f"ok: {facts['metrics_path']} has {', '.join(facts['series'])} (the HPA's series); "
              f"/v1/models lists the {len(facts['models'])} configured models")

        server_config = json.loads(facts["config_json"]).get("server", {})
        grace = server_config.get("shutdown_grace_ms", DEFAULT_SHUTDOWN_GRACE_MS)
        server.stop(timeout=grace / 1000 + 10)
        print("ok: the server exits 0 on SIGTERM")


def nginx_binary(given):
    for candidate in ([given] if given else []) + [shutil.which("nginx"), "/usr/sbin/nginx"]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise CheckFailed("--nginx: no nginx binary (Debian: apt-get install nginx-light, or pass --nginx-binary)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_config_for(ports, listen_port, confdir):
    """Copies nginx.conf into confdir listening on listen_port, with upstream-servers.conf listing `ports`."""
    conf = NGINX_CONF.read_text()
    listen = re.compile(r"^(\s*listen\s+)127\.0\.0\.1:8080;", re.M)
    if len(listen.findall(conf)) != 1:
        raise CheckFailed(f"{rel(NGINX_CONF)}: listen: expected one 'listen 127.0.0.1:8080;'")
    (confdir / "nginx.conf").write_text(listen.sub(rf"\g<1>127.0.0.1:{listen_port};", conf))
    upstreams = UPSTREAMS_CONF.read_text()
    server_line = re.compile(r"^server\s+127\.0\.0\.1:(\d+)(.*;)\s*$", re.M)
    shipped = server_line.findall(upstreams)
    if [p for p, _ in shipped] != ["8001", "8002", "8003"]:
        raise CheckFailed(f"{rel(UPSTREAMS_CONF)}: server: expected 127.0.0.1:8001, 8002 and 8003, "
                          f"found {[p for p, _ in shipped]}")
    parameters = shipped[0][1]
    (confdir / "upstream-servers.conf").write_text(
        "".join(f"server 127.0.0.1:{port}{parameters}\n" for port in ports))


def check_nginx(binary, nginx, workdir):
    """nginx -t on the shipped config; then three replicas behind it answer through nginx, also after one
    of them stopped."""
    prefix = Path(workdir) / "nginx-test"
    prefix.mkdir()
    tested = subprocess.run([nginx, "-t", "-p", str(prefix), "-c", str(NGINX_CONF), "-e", "stderr"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    if tested.returncode != 0:
        raise CheckFailed(f"{rel(NGINX_CONF)}: nginx -t failed: {tested.stderr.strip()}")
    print(f"ok: nginx -t accepts {rel(NGINX_CONF)} under an unprivileged prefix")

    with Processes() as processes:
        replicas = [Server(processes, binary, workdir, f"replica{i}", ["--log-level", "warn"]) for i in range(3)]
        ports = [r.wait_listening() for r in replicas]
        for replica, port in zip(replicas, ports):
            wait_until(lambda: status_of(port, "/readyz") == 200, 60, f"{replica.name}'s /readyz")

        confdir, prefix = Path(workdir) / "nginx-conf", Path(workdir) / "nginx-run"
        confdir.mkdir()
        prefix.mkdir()
        listen_port = free_port()
        nginx_config_for(ports, listen_port, confdir)
        nginx_err = Path(workdir) / "nginx.stderr"
        with nginx_err.open("w") as err:
            proxy = processes.start([nginx, "-p", str(prefix), "-c", str(confdir / "nginx.conf"), "-e", "stderr"],
                                    subprocess.DEVNULL, err)

        def nginx_up():
            if proxy.poll() is not None:
                raise CheckFailed(f"nginx exited with {proxy.returncode}:\n{tail(nginx_err)}")
            return status_of(listen_port, "/healthz") == 200

        wait_until(nginx_up, 15, f"nginx on 127.0.0.1:{listen_port}")
        via = f"through nginx (127.0.0.1:{listen_port} -> {ports}): "

        def traffic(tag):
            for _ in range(3):
                _, body = expect(listen_port, "GET", "/v1/models", where=via)
                if not json.loads(body).get("data"):
                    raise CheckFailed(f"{via}GET /v1/models: no models: {body[:200]!r}")
            request_id = f"check-deploy-{tag}"
            headers, body = expect(listen_port, "POST", "/v1/embeddings",
                                   {"model": "text-embedding-demo", "input": ["one", "two"]},
                                   {"X-Request-Id": request_id}, where=via)
            if headers.get("x-request-id") != request_id:
                raise CheckFailed(f"{via}POST /v1/embeddings: x-request-id {headers.get('x-request-id')!r}, "
                                  f"sent {request_id!r}")
            if len(json.loads(body).get("data", [])) != 2:
                raise CheckFailed(f"{via}POST /v1/embeddings: want 2 embeddings: {body[:200]!r}")
            _, body = expect(listen_port, "POST", "/v1/chat/completions",
                             {"model": "demo-chat", "stream": True, "max_tokens": 8, "seed": 1,
                              "messages": [{"role": "user", "content": "The fox"}]}, where=via)
            events = [line for line in body.decode(errors="replace").splitlines() if line.startswith("data: ")]
            if len(events) < 2 or events[-1] != "data: [DONE]":
                raise CheckFailed(f"{via}streamed chat completion does not end with 'data: [DONE]': "
                                  f"{body[-200:]!r}")
            return request_id

        first_id = traffic("before")
        # One replica stops: requests go on succeeding on the other two (the refused connections are retried).
        replicas[0].stop(timeout=40)
        for round_ in range(3):
            traffic(f"after-{round_}")
        print(f"ok: {via}GET /v1/models, POST /v1/embeddings (X-Request-Id kept) and a streamed chat "
              f"completion, also after replica 127.0.0.1:{ports[0]} stopped")

        log = (prefix / "access.log").read_text(errors="replace") if (prefix / "access.log").exists() else ""
        if f"id={first_id} " not in log or "upstream=127.0.0.1:" not in log:
            raise CheckFailed(f"{rel(NGINX_CONF)}: access_log: no line with id={first_id} and an upstream:\n"
                              f"{log[-1000:]}")
        proxy.send_signal(signal.SIGQUIT)  # graceful stop
        proxy.wait(timeout=15)
        for replica in replicas[1:]:
            replica.stop(timeout=40)
    print("ok: nginx and the replicas stopped cleanly")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", metavar="BINARY", help="modelpool_server to run the live checks with")
    parser.add_argument("--nginx", action="store_true", help="also check deploy/nginx with a real nginx")
    parser.add_argument("--nginx-binary", metavar="PATH", help="the nginx to use (default: PATH, /usr/sbin)")
    args = parser.parse_args()
    if args.nginx and not args.server:
        parser.error("--nginx needs --server")
    # A SIGTERM (e.g. from CTest) ends the script through its `finally`s, which stop what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("check_deploy.py: terminated"))

    docs, problems = load_manifests()
    facts = {}
    if not problems:
        problems, facts = check_manifests(docs)
    if not problems:
        print(f"ok: {len(docs)} manifests in {rel(KUBERNETES)} parse and agree "
              f"(port {facts['container_port']}, probes {sorted(set(facts['probe_paths']))}, "
              f"HPA series {facts['series']})")
        missed, count = self_test(docs)
        problems += missed
        if not missed:
            print(f"ok: self-test: each of {count} broken copies of the manifests is rejected")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1

    try:
        with tempfile.TemporaryDirectory(prefix="check-deploy-") as workdir:
            if args.server:
                binary = str(Path(args.server).resolve())
                check_server(binary, facts, workdir)
                if args.nginx:
                    check_nginx(binary, nginx_binary(args.nginx_binary), workdir)
    except (CheckFailed, subprocess.TimeoutExpired) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print("check_deploy.py: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
