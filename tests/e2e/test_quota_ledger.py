"""No over-admission: two `serve --track-usage` replicas behind one address (a round-robin TCP
balancer standing in for the Service), a burst of concurrent pod creates through the real API
server, and the quota ledger shared only through that API server.

Proven: 100 concurrent 1-GPU creates for a tenant with quota 5 admit exactly 5, every other one
denied with the quota message; after both replicas restart, usage rebuilt from the cluster is
what it was; a reservation whose pod never appears holds the quota until its TTL; pods that
finish mid-burst free their share without over-admission; a replica killed mid-burst costs
refusals (failurePolicy: Fail), never an over-admission.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from conftest import POLICY_FILE
from serve import WebhookServer, free_port

from .conftest import TENANT_NAMESPACES, RegisteredWebhook, airflow_pod
from .controlplane import COMPLETE_AFTER_LABEL, ControlPlane

pytestmark = pytest.mark.e2e

NAMESPACE, CASE, QUOTA = "airflow", "kpo_nightly_a100", 5   # tenant forecasting: namespace airflow, nightly_*


class RoundRobin:
    """A TCP balancer on 127.0.0.1: each connection goes to the next backend (TLS passes through)."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = itertools.cycle(backends)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(5)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        started.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", next(self.backends))
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def _policy(tmp: Path) -> Path:
    data = yaml.safe_load(POLICY_FILE.read_text())
    data["spec"]["tenants"]["forecasting"]["quota"] = {"nvidia.com/gpu": QUOTA, "gpuEquivalent": QUOTA}
    path = tmp / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Replicas:
    """Two tracked replicas sharing one certificate, behind one balancer, registered."""

    def __init__(self, cp: ControlPlane, tmp: Path) -> None:
        self.cp, self.tmp, self.policy = cp, tmp, _policy(tmp)
        self.args = ("--track-usage", "--kubeconfig", str(cp.kubeconfig), "--ledger-namespace", "default",
                     "--reservation-ttl", "20")
        self.first = RegisteredWebhook(cp, tmp / "a", self.args, self.policy)
        self.second = self._replica("b")
        self.balancer = RoundRobin([self.first.server.port, self.second.port])
        self.first.base_url = f"https://127.0.0.1:{self.balancer.port}"
        self.first.server.wait_ready()

    def _replica(self, name: str) -> WebhookServer:
        server = WebhookServer(self.tmp / name, self.policy, self.args, certs=self.first.server.certs)
        server.wait_ready()
        return server

    def restart(self) -> None:
        """Stop both replicas and start new ones on the same ports' balancer."""
        self.first.server.stop()
        self.second.stop()
        self.balancer.stop()
        self.first.server = WebhookServer(self.tmp / "a2", self.policy, self.args, certs=self.first.server.certs)
        self.first.server.wait_ready()
        self.second = self._replica("b2")
        self.balancer = RoundRobin([self.first.server.port, self.second.port])
        self.first.base_url = f"https://127.0.0.1:{self.balancer.port}"
        self.first.register()

    def stop(self) -> None:
        for server in (self.first.server, self.second):
            server.stop()
        self.balancer.stop()


@pytest.fixture(scope="module")
def replicas(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    for name in TENANT_NAMESPACES:
        controlplane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    running = Replicas(controlplane, tmp_path_factory.mktemp("replicas"))
    try:
        running.first.register()
        yield running
        running.first.unregister()
    finally:
        running.stop()


def _core(cp: ControlPlane) -> client.CoreV1Api:
    """A client with a connection pool wide enough for the burst."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(cp.kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = 32
    return client.CoreV1Api(client.ApiClient(configuration))


def _create(core: client.CoreV1Api, name: str) -> str:
    """'admitted', or the denial message."""
    try:
        core.create_namespaced_pod(NAMESPACE, airflow_pod(CASE, name, complete_after=None))
        return "admitted"
    except ApiException as err:
        return json.loads(err.body)["message"]


def _finish(core: client.CoreV1Api, names: list[str]) -> None:
    for name in names:
        core.patch_namespaced_pod(name, NAMESPACE, {"metadata": {"labels": {COMPLETE_AFTER_LABEL: "0s"}}})


def _ledger_rounds(server: WebhookServer, result: str) -> float:
    """The replica's gpu_webhook_ledger_rounds_total{result=...}, as Prometheus would scrape it."""
    found = re.search(rf'^gpu_webhook_ledger_rounds_total{{result="{result}"}} (\S+)$',
                      server.client.get("/metrics").text, re.M)
    assert found, f"no ledger rounds counted as {result}"
    return float(found.group(1))


def test_a_burst_of_100_creates_over_two_replicas_admits_exactly_the_quota(replicas, controlplane):
    core = _core(controlplane)
    names = [f"burst-{uuid.uuid4().hex[:8]}" for _ in range(100)]
    with ThreadPoolExecutor(max_workers=25) as pool:
        outcomes = dict(zip(names, pool.map(lambda n: _create(core, n), names)))
    admitted = [n for n, outcome in outcomes.items() if outcome == "admitted"]
    try:
        assert len(admitted) == QUOTA, {o for o in outcomes.values() if o != "admitted"}
        denials = {o for o in outcomes.values() if o != "admitted"}
        assert all("exceeded quota: tenant forecasting, nvidia.com/gpu, requested: 1" in d for d in denials), denials
        for log in (replicas.first.server.log, replicas.second.log):   # both replicas really took part
            assert "reason=quota-exceeded" in log.read_text()
        written = [_ledger_rounds(server, "written") for server in (replicas.first.server, replicas.second)]
        assert sum(written) == QUOTA, f"one ledger write per admitted pod, per replica: {written}"

        replicas.restart()   # usage rebuilt from the cluster: still full
        assert "used: 5, limited: 5" in _create(core, f"after-restart-{uuid.uuid4().hex[:6]}")
    finally:
        _finish(core, admitted)


def test_a_reservation_whose_pod_never_appears_holds_quota_until_its_ttl(replicas, controlplane):
    core = _core(controlplane)
    for name in [f"fill-{uuid.uuid4().hex[:6]}" for _ in range(QUOTA - 1)]:
        assert _create(core, name) == "admitted"
    # A pod both steps admit, then never created (a later admission step refused it):
    ghost = airflow_pod(CASE, "ghost")
    ghost["metadata"]["uid"] = str(uuid.uuid4())
    assert replicas.first.server.chain(ghost, NAMESPACE)[1]["allowed"] is True
    assert "used: 5, limited: 5" in _create(core, f"blocked-{uuid.uuid4().hex[:6]}")
    deadline = time.monotonic() + 40
    while (outcome := _create(core, f"late-{uuid.uuid4().hex[:6]}")) != "admitted":
        assert time.monotonic() < deadline, f"the ghost's reservation was never released: {outcome}"
        time.sleep(1)
    _finish(core, [p.metadata.name for p in core.list_namespaced_pod(NAMESPACE).items
                   if p.status.phase in ("Pending", "Running") and p.metadata.name.startswith(("fill-", "late-"))])


def _wait_quota_free(core: client.CoreV1Api) -> None:
    """Until a dry run of one more pod passes: the earlier tests' pods have finished in the watch."""
    deadline = time.monotonic() + 30
    while True:
        try:
            core.create_namespaced_pod(NAMESPACE, airflow_pod(CASE, f"probe-{uuid.uuid4().hex[:6]}"), dry_run="All")
            return
        except ApiException:
            assert time.monotonic() < deadline, "the quota never came free"
            time.sleep(0.5)


def _running(core: client.CoreV1Api, names: list[str]) -> list[str]:
    return [p.metadata.name for p in core.list_namespaced_pod(NAMESPACE).items
            if p.metadata.name in names and p.status.phase in ("Pending", "Running")]


def test_pods_completing_mid_burst_free_quota_without_over_admitting(replicas, controlplane):
    core = _core(controlplane)
    _wait_quota_free(core)
    names = [f"churn-{uuid.uuid4().hex[:8]}" for _ in range(60)]
    admitted: list[str] = []
    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = {pool.submit(_create, core, name): name for name in names}
        finished: list[str] = []
        for future in as_completed(futures):
            if future.result() == "admitted":
                admitted.append(futures[future])
                if len(finished) < 2:   # two tasks end while the burst goes on
                    _finish(core, [futures[future]])
                    finished.append(futures[future])
    try:
        assert QUOTA <= len(admitted) <= QUOTA + len(finished)
        assert len(_running(core, names)) <= QUOTA
    finally:
        _finish(core, admitted)


def test_killing_a_replica_mid_burst_never_over_admits(replicas, controlplane):
    core = _core(controlplane)
    _wait_quota_free(core)
    names = [f"kill-{uuid.uuid4().hex[:8]}" for _ in range(60)]
    outcomes: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = {pool.submit(_create, core, name): name for name in names}
        for done, future in enumerate(as_completed(futures)):
            outcomes[futures[future]] = future.result()
            if done == 15:
                replicas.second.stop()   # one replica dies; the balancer still sends it connections
    admitted = [n for n, o in outcomes.items() if o == "admitted"]
    try:
        assert len(admitted) == QUOTA
        refused = {o for o in outcomes.values() if o != "admitted"}
        assert all("exceeded quota: tenant forecasting" in o or 'failed calling webhook "' in o for o in refused), refused
    finally:
        _finish(core, admitted)
