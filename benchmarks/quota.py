"""Admission latency and memory with live quota tracking, with 10,000 pods in the cluster against none.

On the real test control plane (tests/e2e/controlplane.py; builds it on first use): a
`serve --track-usage` replica is measured on a quota-bound GPU pod (its ledger write to the API
server included) and on a pass-through pod, first with no other pod in the cluster (the
baseline, same run), then after 10,000 managed pods exist and are in its watch. The target: the
cost of an admission must not grow with the number of pods (no per-request list).

``--client`` measures only the client side of the tracker's list+watch, against a local stand-in
API server (plain HTTP on 127.0.0.1 serving pre-encoded pages and one chunked watch stream of
realistic stored pods, managedFields and status included), no control plane: CPU seconds of the
reading thread per watch event and per listed pod, for the tracker's hand-written reader
(:class:`~airflow_gpu_webhook.cluster.tracker.PodWatch`) against the Kubernetes client's own
``kubernetes.watch.Watch`` (raw, and deserialising into models as it does by default) and its
typed list. Baseline, same run: ``json.loads`` of the same bytes from memory (the parse every
reader must do). This is the benchmark the tracker's docstring names.

``--memory`` measures the server's resident memory instead (VmRSS now, VmHWM: the peak): with no
pod (the baseline, same run), with 10,000 charged managed pods in its watch, with the label bomb
(101 CPU pods labelled ``gpu.platform/managed=true`` and ``gpu.platform/tenant``, carrying ~770 KB
of labels each), and for each, a fresh replica's peak while it lists them. The target: well
under the Deployment's 256Mi limit, and a per-pod record that does not grow with labels.

    python -m benchmarks.quota [--pods 10000] [--requests 300]
    python -m benchmarks.quota --memory [--pods 10000] [--bombs 101]
    python -m benchmarks.quota --client [--pods 5000]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonpatch
import orjson
import yaml

from benchmarks.core import ROOT, case, review_bytes

sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tests.e2e.controlplane import ControlPlane, build  # noqa: E402

from serve import WebhookServer  # noqa: E402

NAMESPACE = "ml-jobs"


def _policy(tmp: Path) -> Path:
    """The reference policy with room for every benchmark admission in tenant vision."""
    data = yaml.safe_load((ROOT / "manifests" / "policy.yaml").read_text())
    data["spec"]["tenants"]["vision"]["quota"] = {"nvidia.com/gpu": 1_000_000, "gpuEquivalent": 1_000_000}
    path = tmp / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _mutated_gpu_pod(server: WebhookServer) -> dict:
    pod = case("kpo_h100_count2")["pod"]
    answer = server.client.post("/mutate", content=review_bytes(pod, NAMESPACE),
                                headers={"Content-Type": "application/json"}).json()["response"]
    return jsonpatch.apply_patch(pod, orjson.loads(base64.b64decode(answer["patch"])))


def _latencies(server: WebhookServer, pod: dict, requests: int, fresh_uid: bool) -> list[float]:
    """Sequential /validate calls; a fresh uid each makes every call a new ledger reservation."""
    seconds = []
    for _ in range(requests):
        if fresh_uid:
            pod["metadata"]["uid"] = str(uuid.uuid4())
        body = review_bytes(pod, NAMESPACE)
        started = time.perf_counter()
        answer = server.client.post("/validate", content=body, headers={"Content-Type": "application/json"})
        seconds.append(time.perf_counter() - started)
        assert answer.json()["response"]["allowed"], answer.text
    return seconds


def _filler(index: int) -> dict:
    """A pod as our mutation leaves it: stamped, charged one GPU to tenant vision."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"filler-{index}", "namespace": NAMESPACE,
                         "labels": {"gpu.platform/managed": "true", "gpu.platform/profile": "h100-80gb",
                                    "gpu.platform/tenant": "vision", "gpu.platform/count": "1",
                                    "kubernetes_pod_operator": "True", "dag_id": "filler", "task_id": f"t{index}"}},
            "spec": {"nodeName": "cpu-0", "containers": [{"name": "base", "image": "busybox",
                                                          "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}


#: One bomb pod's labels: ~770 KB of valid labels (63-character keys and values).
_BOMB_LABELS = {f"bomb.example/{i:050d}": "v" * 63 for i in range(5_900)}


def _bomb(index: int) -> dict:
    """A CPU pod with ~770 KB of labels, forging both stamps the watch selects on (the worst case:
    it is listed and parsed; the admission side refuses forged stamps, this measures without it)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"bomb-{index}", "namespace": NAMESPACE,
                         "labels": {"gpu.platform/managed": "true", "gpu.platform/tenant": "vision", "dag_id": "bomb",
                                    **_BOMB_LABELS}},
            "spec": {"nodeName": "cpu-0", "containers": [{"name": "base", "image": "busybox"}]}}


def _fill(cp: ControlPlane, pods: int, make=_filler) -> float:
    from kubernetes import client

    core = client.CoreV1Api(cp.api_client())
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: core.create_namespaced_pod(NAMESPACE, make(i)), range(pods)))
    return time.monotonic() - started


def _settle(cp: ControlPlane, pods: int, limit: float = 300) -> None:
    """Wait until kwok has run every filler pod and the control plane is quiet again: the burst
    of 10,000 status updates (and the watch events they cause) is a one-off, not steady state."""
    from kubernetes import client

    core = client.CoreV1Api(cp.api_client())
    deadline = time.monotonic() + limit
    while True:
        items = core.list_namespaced_pod(NAMESPACE, label_selector="dag_id=filler").items
        running = sum(p.status.phase == "Running" for p in items)
        if running >= pods or time.monotonic() > deadline:
            print(f"  {running} running", flush=True)
            break
        time.sleep(3)
    time.sleep(10)


def _summary(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000


def run(pods: int, requests: int) -> str:
    cp = ControlPlane(build(echo=print))
    cp.start()
    cp.create_gpu_nodes()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        server = WebhookServer(tmp, _policy(tmp), ("--track-usage", "--kubeconfig", str(cp.kubeconfig),
                                                   "--ledger-namespace", "default", "--log-level", "warning"))
        try:
            server.wait_ready()
            gpu, cpu = _mutated_gpu_pod(server), case("kpo_cpu_plain")["pod"]
            rows = {"before": {}, "after": {}}
            for phase in ("before", "after"):
                if phase == "after":
                    print(f"creating {pods} managed pods ...", flush=True)
                    print(f"  done in {_fill(cp, pods):.0f}s", flush=True)
                    _settle(cp, pods)
                rows[phase]["quota-bound GPU pod (ledger write)"] = _summary(_latencies(server, gpu, requests, True))
                rows[phase]["pass-through CPU pod"] = _summary(_latencies(server, cpu, requests, False))
        finally:
            server.stop()
            cp.stop()
    lines = [f"| /validate, sequential, {requests} requests | no other pod: p50 / p99 ms | {pods:,} pods: p50 / p99 ms "
             "| p50 ratio | p99 ratio |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, (p50, p99) in rows["before"].items():
        a50, a99 = rows["after"][name]
        lines.append(f"| {name} | {p50:.2f} / {p99:.2f} | {a50:.2f} / {a99:.2f} | {a50 / p50:.2f}x "
                     f"| {a99 / p99:.2f}x |")
    return "\n".join(lines)


def _memory_mb(server: WebhookServer) -> tuple[float, float]:
    """(VmRSS, VmHWM) of the serving process, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines())
    return tuple(int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM"))


def _tracked(cp: ControlPlane, tmp: Path, name: str) -> WebhookServer:
    server = WebhookServer(tmp / name, _policy(tmp), ("--track-usage", "--kubeconfig", str(cp.kubeconfig),
                                                      "--ledger-namespace", "default", "--log-level", "warning"))
    server.wait_ready(limit=300)
    time.sleep(5)   # the node watch and the first scrape-free seconds settle
    return server


def memory(pods: int, bombs: int) -> str:
    cp = ControlPlane(build(echo=print))
    cp.start()
    cp.create_gpu_nodes()
    rows: list[tuple[str, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        live = _tracked(cp, tmp, "live")
        try:
            baseline = _memory_mb(live)
            rows.append(("no pod (baseline)", *baseline, 1.0))
            for label, count, make in ((f"{pods:,} charged managed pods", pods, _filler),
                                       (f"+ {bombs} label-bomb pods (~770 KB of labels each)", bombs, _bomb)):
                print(f"creating {label} ...", flush=True)
                print(f"  done in {_fill(cp, count, make):.0f}s", flush=True)
                time.sleep(15)
                rss, _ = _memory_mb(live)
                fresh = _tracked(cp, tmp, f"fresh-{make.__name__}")   # a new replica lists them all
                try:
                    fresh_rss, fresh_peak = _memory_mb(fresh)
                finally:
                    fresh.stop()
                rows.append((f"{label}: watched", rss, _memory_mb(live)[1], rss / baseline[0]))
                rows.append((f"{label}: fresh replica after its list", fresh_rss, fresh_peak, fresh_peak / baseline[0]))
        finally:
            live.stop()
            cp.stop()
    lines = ["| `serve --track-usage` | RSS MB | peak (VmHWM) MB | vs baseline RSS |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {rss:.0f} | {peak:.0f} | {ratio:.2f}x |" for name, rss, peak, ratio in rows]
    return "\n".join(lines)


# --- --client: the tracker's reading cost, against a local stand-in API server -----------------------

def _stored_pod(index: int, template: dict) -> dict:
    """A managed pod as the API server stores and sends it: mutated, stamped, scheduled, Running,
    with managedFields (lists and watches carry them) and a status."""
    pod = json.loads(json.dumps(template))
    meta = pod["metadata"]
    meta.update(name=f"task-{index}", namespace=NAMESPACE, uid=str(uuid.UUID(int=index)),
                resourceVersion=str(1000 + index), creationTimestamp="2026-12-02T03:00:00Z")
    meta["managedFields"] = [{"manager": m, "operation": "Update", "apiVersion": "v1", "time": "2026-12-02T03:00:00Z",
                              "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {
                                  f"f:{k}": {} for k in meta.get("labels", {})}}, "f:status": {"f:phase": {}}}}
                             for m in ("airflow", "kube-scheduler", "kubelet")]
    pod["spec"]["nodeName"] = f"gpu-{index % 50}"
    pod["status"] = {"phase": "Running", "podIP": "10.0.0.1", "startTime": "2026-12-02T03:00:01Z",
                     "conditions": [{"type": t, "status": "True", "lastTransitionTime": "2026-12-02T03:00:01Z"}
                                    for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
                     "containerStatuses": [{"name": c["name"], "ready": True, "restartCount": 0, "image": c["image"],
                                            "imageID": "", "containerID": "containerd://" + "0" * 64,
                                            "state": {"running": {"startedAt": "2026-12-02T03:00:02Z"}}}
                                           for c in pod["spec"]["containers"]]}
    return pod


class _StandIn:
    """Pre-encoded list pages and watch events, served over HTTP/1.1 on 127.0.0.1 from a thread."""

    def __init__(self, pods: list[dict], page: int) -> None:
        import http.server
        import threading

        self.page = page
        self.pages = {str(start): orjson.dumps({
            "kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "999999",
                         "continue": str(start + page) if start + page < len(pods) else ""},
            "items": pods[start:start + page]}) for start in range(0, len(pods), page)}
        self.whole = orjson.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "999999"},
                                   "items": pods})
        self.events = [orjson.dumps({"type": "MODIFIED", "object": p}) + b"\n" for p in pods]
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # the stdlib's name
                from urllib.parse import parse_qs, urlsplit

                query = parse_qs(urlsplit(self.path).query)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if query.get("watch", [""])[0].lower() == "true":   # the typed client sends "True"
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for line in stand_in.events:   # one chunk per event, as the API server flushes them
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                body = stand_in.pages[query.get("continue", ["0"])[0]] if "limit" in query else stand_in.whole
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def api(self):
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return client.ApiClient(configuration)


def _thread_cpu(fn, repeat: int = 7) -> float:
    """CPU seconds of this thread for ``fn()``, the best of ``repeat`` (the stand-in serves from another)."""
    runs = []
    for _ in range(repeat):
        started = time.thread_time()
        fn()
        runs.append(time.thread_time() - started)
    return min(runs)


def client_cost(pods: int) -> str:
    from kubernetes import client, watch

    from airflow_gpu_webhook.cluster.tracker import _PAGE, PodWatch, UsageBook
    from airflow_gpu_webhook.core.mutate import decide_mutation
    from airflow_gpu_webhook.core.policy import load_policy

    policy = load_policy(ROOT / "manifests" / "policy.yaml")
    gpu = case("kpo_h100_count2")
    template = jsonpatch.apply_patch(gpu["pod"], list(decide_mutation(gpu["pod"], NAMESPACE, policy).patch))
    stored = [_stored_pod(i, template) for i in range(pods)]
    stand_in = _StandIn(stored, _PAGE)
    api = stand_in.api()
    core = client.CoreV1Api(api)
    size = sum(len(e) for e in stand_in.events) / pods
    print(f"  {pods} pods, {size / 1024:.1f} KB of JSON each", flush=True)

    def parse_events() -> None:
        for line in stand_in.events:
            json.loads(line)

    def parse_pages() -> None:
        for body in stand_in.pages.values():
            json.loads(body)

    def count(events) -> None:
        for event in events:
            assert event is None or event["type"] == "MODIFIED"

    def tracker_watch() -> None:
        count(PodWatch(api, UsageBook(policy))._events("1"))

    def raw_stream(**kwargs: object):
        return api.call_api("/api/v1/pods", "GET", query_params=[("watch", "true")], _preload_content=False,
                            _return_http_data_only=True, auth_settings=["BearerToken"])

    def hand_written() -> None:
        """The reader PodWatch had before it used kubernetes.watch.Watch (kept here as the reference)."""
        response = raw_stream()
        try:
            buffer = b""
            for chunk in response.stream(65536, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                count(json.loads(line) for line in lines if line.strip())
        finally:
            response.release_conn()

    def client_watch_models() -> None:
        count(watch.Watch().stream(core.list_pod_for_all_namespaces, resource_version="1", timeout_seconds=300))

    def tracker_list() -> None:
        PodWatch(api, UsageBook(policy)).list_once()

    def client_list_raw_paged() -> None:
        token, book = "", UsageBook(policy)

        def pods_of_pages():
            nonlocal token
            while True:
                body = json.loads(core.list_pod_for_all_namespaces(limit=_PAGE, _continue=token or None,
                                                                   _preload_content=False).data)
                token = body["metadata"].get("continue") or ""
                yield from body["items"]
                if not token:
                    return

        book.replace_all(pods_of_pages())

    def client_list_models() -> None:
        core.list_pod_for_all_namespaces()   # what SharedInformer's list does: one page, typed models

    event_base, list_base = _thread_cpu(parse_events), _thread_cpu(parse_pages)
    # Models cost tens of times more: one run each says enough.
    rows = [("watch events", "baseline: json.loads of each event line from memory", event_base)]
    rows += [("watch events", name, _thread_cpu(fn, repeat)) for name, fn, repeat in (
        ("the tracker's reader (PodWatch._events: kubernetes.watch.Watch, raw)", tracker_watch, 7),
        ("the hand-written reader it replaced (65 KB reads, bytes split)", hand_written, 7),
        ("kubernetes.watch.Watch, default: models (V1Pod)", client_watch_models, 1))]
    rows.append(("list", "baseline: json.loads of each page from memory", list_base))
    rows += [("list", name, _thread_cpu(fn, repeat)) for name, fn, repeat in (
        (f"the tracker's paged list into the book (PodWatch.list_once, {_PAGE} a page)", tracker_list, 7),
        (f"CoreV1Api.list_pod_for_all_namespaces, raw, paged ({_PAGE}) into the book", client_list_raw_paged, 7),
        ("CoreV1Api.list_pod_for_all_namespaces, models, one page (as SharedInformer)", client_list_models, 1))]
    stand_in.server.shutdown()
    lines = [f"| {pods} pods | CPU s | us per pod | x baseline |", "| --- | ---: | ---: | ---: |"]
    for kind, name, seconds in rows:
        base = event_base if kind == "watch events" else list_base
        lines.append(f"| {kind}: {name} | {seconds:.3f} | {seconds / pods * 1e6:.0f} | {seconds / base:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--memory", action="store_true", help="measure resident memory instead of latency")
    parser.add_argument("--bombs", type=int, default=101)
    parser.add_argument("--client", action="store_true",
                        help="the tracker's client-side reading cost against a local stand-in API server")
    options = parser.parse_args()
    if options.client:
        print(client_cost(options.pods))
    else:
        print(memory(options.pods, options.bombs) if options.memory else run(options.pods, options.requests))
