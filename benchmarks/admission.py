"""GPU pod creates per second through the real API server: the webhook against Kubernetes' own
admission, in one run on the project's control plane.

N creates of an Airflow GPU pod from C concurrent clients, C in {1, 20, 100}, for each scenario:

- ``none``: no admission control; the pod is already mutated (the webhook's patch applied offline);
- ``cpu+webhook``: an unlabelled CPU pod with the webhook registered: the pass-through path
  (the webhook configurations' CEL conditions never send it);
- ``resourcequota``: Kubernetes' built-in ResourceQuota on ``requests.nvidia.com/gpu`` in the
  namespace, same pre-mutated pod;
- ``ledger``: the webhook, 2 replicas with ``--track-usage`` (the quota ledger), mutating the
  Airflow pod as it comes;
- ``no-ledger``: the webhook, 2 replicas without ``--track-usage``.

The client is one asyncio task per concurrent creator over ``httpx`` with C kept-alive
connections; its own CPU per create is measured (the thread's CPU time) and printed, to show it
is not the bottleneck. The two replicas sit behind the tests' round-robin TCP relay (in this
process, off the measured thread), as in the quota e2e suites. Pods are left Pending: the
scheduler is stopped for the run (the GPU nodes exist, for the webhook's capacity check) so that
only admission and storage are measured.

Connections: each row also counts the new connections per create to the webhook (at the relay:
each one a TCP connect and a full TLS handshake on both ends, as client-go's webhook transport
keeps no TLS session cache and at most 25 idle connections per host) with the reviews the
replicas answered, and the new connections to the API server other than the creators' (from
the kernel's TCP table: the replicas' own API calls). ``python -m benchmarks.handshake`` prices
one connection.

Variants, run only when named with ``--only``: ``no-ledger-split-pools`` and
``ledger-split-pools`` (the validating webhook at a second relay port, so each webhook has its
own idle pool, as with a Service reference); ``ledger-no-group-commit``, ``ledger-no-cache`` and
``ledger-no-group-commit-no-cache`` (the ledger's speed-ups switched off in the replicas by
their benchmark knob, ``GPU_WEBHOOK_BENCHMARK_LEDGER_OFF``), to measure each lever.

Exactness: after the throughput runs, 200 creates at C=100 against a quota that admits 50 (in
each of ``resourcequota`` and ``ledger``) must admit exactly 50.

Every scenario runs ``--passes`` times (default 2) with the order of its set-ups rotated, and each
cell is the median pass, so the drift of these shared cores falls on all scenarios alike.

    python -m benchmarks.admission [--pods 1000] [--clients 1,20,100] [--passes 2] [--only S,...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import yaml

from benchmarks.core import ROOT, case

sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from airflow_gpu_webhook.cluster.wiring import BENCHMARK_LEDGER_ENV  # noqa: E402
from airflow_gpu_webhook.core.mutate import decide_mutation  # noqa: E402
from airflow_gpu_webhook.core.policy import load_policy  # noqa: E402
from tests.e2e.controlplane import ControlPlane, build  # noqa: E402
from tests.e2e.quota_cluster import Replicas, RoundRobin, serving  # noqa: E402

#: Throughput: tenant forecasting (namespace airflow, dag nightly_*) with room for every create.
THROUGHPUT_CASE, THROUGHPUT_NAMESPACE = "kpo_nightly_a100", "airflow"
#: Exactness: tenant vision (namespace ml-jobs), two GPUs a pod, a quota of 100 GPUs: 50 pods.
EXACT_CASE, EXACT_NAMESPACE, EXACT_GPUS, EXACT_CREATES = "kpo_h100_count2", "ml-jobs", 100, 200
PLAIN_NAMESPACE = "bench-plain"


def _policy(tmp: Path) -> Path:
    data = yaml.safe_load((ROOT / "manifests" / "policy.yaml").read_text())
    data["spec"]["tenants"]["forecasting"]["quota"] = {"nvidia.com/gpu": 10_000_000, "gpuEquivalent": 10_000_000}
    data["spec"]["tenants"]["vision"]["quota"] = {"nvidia.com/gpu": EXACT_GPUS, "gpuEquivalent": EXACT_GPUS}
    path = tmp / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _mutated(case_id: str, namespace: str, policy: Path) -> dict[str, Any]:
    """The pod as the webhook would leave it: the patch of the pure mutation, applied offline."""
    pod = case(case_id)["pod"]
    decision = decide_mutation(pod, namespace, load_policy(policy))
    return jsonpatch.apply_patch(pod, list(decision.patch)) if decision.patch else pod


def _cpu_pod() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"app": "bench"}},
            "spec": {"containers": [{"name": "base", "image": "busybox", "resources": {"requests": {"cpu": "10m"}}}]}}


class Creator:
    """C creators on one event loop, each on its own kept-alive HTTPS connection, as the admin.

    HTTP/1.1 is written by hand (a request line, four headers, the body with its name filled in,
    and a reader for Content-Length or chunked answers): httpx spent 1.4-3 ms of CPU per create
    here, as much as the API server's own admission, so it measured itself; this client spends
    a small fraction of that (printed with every row)."""

    def __init__(self, cp: ControlPlane) -> None:
        pki = cp.dir / "pki"
        #: The local ports of the last run's connections.
        self.ports: set[int] = set()
        self.host, self.port = "127.0.0.1", int(cp.server.rsplit(":", 1)[1])
        self.tls = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.tls.load_cert_chain(pki / "admin.crt", pki / "admin.key")

    def run(self, namespace: str, pod: dict[str, Any], creates: int, clients: int) -> dict[str, Any]:
        return asyncio.run(self._run(namespace, pod, creates, clients))

    async def _run(self, namespace: str, pod: dict[str, Any], creates: int, clients: int) -> dict[str, Any]:
        prefix = uuid.uuid4().hex[:6]
        body = orjson.dumps({**pod, "metadata": {**pod["metadata"], "name": f"b-{prefix}-NNNNNNNN",
                                                   "namespace": namespace}})
        head = (f"POST /api/v1/namespaces/{namespace}/pods HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Content-Type: application/json\r\nAccept: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        latencies: list[float] = []
        outcomes = {"admitted": 0, "denied": 0, "error": 0}
        reasons: dict[str, int] = {}
        todo = iter(range(creates))
        connections = [await asyncio.open_connection(self.host, self.port, ssl=self.tls) for _ in range(clients)]
        self.ports = {writer.get_extra_info("sockname")[1] for _, writer in connections}

        async def creator(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for i in todo:
                started = time.perf_counter()
                writer.write(head + body.replace(b"NNNNNNNN", b"%08d" % i))
                status, answer = await _response(reader)
                latencies.append(time.perf_counter() - started)
                outcomes["admitted" if status == 201 else "denied" if status == 403 else "error"] += 1
                if status != 201:
                    why = f"{status} {orjson.loads(answer).get('message', '')[:160]}"
                    reasons[why] = reasons.get(why, 0) + 1

        cpu, wall = time.thread_time(), time.perf_counter()
        await asyncio.gather(*(creator(*pair) for pair in connections))
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        for _, writer in connections:
            writer.close()
        latencies.sort()
        return {"pods_s": creates / wall, "p50_ms": 1000 * statistics.median(latencies),
                "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))], "client_cpu_ms": 1000 * cpu / creates,
                **outcomes, "reasons": reasons}


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response: its status and body (Content-Length or chunked)."""
    header = await reader.readuntil(b"\r\n\r\n")
    status = int(header[9:12])
    lowered = header.lower()
    if b"transfer-encoding: chunked" in lowered:
        chunks = []
        while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
            chunks.append((await reader.readexactly(size + 2))[:-2])
        await reader.readuntil(b"\r\n")
        return status, b"".join(chunks)
    length = int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
    return status, await reader.readexactly(length)


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuProfile:
    """Where a run's CPU went, per create: the API server, etcd, the webhook replicas, and the
    tests' relay in front of them (this process's CPU less the creating thread's)."""

    def __init__(self, cp: ControlPlane) -> None:
        self.pids = {"kube-apiserver": [cp.components["kube-apiserver"].popen.pid],
                     "etcd": [cp.components["etcd"].popen.pid], "webhook": []}

    def serving(self, served: Any) -> None:
        """The replicas of the set-up now running (none: no webhook)."""
        self.pids["webhook"] = [] if served is None else [served.first.server.process.pid, served.second.process.pid]

    def snapshot(self) -> dict[str, float]:
        taken = {name: sum(_cpu_seconds(pid) for pid in pids) for name, pids in self.pids.items()}
        return {**taken, "relay": time.process_time() - time.thread_time()}

    @staticmethod
    def per_create(before: dict[str, float], after: dict[str, float], creates: int) -> dict[str, float]:
        return {name: 1000 * (after[name] - before[name]) / creates for name in before}


def _namespace(cp: ControlPlane, name: str) -> None:
    cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def _clear(cp: ControlPlane, namespace: str) -> None:
    """Delete every pod of the namespace (Pending, unbound: gone at once) and wait until none is left."""
    from kubernetes import client

    core = client.CoreV1Api(cp.api_client())
    core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
    deadline = time.monotonic() + 120
    while core.list_namespaced_pod(namespace, limit=1).items:
        if time.monotonic() > deadline:
            raise TimeoutError(f"pods of {namespace} were not deleted")
        time.sleep(0.5)


def _resource_quota(cp: ControlPlane, namespace: str, gpus: int | None) -> None:
    """A ResourceQuota on requests.nvidia.com/gpu with its status set, as the quota controller
    (not run by the testbed) would: admission then counts against ``status.used``. None: none."""
    from kubernetes import client

    core = client.CoreV1Api(cp.api_client())
    for old in core.list_namespaced_resource_quota(namespace).items:
        core.delete_namespaced_resource_quota(old.metadata.name, namespace)
    if gpus is None:
        return
    hard = {"requests.nvidia.com/gpu": str(gpus)}
    core.create_namespaced_resource_quota(namespace, {"metadata": {"name": "gpu"}, "spec": {"hard": hard}})
    core.replace_namespaced_resource_quota_status("gpu", namespace, {
        "metadata": {"name": "gpu", "resourceVersion": core.read_namespaced_resource_quota("gpu", namespace)
                     .metadata.resource_version},
        "spec": {"hard": hard}, "status": {"hard": hard, "used": {"requests.nvidia.com/gpu": "0"}}})


def _tcp_connections(port: int) -> set[tuple[str, str]]:
    """Every TCP connection of this host to ``port`` (client address, server address), open or
    closed within the last minute: one of a loopback connection's two sockets stays in
    TIME-WAIT for 60 s after the close, so comparing two of these sets counts the connections
    opened in between, whoever opened them (kube-apiserver's own clients included)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            if state == "0A":   # LISTEN
                continue
            if int(local.rsplit(":", 1)[1], 16) == port:
                found.add((remote, local))
            elif int(remote.rsplit(":", 1)[1], 16) == port:
                found.add((local, remote))
    return found


def _connections(served: Replicas | None) -> dict[str, float]:
    """What the replicas have been sent so far: new connections (each a TCP connect and a full TLS
    handshake: the API server's webhook client keeps no TLS session cache), counted by the relay
    (and the validating webhook's own relay, with split pools) per replica, and AdmissionReviews
    answered (both steps, from the replicas' own metrics)."""
    import re

    if served is None:
        return {}
    calls = 0.0
    for server in (served.first.server, served.second):
        calls += sum(float(v) for v in re.findall(r'^gpu_webhook_decision_seconds_count\{step="[^"]+"\} (\S+)$',
                                                   server.client.get("/metrics").text, re.M))
    relays = [served.balancer, *getattr(served, "validate_relay", ())]
    counts = {"connections": float(sum(sum(r.accepted.values()) for r in relays)), "calls": calls}
    if len(relays) > 1:
        counts["validate connections"] = float(sum(relays[1].accepted.values()))
    return counts


def _ledger_rounds(replicas: Replicas) -> dict[str, float]:
    import re

    rounds: dict[str, float] = {}
    for server in (replicas.first.server, replicas.second):
        for result, value in re.findall(r'^gpu_webhook_ledger_rounds_total\{result="([^"]+)"\} (\S+)$',
                                        server.client.get("/metrics").text, re.M):
            rounds[result] = rounds.get(result, 0) + float(value)
    return rounds


@contextmanager
def _no_webhook() -> Iterator[None]:
    yield


@contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """``name`` set to ``value`` (None: as it is) for what starts meanwhile (the replicas)."""
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if value is not None and old is None:
            del os.environ[name]
        elif value is not None:
            os.environ[name] = old


def _webhook(policy: Path, tracked: bool, split_pools: bool = False,
             levers_off: str | None = None) -> Callable[..., Any]:
    """A set-up: the two replicas (``tracked``: with ``--track-usage``), the ledger's speed-ups
    ``levers_off`` switched off (the replicas' benchmark knob, ``BENCHMARK_LEDGER_ENV``).

    ``split_pools``: the validating webhook registered at a second relay port. The API server
    keeps at most 25 idle connections per webhook transport and host (client-go's
    ``idleConnsPerHost``). A webhook registered by Service reference, as deployed, gets a
    transport of its own (its dialer is a new closure, so client-go's transport cache never
    shares it): 25 for /mutate and 25 for /validate. Registered by one loopback URL, as the
    tests do, both share one transport and one host: 25 in all. Two ports give each its own
    pool, as deployed."""

    @contextmanager
    def setup(cp: ControlPlane, tmp: Path) -> Iterator[Replicas]:
        with ExitStack() as stack:
            relays: list[RoundRobin] = []
            stack.callback(lambda: [relay.stop() for relay in relays])   # after the replicas, as Replicas.stop
            with _environment(BENCHMARK_LEDGER_ENV, levers_off):
                served = stack.enter_context(contextmanager(serving)(cp, tmp, policy=policy, tracked=tracked))
            if split_pools:
                relay = RoundRobin([served.first.server.port, served.second.port])
                relays.append(relay)
                served.validate_relay = relays   # counted by _connections
                docs = served.first.configurations()
                for doc in docs:
                    if doc.get("kind") == "ValidatingWebhookConfiguration":
                        for hook in doc["webhooks"]:
                            hook["clientConfig"]["url"] = hook["clientConfig"]["url"].replace(
                                f":{served.balancer.port}/", f":{relay.port}/")
                cp.apply(docs)
                time.sleep(2)   # the API server's webhook configuration informer catches up
            yield served

    return setup


def _groups(policy: Path) -> list[tuple[tuple[str, ...], Callable[..., Any]]]:
    """The scenarios, grouped under one set-up each (none; the webhook; the webhook with
    ``--track-usage``; then the variants, run only when named with ``--only``). A pass runs
    every group."""
    return [
        (("none", "resourcequota"), lambda cp, tmp: _no_webhook()),
        (("cpu+webhook", "no-ledger"), _webhook(policy, tracked=False)),
        (("ledger",), _webhook(policy, tracked=True)),
        (("no-ledger-split-pools",), _webhook(policy, tracked=False, split_pools=True)),
        (("ledger-split-pools",), _webhook(policy, tracked=True, split_pools=True)),
        (("ledger-no-group-commit",), _webhook(policy, tracked=True, levers_off="group-commit")),
        (("ledger-no-cache",), _webhook(policy, tracked=True, levers_off="cache")),
        (("ledger-no-group-commit-no-cache",), _webhook(policy, tracked=True, levers_off="group-commit,cache")),
    ]


def run(creates: int, clients: list[int], passes: int = 2, only: frozenset[str] = frozenset(),
        echo: Callable[[str], None] = print, also: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every scenario at every C, ``passes`` times with the groups' order rotated (the machine's
    drift then falls on every scenario alike; each cell reports the median pass), then the two
    exactness runs; one control plane, one run. ``only``: just these scenarios, no exactness runs;
    ``also``: these variants too, beside the default scenarios and the exactness runs."""
    with tempfile.TemporaryDirectory(prefix="bench-admission-") as tmp_name, ControlPlane(build()) as cp:
        tmp = Path(tmp_name)
        cp.create_gpu_nodes()   # the webhook's node-capacity check needs them; kwok keeps them Ready
        cp.components.pop("kube-scheduler").kill()   # Pending pods only: admission and storage are measured
        policy = _policy(tmp)
        for name in (THROUGHPUT_NAMESPACE, EXACT_NAMESPACE, PLAIN_NAMESPACE, "analytics"):
            _namespace(cp, name)
        creator, rows, profile = Creator(cp), {}, CpuProfile(cp)
        api_port = creator.port
        pods = {"none": (PLAIN_NAMESPACE, _mutated(THROUGHPUT_CASE, THROUGHPUT_NAMESPACE, policy)),
                "cpu+webhook": (PLAIN_NAMESPACE, _cpu_pod()),
                "ledger": (THROUGHPUT_NAMESPACE, case(THROUGHPUT_CASE)["pod"])}
        pods["resourcequota"] = pods["none"]
        for variant in ("no-ledger", *VARIANTS):
            pods[variant] = pods["ledger"]
        groups = [(kept, setup) for scenarios, setup in _groups(policy)
                  if (kept := tuple(s for s in scenarios
                                    if s in only or (not only and (s in SCENARIOS or s in also))))]
        rounds: dict[str, dict[str, float]] = {}
        for n in range(passes):
            for index, (scenarios, setup) in enumerate(groups[n % len(groups):] + groups[:n % len(groups)]):
                with setup(cp, tmp / f"{n}-{index}") as served:
                    profile.serving(served)
                    for scenario in scenarios:
                        namespace, pod = pods[scenario]
                        if scenario == "resourcequota":
                            _resource_quota(cp, namespace, 10_000_000)
                        for c in clients:
                            creator.run(namespace, pod, min(50, creates), c)   # warm connections and caches
                            _clear(cp, namespace)
                            before, sent = profile.snapshot(), _connections(served)
                            api_connections = _tcp_connections(api_port)
                            row = creator.run(namespace, pod, creates, c)
                            row["cpu_ms"] = profile.per_create(before, profile.snapshot(), creates)
                            row["sent"] = {k: (v - sent[k]) / creates for k, v in _connections(served).items()}
                            opened = _tcp_connections(api_port) - api_connections
                            row["api_connections"] = sum(int(client.rsplit(":", 1)[1], 16) not in creator.ports
                                                         for client, _ in opened) / creates   # the creators' left out
                            rows.setdefault((scenario, c), []).append(row)
                            echo(_line(f"pass {n + 1} {scenario}", c, row))
                            _clear(cp, namespace)
                        _resource_quota(cp, namespace, None)
                    for scenario in scenarios:
                        if scenario.startswith("ledger"):
                            tally = rounds.setdefault(scenario, {})
                            for result, count in _ledger_rounds(served).items():
                                tally[result] = tally.get(result, 0) + count
        results: dict[Any, Any] = {key: _median_pass(runs) for key, runs in rows.items()}
        results["ledger rounds"] = rounds
        results["ledger creates"] = passes * len(clients) * (creates + min(50, creates))
        if only:
            return results
        _resource_quota(cp, PLAIN_NAMESPACE, EXACT_GPUS)
        results["exact resourcequota"] = creator.run(PLAIN_NAMESPACE, _mutated(EXACT_CASE, EXACT_NAMESPACE, policy),
                                                     EXACT_CREATES, 100)
        _clear(cp, PLAIN_NAMESPACE)   # its pods carry tenant vision's stamps: the webhook would count them
        with contextmanager(serving)(cp, tmp / "exact", policy=policy):
            results["exact ledger"] = creator.run(EXACT_NAMESPACE, case(EXACT_CASE)["pod"], EXACT_CREATES, 100)
        for name in ("exact resourcequota", "exact ledger"):
            echo(_line(f"{name} (room for {EXACT_GPUS // 2})", 100, results[name]))
        return results


def _line(label: str, clients: int, row: dict[str, Any]) -> str:
    text = (f"{label:22} C={clients:<3} {row['pods_s']:7.1f} pods/s  p50 {row['p50_ms']:6.1f} ms  "
            f"p99 {row['p99_ms']:6.1f} ms  client {row['client_cpu_ms']:.3f} ms CPU/create  "
            f"admitted {row['admitted']} denied {row['denied']} errors {row['error']}")
    if "cpu_ms" in row:
        text += "\n    CPU ms per create: " + ", ".join(f"{k} {v:.2f}" for k, v in row["cpu_ms"].items())
    if row.get("sent"):
        text += (f"\n    per create, to the webhook: {row['sent']['connections']:.3f} new connections, "
                 f"{row['sent']['calls']:.2f} reviews"
                 + "".join(f", {k} {v:.3f}" for k, v in row["sent"].items() if k not in ("connections", "calls")))
    if "api_connections" in row:
        text += f"\n    per create, to the API server (not the creators'): {row['api_connections']:.3f} new connections"
    return text + "".join(f"\n    {count} x {why}" for why, count in row["reasons"].items())


def _median_pass(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The pass with the median throughput (the upper one of two; its own p50 and p99 with it),
    and the spread."""
    ordered = sorted(runs, key=lambda r: r["pods_s"])
    return {**ordered[len(ordered) // 2], "pods_s_range": (ordered[0]["pods_s"], ordered[-1]["pods_s"])}


SCENARIOS = ("none", "cpu+webhook", "resourcequota", "ledger", "no-ledger")
#: Run only when named with ``--only``: the webhook with both webhooks' connection pools split as
#: deployed (see ``_webhook``), and the ledger without group commit, without its cache, without both.
VARIANTS = ("no-ledger-split-pools", "ledger-split-pools", "ledger-no-group-commit", "ledger-no-cache",
            "ledger-no-group-commit-no-cache")


def report(results: dict[str, Any], clients: list[int]) -> str:
    """Markdown: each scenario's pods/s and p99 per C, where the CPU went, and the ledger's ratios
    to ResourceQuota (the scenarios a run left out are left out here)."""
    ran = [s for s in SCENARIOS + VARIANTS if (s, clients[0]) in results]
    lines = ["| scenario | " + " | ".join(f"C={c}: pods/s (range), p50 / p99 ms" for c in clients) + " |",
             "| --- |" + " ---: |" * len(clients)]
    for scenario in ran:
        cells = [f"{r['pods_s']:.0f} ({r['pods_s_range'][0]:.0f}-{r['pods_s_range'][1]:.0f}), "
                 f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f}"
                 for r in (results[(scenario, c)] for c in clients)]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    lines += ["", "| CPU ms per create (median pass) | " + " | ".join(f"C={c}" for c in clients) + " |",
              "| --- |" + " ---: |" * len(clients)]
    for scenario in ran:
        for part in ("kube-apiserver", "etcd", "webhook", "relay"):
            values = [results[(scenario, c)]["cpu_ms"][part] for c in clients]
            if any(v >= 0.05 for v in values):
                lines.append(f"| {scenario}: {part} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    sent = [s for s in ran if results[(s, clients[0])].get("sent")]
    if sent:
        lines += ["", "| per create, to the webhook (median pass): new TCP+TLS connections / reviews | "
                  + " | ".join(f"C={c}" for c in clients) + " |", "| --- |" + " ---: |" * len(clients)]
        for scenario in sent:
            cells = [f"{r['sent']['connections']:.3f} / {r['sent']['calls']:.2f}"
                     for r in (results[(scenario, c)] for c in clients)]
            lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
        lines += ["", "| per create, new connections to the API server (the creators' left out) | "
                  + " | ".join(f"C={c}" for c in clients) + " |", "| --- |" + " ---: |" * len(clients)]
        for scenario in ran:
            lines.append(f"| {scenario} | " + " | ".join(f"{results[(scenario, c)]['api_connections']:.3f}"
                                                        for c in clients) + " |")
    if "resourcequota" in ran:
        lines.append("")
        for scenario in (s for s in ran if s not in ("none", "resourcequota", "cpu+webhook")):
            ratios = [f"C={c}: {results[(scenario, c)]['pods_s'] / results[('resourcequota', c)]['pods_s']:.2f}x "
                      f"pods/s, {results[(scenario, c)]['p99_ms'] / results[('resourcequota', c)]['p99_ms']:.2f}x p99"
                      for c in clients]
            lines.append(f"{scenario} / resourcequota: " + "; ".join(ratios))
    if "exact ledger" in results:
        exact = {k: results[f"exact {k}"]["admitted"] for k in ("resourcequota", "ledger")}
        lines.append(f"exact admission, {EXACT_CREATES} creates at C=100 against room for {EXACT_GPUS // 2}: "
                     f"resourcequota {exact['resourcequota']}, ledger {exact['ledger']}")
    for scenario, rounds in results["ledger rounds"].items():
        lines.append(f"{scenario} rounds (both replicas, every pass): {sum(rounds.values()):.0f} for "
                     f"{results['ledger creates']} creates: " + ", ".join(f"{k} {v:.0f}" for k, v in rounds.items()))
    client_cpu = max(r["client_cpu_ms"] for k, r in results.items() if isinstance(k, tuple))
    lines.append(f"client CPU: at most {client_cpu:.3f} ms per create")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=1000, help="creates per scenario and C (default 1000)")
    parser.add_argument("--clients", default="1,20,100", help="concurrent creators, comma-separated")
    parser.add_argument("--passes", type=int, default=2, help="passes over every scenario (default 2)")
    parser.add_argument("--only", default="", help="comma-separated scenarios to run (default: all but the "
                                                  f"variants, and the exactness runs; variants: {', '.join(VARIANTS)})")
    parser.add_argument("--also", default="", help="comma-separated variants to run beside the default scenarios "
                                                  "and the exactness runs (e.g. the ledger's levers: "
                                                  "ledger-no-group-commit,ledger-no-cache)")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    only = frozenset(filter(None, args.only.split(",")))
    also = frozenset(filter(None, args.also.split(",")))
    if unknown := also - set(VARIANTS):
        parser.error(f"--also: unknown variant {', '.join(sorted(unknown))}; variants: {', '.join(VARIANTS)}")
    print(report(run(args.pods, clients, args.passes, only, also=also), clients))
    return 0


if __name__ == "__main__":
    sys.exit(main())
