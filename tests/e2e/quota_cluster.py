"""The quota e2e rig: several `serve --track-usage` replicas behind one address (a round-robin
TCP balancer standing in for the Service), a TLS-terminating proxy that can stall or cut one
replica's watches of the API server, and the helpers the quota modules share."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .conftest import TENANT_NAMESPACES, RegisteredWebhook, airflow_pod
from .controlplane import COMPLETE_AFTER_LABEL, ControlPlane
from conftest import POLICY_FILE
from serve import WebhookServer, free_port

NAMESPACE, CASE, QUOTA = "airflow", "kpo_nightly_a100", 5   # tenant forecasting: namespace airflow, nightly_*


class _Loop:
    """An asyncio loop on a daemon thread, serving one listener."""

    def _start_loop(self, serve) -> None:
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(serve())
            started.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        started.wait(5)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, hold=lambda: False) -> None:
    """Copy until EOF; while ``hold()`` is true, each chunk waits (nothing is lost)."""
    try:
        while data := await src.read(65536):
            while hold():
                await asyncio.sleep(0.05)
            dst.write(data)
            await dst.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        dst.close()


class RoundRobin(_Loop):
    """A TCP balancer on 127.0.0.1: each connection goes to the next backend (TLS passes through).
    :attr:`accepted` counts the connections it has passed to each backend port (each one a new
    TCP connection and TLS handshake on that replica; benchmarks/admission.py reports them)."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = itertools.cycle(backends)
        self.accepted = dict.fromkeys(backends, 0)
        self.port = free_port()
        self._start_loop(lambda: asyncio.start_server(self._handle, "127.0.0.1", self.port))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = next(self.backends)
        self.accepted[backend] += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


class WatchProxy(_Loop):
    """One replica's way to the API server: TLS terminated here (a serving certificate from the
    testbed CA), each connection forwarded over TLS with the replica's own credentials (the
    admin client certificate). It reads each request line, so it knows which connections carry
    ``watch=true`` requests, and can hold their responses (:attr:`stalled`: the watch hears
    nothing, every other request flows) or cut them (:meth:`cut`). No hook in the product:
    the replica just has a kubeconfig pointing here."""

    _REQUEST = re.compile(rb"(?:^|\r\n)(?:GET|POST|PUT|PATCH|DELETE|HEAD) (\S+) HTTP/1\.1\r\n")

    def __init__(self, cp: ControlPlane, tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        cert, key = cp.ca.issue("watch-proxy", hosts=["127.0.0.1", "localhost"])
        (tmp / "proxy.crt").write_bytes(cert)
        (tmp / "proxy.key").write_bytes(key)
        self.serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.serving.load_cert_chain(tmp / "proxy.crt", tmp / "proxy.key")
        pki = cp.dir / "pki"
        self.upstream = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.upstream.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        self.api_port = int(cp.server.rsplit(":", 1)[1])
        self.stalled = False
        self.watches: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.port = free_port()
        kubeconfig = yaml.safe_load(cp.kubeconfig.read_text())
        kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = tmp / "proxied.kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig))
        self._start_loop(lambda: asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.serving))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.api_port, ssl=self.upstream,
                                                                 server_hostname="127.0.0.1")
        except OSError:
            writer.close()
            return
        pair, watching = (writer, up_writer), [False]

        async def requests() -> None:
            try:
                while data := await reader.read(65536):
                    if found := self._REQUEST.findall(data):
                        watching[0] = b"watch=true" in found[-1]
                        (self.watches.add if watching[0] else self.watches.discard)(pair)
                    up_writer.write(data)
                    await up_writer.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                self.watches.discard(pair)
                up_writer.close()

        await asyncio.gather(requests(), _pipe(up_reader, writer, lambda: watching[0] and self.stalled))

    def cut(self) -> None:
        """Break every watch connection now (the replica's watch sees a reset stream)."""
        def abort() -> None:
            for down, up in list(self.watches):
                down.transport.abort()
                up.transport.abort()
        self.loop.call_soon_threadsafe(abort)


#: The ghost grace the replicas run with (--reservation-grace), in seconds.
GRACE = 3.0


def quota_policy(tmp: Path) -> Path:
    data = yaml.safe_load(POLICY_FILE.read_text())
    data["spec"]["tenants"]["forecasting"]["quota"] = {"nvidia.com/gpu": QUOTA, "gpuEquivalent": QUOTA}
    path = tmp / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Replicas:
    """Two tracked replicas sharing one certificate, behind one balancer, registered. The second
    reaches the API server through ``second_kubeconfig`` when given (a :class:`WatchProxy`)."""

    def __init__(self, cp: ControlPlane, tmp: Path, second_kubeconfig: Path | None = None, *,
                 policy: Path | None = None, tracked: bool = True) -> None:
        self.cp, self.tmp, self.policy = cp, tmp, policy or quota_policy(tmp)
        self.args: tuple[str, ...] = ("--track-usage", "--kubeconfig", str(cp.kubeconfig), "--ledger-namespace",
                                      "default", "--reservation-grace", str(GRACE)) if tracked else ()
        self.second_args = self.args if second_kubeconfig is None or not tracked else (
            "--track-usage", "--kubeconfig", str(second_kubeconfig), *self.args[3:])
        self.first = RegisteredWebhook(cp, tmp / "a", self.args, self.policy)
        self.second = self._replica("b")
        self.balancer = RoundRobin([self.first.server.port, self.second.port])
        self.first.base_url = f"https://127.0.0.1:{self.balancer.port}"
        self.first.server.wait_ready()

    def _replica(self, name: str) -> WebhookServer:
        server = WebhookServer(self.tmp / name, self.policy, self.second_args, certs=self.first.server.certs)
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


def serving(cp: ControlPlane, tmp: Path, second_kubeconfig: Path | None = None, **options: Any) -> Iterator[Replicas]:
    """Replicas registered for the duration (the tenant namespaces created), then unregistered and
    stopped; ``options`` as :class:`Replicas` takes them."""
    for name in TENANT_NAMESPACES:
        cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    started = Replicas(cp, tmp, second_kubeconfig, **options)
    try:
        started.first.register()
        yield started
        started.first.unregister()
    finally:
        started.stop()


def burst_client(cp: ControlPlane, user: client.ApiClient | None = None) -> client.CoreV1Api:
    """A client with a connection pool wide enough for the burst: the admin, or ``user``'s identity."""
    if user is not None:
        configuration = user.configuration
    else:
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(cp.kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = 32
    return client.CoreV1Api(client.ApiClient(configuration))


def create(core: client.CoreV1Api, name: str, pod: dict[str, Any] | None = None) -> str:
    """'admitted', or the denial message. ``pod``: what to create (default: the CASE pod, named
    ``name``, in NAMESPACE), in its own ``metadata.namespace``."""
    pod = pod or airflow_pod(CASE, name, complete_after=None)
    try:
        core.create_namespaced_pod(pod["metadata"].get("namespace", NAMESPACE), pod)
        return "admitted"
    except ApiException as err:
        return json.loads(err.body)["message"]


def burst(core: client.CoreV1Api, prefix: str, count: int = 100, workers: int = 25,
          during: Callable[[int], None] = lambda done: None,
          make: Callable[[int, str], dict[str, Any]] | None = None) -> dict[str, str]:
    """``count`` concurrent creates: name -> 'admitted' or the denial; ``during(n)`` after the n-th
    answer; ``make(i, name)`` the i-th pod (default: the CASE pod in NAMESPACE)."""
    names = [f"{prefix}-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    outcomes: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(create, core, name, make(i, name) if make else None): name
                   for i, name in enumerate(names)}
        for done, future in enumerate(as_completed(futures)):
            outcomes[futures[future]] = future.result()
            during(done)
    return outcomes


def finish(core: client.CoreV1Api, names: list[str]) -> None:
    for name in names:
        core.patch_namespaced_pod(name, NAMESPACE, {"metadata": {"labels": {COMPLETE_AFTER_LABEL: "0s"}}})


def ledger_rounds(server: WebhookServer, result: str) -> float:
    """The replica's gpu_webhook_ledger_rounds_total{result=...}, as Prometheus would scrape it."""
    found = re.search(rf'^gpu_webhook_ledger_rounds_total{{result="{result}"}} (\S+)$',
                      server.client.get("/metrics").text, re.M)
    assert found, f"no ledger rounds counted as {result}"
    return float(found.group(1))


def wait_quota_free(core: client.CoreV1Api) -> None:
    """Until a dry run of one more pod passes: the earlier tests' pods have finished in the watch."""
    deadline = time.monotonic() + 30
    while True:
        try:
            core.create_namespaced_pod(NAMESPACE, airflow_pod(CASE, f"probe-{uuid.uuid4().hex[:6]}"), dry_run="All")
            return
        except ApiException:
            assert time.monotonic() < deadline, "the quota never came free"
            time.sleep(0.5)


def running(core: client.CoreV1Api, names: list[str]) -> list[str]:
    return [p.metadata.name for p in core.list_namespaced_pod(NAMESPACE).items
            if p.metadata.name in names and p.status.phase in ("Pending", "Running")]


