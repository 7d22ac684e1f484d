"""Session fixture for the e2e testbed: build (cached), start, create node pools, always stop.

A component that cannot start FAILS the session's e2e tests with its log tail; nothing here skips.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from airflow_gpu_webhook.cli.certs import ca_bundle, inject_ca_bundle, load_documents

from . import dra_cluster
from .controlplane import COMPLETE_AFTER_LABEL, ControlPlane, build
from conftest import POLICY_FILE, ROOT, airflow_fixture
from serve import WebhookServer, send_json

WEBHOOK_CONFIGURATIONS = ROOT / "manifests" / "base" / "webhook-configurations.yaml"
#: Namespaces the reference policy's tenants match on (plus one that fits no tenant).
TENANT_NAMESPACES = ("ml-jobs", "airflow", "analytics")


@pytest.fixture(scope="session")
def controlplane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """The running testbed with the simulated GPU/CPU node pools Ready: the device-plugin pools of
    testbed/nodes.yaml and the DRA pool of testbed/dra-nodes.yaml with its ResourceSlices and
    NVIDIA's DeviceClasses (``dra_cluster.install``).

    Register webhooks with ``controlplane.apply(config_dict)``; create pods with
    ``kubernetes.client.CoreV1Api(controlplane.api_client())`` or ``controlplane.apply``.
    """
    capman = request.config.pluginmanager.getplugin("capturemanager")

    def echo(line: str) -> None:  # show build progress live: a cold build takes minutes
        with capman.global_and_fixture_disabled():
            print(line, flush=True)

    cp = ControlPlane(build(echo=echo))
    request.addfinalizer(cp.stop)  # also atexit and PR_SET_PDEATHSIG in the children
    cp.start()
    cp.create_gpu_nodes()
    dra_cluster.install(cp)  # the DRA pool beside the device-plugin pools (tests/e2e/dra_cluster.py)
    yield cp


@pytest.fixture
def namespace(controlplane: ControlPlane) -> str:
    """A fresh namespace per test (never deleted: no namespace controller runs, so a deleted
    namespace would stay Terminating; the whole etcd is thrown away at the end)."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    controlplane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


# ------------------------------------------------------------------ the webhook, as it ships
class RegisteredWebhook:
    """A running `gpu-webhook serve` registered with the test API server through the project's
    own manifests/base/webhook-configurations.yaml (caBundle and a loopback url injected by
    `gpu-webhook certs`'s own code), so what is tested is what ships. It serves with
    ``--client-ca``: only the testbed's API server, which presents its client certificate
    through its AdmissionConfiguration, gets pods judged."""

    def __init__(self, controlplane: ControlPlane, tmp: Path, extra_args: tuple[str, ...] = (),
                 policy: Path = POLICY_FILE) -> None:
        self.cp = controlplane
        self.server = WebhookServer(tmp, policy, extra_args, client_ca=controlplane.webhook_client)
        #: Where the API server is told to call; a test may put a load balancer in front.
        self.base_url = f"https://127.0.0.1:{self.server.port}"
        self.server.wait_ready()
        self.core = client.CoreV1Api(controlplane.api_client())
        self.admission = client.AdmissionregistrationV1Api(controlplane.api_client())

    def configurations(self, url: str | None = None) -> list[dict[str, Any]]:
        docs = load_documents(WEBHOOK_CONFIGURATIONS)
        inject_ca_bundle(docs, ca_bundle(self.server.certs / "ca.crt"), url=url or self.base_url)
        return docs

    def register(self, url: str | None = None) -> None:
        """Apply the configurations and wait until the API server calls the webhook (which may
        also deny the probe: quota held by earlier modules' pods is no reason to wait)."""
        self.cp.apply(self.configurations(url))
        self.wait_until(lambda: self.probe() in (("mutated", "denied") if url is None else ("refused",)))

    def unregister(self) -> None:
        for doc in self.configurations():
            delete = (self.admission.delete_mutating_webhook_configuration
                      if doc["kind"] == "MutatingWebhookConfiguration"
                      else self.admission.delete_validating_webhook_configuration)
            try:
                delete(doc["metadata"]["name"])
            except ApiException as err:
                if err.status != 404:
                    raise
        self.wait_until(lambda: self.probe() == "untouched")

    def probe(self) -> str:
        """Dry-run an Airflow GPU pod: 'mutated', 'denied' (by this webhook), 'refused' (the API
        server could not call it), or 'untouched' (no webhook registered)."""
        pod = airflow_pod("kpo_h100_count2", f"probe-{uuid.uuid4().hex[:6]}")
        try:
            created = self.core.create_namespaced_pod("ml-jobs", pod, dry_run="All")
        except ApiException as err:
            message = json.loads(err.body).get("message", "") if err.body else ""
            if "failed calling webhook" in message:
                return "refused"
            return "denied" if 'gpu.platform" denied the request' in message else f"error {err.status}: {message}"
        labels = created.metadata.labels or {}
        return "mutated" if labels.get("gpu.platform/managed") == "true" else "untouched"

    @staticmethod
    def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
        """The API server picks up webhook configuration changes within about a second."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the API server did not pick up the webhook configuration change")
            time.sleep(0.25)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.server.log.read_text().splitlines()[-lines:])


def airflow_pod(case_id: str, name: str, *, complete_after: str | None = "1s") -> dict[str, Any]:
    """An Airflow-built fixture pod with a unique name (and, by default, kwok's completion label)."""
    pod = airflow_fixture(case_id)["pod"]
    pod["metadata"]["name"] = name
    if complete_after is not None:
        pod["metadata"]["labels"][COMPLETE_AFTER_LABEL] = complete_after
    return pod


def registered_webhook(controlplane: ControlPlane, tmp: Path, *args: str,
                       policy: Path = POLICY_FILE) -> Iterator[RegisteredWebhook]:
    """Serve (with ``args`` and ``policy``), register for the duration, then unregister and stop."""
    for name in TENANT_NAMESPACES:
        controlplane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    registered = RegisteredWebhook(controlplane, tmp, args, policy)
    try:
        registered.register()
        yield registered
        registered.unregister()
    finally:
        registered.server.stop()


@pytest.fixture(scope="module")
def webhook(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegisteredWebhook]:
    """The webhook registered for one test module, and unregistered after it, so modules that
    test the bare control plane never meet it. Creates the policy's tenant namespaces."""
    yield from registered_webhook(controlplane, tmp_path_factory.mktemp("webhook"))


@pytest.fixture(scope="module")
def tracked_webhook(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegisteredWebhook]:
    """The same, serving with ``--track-usage``: quota charged against the watched cluster."""
    yield from registered_webhook(controlplane, tmp_path_factory.mktemp("tracked"), "--track-usage", "--kubeconfig",
                                  str(controlplane.kubeconfig), "--ledger-namespace", "default")


# ------------------------------------------------------------- a hostile tenant: the `edit` role
def aggregate_cluster_roles(controlplane: ControlPlane) -> None:
    """Fill every aggregated ClusterRole (``edit``, ``view``, ``admin``) with the rules of the
    roles its selectors pick, as kube-controller-manager's clusterrole-aggregation controller
    does. The testbed's controller manager runs only the resourceclaim controller, so without
    this ``edit`` grants nothing.

    Aggregated roles aggregate each other (``view`` is labelled into ``edit``, ``edit`` into
    ``admin``), so the passes repeat, reading the roles again, until nothing changes."""
    rbac = client.RbacAuthorizationV1Api(controlplane.api_client())
    serialize = client.ApiClient().sanitize_for_serialization
    changed = True
    while changed:
        changed = False
        roles = rbac.list_cluster_role().items
        for role in roles:
            selectors = (role.aggregation_rule.cluster_role_selectors or []) if role.aggregation_rule else []
            picked = [r for r in roles if r.metadata.name != role.metadata.name and any(
                all((r.metadata.labels or {}).get(k) == v for k, v in (s.match_labels or {}).items())
                for s in selectors)]
            rules = [serialize(rule) for r in picked for rule in (r.rules or [])]
            if selectors and rules and rules != [serialize(rule) for rule in (role.rules or [])]:
                rbac.patch_cluster_role(role.metadata.name, {"rules": rules})
                changed = True


def service_account_client(controlplane: ControlPlane, namespace: str, name: str, tmp: Path) -> client.ApiClient:
    """An API client holding a real token of ServiceAccount ``namespace/name`` (TokenRequest API)."""
    core = client.CoreV1Api(controlplane.api_client())
    token = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    ca = tmp / "testbed-ca.crt"
    ca.write_bytes(controlplane.ca.pem)
    config = client.Configuration(host=controlplane.server)
    config.ssl_ca_cert = str(ca)
    config.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(config)


@pytest.fixture(scope="session")
def edit_role_ready(controlplane: ControlPlane) -> None:
    aggregate_cluster_roles(controlplane)


def tenant_user(controlplane: ControlPlane, namespace: str, tmp: Path, name: str = "tenant") -> client.ApiClient:
    """A namespace user as a hostile tenant would be: ServiceAccount ``name`` in ``namespace``
    bound to the default ``edit`` ClusterRole there, and nothing else (call after the session
    fixture ``edit_role_ready``)."""
    controlplane.apply([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": f"{name}-edit", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
    ])
    return service_account_client(controlplane, namespace, name, tmp)


# ------------------------------------------------- a second webhook beside ours, as in real clusters
class StubWebhook:
    """A minimal admission webhook over TLS on 127.0.0.1, for tests that need another webhook
    beside ours (a later denial, a foreign mutation, the testbed's own wiring check).

    ``answer(request)`` returns the response's fields (``allowed``, ``status``, ``patch``...; the
    uid is added); every review received is kept in ``reviews``. Serves ``cert``/``key``.
    """

    def __init__(self, answer: Callable[[dict[str, Any]], dict[str, Any]], cert: Path, key: Path) -> None:
        reviews: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reviews.append(review)
                send_json(self, {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
                    "uid": review["request"]["uid"], **answer(review["request"])}})

            def log_message(self, *args: object) -> None:
                pass

        self.reviews = reviews
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.http.socket = context.wrap_socket(self.http.socket, server_side=True)
        self.port = self.http.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}/"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def denying(message: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A StubWebhook answer that denies every review with ``message``."""
    return lambda request: {"allowed": False, "status": {"code": 403, "message": message}}
