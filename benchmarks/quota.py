"""Admission latency and memory with live quota tracking, with 10,000 pods in the cluster against none.

On the real test control plane (tests/e2e/controlplane.py; builds it on first use): a
`serve --track-usage` replica is measured on a quota-bound GPU pod (its ledger write to the API
server included) and on a pass-through pod, first with no other pod in the cluster (the
baseline, same run), then after 10,000 managed pods exist and are in its watch. The target: the
cost of an admission must not grow with the number of pods (no per-request list).

``--memory`` measures the server's resident memory instead (VmRSS now, VmHWM: the peak): with no
pod (the baseline, same run), with 10,000 charged managed pods in its watch, with the label bomb
(101 CPU pods labelled ``gpu.platform/managed=true`` and ``gpu.platform/tenant``, carrying ~770 KB
of labels each), and for each, a fresh replica's peak while it lists them. The target: well
under the Deployment's 256Mi limit, and a per-pod record that does not grow with labels.

    python -m benchmarks.quota [--pods 10000] [--requests 300]
    python -m benchmarks.quota --memory [--pods 10000] [--bombs 101]
"""

from __future__ import annotations

import argparse
import base64
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--memory", action="store_true", help="measure resident memory instead of latency")
    parser.add_argument("--bombs", type=int, default=101)
    options = parser.parse_args()
    print(memory(options.pods, options.bombs) if options.memory else run(options.pods, options.requests))
