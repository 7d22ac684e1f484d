"""Exactly the quota, whatever the watches do, and no ghost quota: two `serve --track-usage`
replicas behind one address, the second reaching the API server through a proxy that can stall
or cut its watches (tests/e2e/quota_cluster.py), pods created by a hostile tenant (a
ServiceAccount with the default ``edit`` role).

Proven:
- one replica's watch stalled for a whole 100-create burst: exactly the quota admitted; the
  stalled replica refuses with a retryable 503 once the other replica has pruned reservations
  its watch cannot see, never over-admits;
- a watch broken and resumed mid-burst: exactly the quota; the broken replica goes unready
  (/readyz 503) until its re-list completes;
- a create that passes /validate and then fails (AlreadyExists, a later validating webhook's
  denial, a ResourceQuota) holds its tenant's quota for no more than the grace plus one round.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from .conftest import StubWebhook, airflow_pod, denying, tenant_user
from .controlplane import ControlPlane
from .quota_cluster import (
    CASE,
    GRACE,
    NAMESPACE,
    QUOTA,
    Replicas,
    WatchProxy,
    burst,
    burst_client,
    create,
    finish,
    ledger_rounds,
    serving,
    wait_quota_free,
)

pytestmark = pytest.mark.e2e

#: What a refused create may say in these tests: the quota, or a retryable "not now".
REFUSALS = ("exceeded quota: tenant forecasting", "is behind the quota ledger", "has not finished reading")


@pytest.fixture(scope="module")
def proxied(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """The second replica reaches the API server through ``.proxy``, a :class:`WatchProxy`."""
    tmp = tmp_path_factory.mktemp("proxied")
    proxy = WatchProxy(controlplane, tmp / "proxy")
    try:
        for started in serving(controlplane, tmp, second_kubeconfig=proxy.kubeconfig):
            started.proxy = proxy
            yield started
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def tenant(controlplane: ControlPlane, edit_role_ready: None, tmp_path_factory: pytest.TempPathFactory
           ) -> client.CoreV1Api:
    return burst_client(controlplane, tenant_user(controlplane, NAMESPACE, tmp_path_factory.mktemp("tenant")))


def _usage_seen(server, gpus: int) -> bool:
    """Whether this replica's watch charges forecasting with ``gpus`` GPUs (its /metrics)."""
    return any(row.startswith("gpu_webhook_tenant_usage{") and 'tenant="forecasting"' in row
               and 'line="nvidia.com/gpu"' in row and float(row.split()[-1]) == gpus
               for row in server.client.get("/metrics").text.splitlines())


def _prefill(proxied: Replicas, core: client.CoreV1Api, count: int) -> list[str]:
    """``count`` admitted pods, and the first replica's (direct) watch has seen them."""
    names = [f"pre-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    for name in names:
        assert create(core, name) == "admitted"
    proxied.first.wait_until(lambda: _usage_seen(proxied.first.server, count))
    return names


def _refused(outcomes: dict[str, str]) -> set[str]:
    refused = {o for o in outcomes.values() if o != "admitted"}
    assert all(any(r in o for r in REFUSALS) for o in refused), refused
    return refused


def test_a_watch_stalled_for_the_whole_burst_never_over_admits(proxied, controlplane, tenant):
    wait_quota_free(tenant)
    proxied.proxy.stalled = True
    admitted: list[str] = []
    try:
        admitted += _prefill(proxied, tenant, 3)
        # One ledger round on the first replica (its watch has seen the 3 pods): it prunes their
        # reservations, which the stalled replica's watch cannot see. Its own reservation is a
        # ghost (no such pod), gone one round after the grace.
        ghost = airflow_pod(CASE, f"ghost-{uuid.uuid4().hex[:6]}")
        ghost["metadata"]["uid"] = str(uuid.uuid4())
        assert proxied.first.server.chain(ghost, NAMESPACE)[1]["allowed"] is True
        time.sleep(GRACE + 0.5)
        before = {r: ledger_rounds(proxied.second, r) for r in ("watch-behind", "written")}
        outcomes = burst(tenant, "stalled")
        admitted += [n for n, o in outcomes.items() if o == "admitted"]
        assert len(admitted) == QUOTA, _refused(outcomes)
        _refused(outcomes)
        after = {r: ledger_rounds(proxied.second, r) - before[r] for r in before}
        assert after["watch-behind"] > 0 and after["written"] == 0, after
        assert any("is behind the quota ledger" in o for o in outcomes.values())
        print(f"stalled watch: {len(admitted)} admitted of {QUOTA}; the stalled replica answered 'watch behind' "
              f"(503) in {after['watch-behind']:g} ledger rounds and admitted none")
    finally:
        proxied.proxy.stalled = False
        finish(tenant, admitted)


def test_a_watch_broken_and_resumed_mid_burst_goes_unready_and_never_over_admits(proxied, controlplane, tenant):
    wait_quota_free(tenant)
    admitted: list[str] = []
    readiness: list[int] = []
    stop_polling = threading.Event()

    def poll_readiness() -> None:
        while not stop_polling.is_set():
            readiness.append(proxied.second.client.get("/readyz").status_code)
            time.sleep(0.05)

    def break_at(done: int) -> None:
        if done == 15:   # break: the stream is cut and the next watch hears nothing for 3 s
            proxied.proxy.stalled = True
            threading.Thread(target=poll_readiness, daemon=True).start()
            proxied.proxy.cut()
        if done == 60:   # resume
            proxied.proxy.stalled = False

    try:
        admitted += _prefill(proxied, tenant, 3)
        outcomes = burst(tenant, "broken", during=break_at)
        admitted += [n for n, o in outcomes.items() if o == "admitted"]
        stop_polling.set()
        assert len(admitted) == QUOTA, _refused(outcomes)
        _refused(outcomes)
        assert 503 in readiness, f"the replica whose watch broke stayed ready: {readiness[:20]}"
        proxied.second.wait_ready()   # and ready again once it has listed
    finally:
        stop_polling.set()
        proxied.proxy.stalled = False
        finish(tenant, admitted)


# ----------------------------------------------------------------------------------- ghosts
class Denier:
    """A second validating webhook that denies pods labelled ``ghost-test=deny`` (registered by
    the test, called by the API server in parallel with ours)."""

    NAME = "zz-ghost-test-denier"

    def __init__(self, cp: ControlPlane, tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        cert, key = cp.ca.issue("denier", hosts=["127.0.0.1"])
        (tmp / "tls.crt").write_bytes(cert)
        (tmp / "tls.key").write_bytes(key)

        self.stub = StubWebhook(denying("denied by the test's second webhook"), tmp / "tls.crt", tmp / "tls.key")
        self.cp = cp
        cp.apply({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                  "metadata": {"name": self.NAME},
                  "webhooks": [{"name": "deny.ghost-test.example", "admissionReviewVersions": ["v1"],
                                "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 5,
                                "clientConfig": {"url": self.stub.url,
                                                 "caBundle": base64.b64encode(cp.ca.pem).decode()},
                                "objectSelector": {"matchLabels": {"ghost-test": "deny"}},
                                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                           "resources": ["pods"]}]}]})

    def stop(self) -> None:
        client.AdmissionregistrationV1Api(self.cp.api_client()).delete_validating_webhook_configuration(self.NAME)
        self.stub.stop()


def _labelled(name: str) -> dict:
    pod = airflow_pod(CASE, name, complete_after=None)
    pod["metadata"]["labels"]["ghost-test"] = "deny"
    return pod


def _fail_create(core: client.CoreV1Api, pod: dict) -> str:
    try:
        core.create_namespaced_pod(NAMESPACE, pod)
    except ApiException as err:
        return json.loads(err.body)["message"]
    raise AssertionError(f"the create of {pod['metadata']['name']} was meant to fail after /validate")


def _already_exists(cp: ControlPlane, core: client.CoreV1Api, tmp: Path, filled: list[str]) -> Callable[[], None]:
    message = _fail_create(core, airflow_pod(CASE, filled[0], complete_after=None))
    assert "already exists" in message, message
    return lambda: None


def _until_refused(core: client.CoreV1Api, pod: Callable[[str], dict], text: str) -> None:
    """Until a dry run of ``pod`` is refused with ``text`` (the API server has taken the new
    object in); dry runs reserve nothing."""
    deadline = time.monotonic() + 20
    while True:
        try:
            core.create_namespaced_pod(NAMESPACE, pod(f"probe-{uuid.uuid4().hex[:6]}"), dry_run="All")
        except ApiException as err:
            if text in (err.body or ""):
                return
        assert time.monotonic() < deadline, f"never refused with {text!r}"
        time.sleep(0.25)


def _later_webhook(cp: ControlPlane, core: client.CoreV1Api, tmp: Path, filled: list[str]) -> Callable[[], None]:
    denier = Denier(cp, tmp / "denier")
    _until_refused(core, _labelled, "second webhook")
    message = _fail_create(core, _labelled(f"denied-{uuid.uuid4().hex[:6]}"))
    assert "denied by the test's second webhook" in message, message
    return denier.stop


def _resource_quota(cp: ControlPlane, core: client.CoreV1Api, tmp: Path, filled: list[str]) -> Callable[[], None]:
    admin = client.CoreV1Api(cp.api_client())
    hard = {"requests.nvidia.com/gpu": "1"}
    admin.create_namespaced_resource_quota(NAMESPACE, {"metadata": {"name": "ghost-test"}, "spec": {"hard": hard}})
    # No quota controller in the testbed: the status it would write, full.
    admin.patch_namespaced_resource_quota_status("ghost-test", NAMESPACE, {"status": {"hard": hard, "used": hard}})
    _until_refused(core, lambda name: airflow_pod(CASE, name, complete_after=None), "exceeded quota: ghost-test")
    message = _fail_create(core, airflow_pod(CASE, f"over-rq-{uuid.uuid4().hex[:6]}", complete_after=None))
    assert "exceeded quota: ghost-test" in message, message
    return lambda: admin.delete_namespaced_resource_quota("ghost-test", NAMESPACE)


GHOSTS = [
    ("a create refused as AlreadyExists", _already_exists),
    ("a create denied by a later validating webhook", _later_webhook),
    ("a create refused by a ResourceQuota", _resource_quota),
]


@pytest.mark.parametrize("description, provoke", GHOSTS, ids=[g[0] for g in GHOSTS])
def test_a_create_that_fails_after_validation_holds_quota_no_longer_than_the_grace(
        proxied, controlplane, tenant, tmp_path, description, provoke):
    wait_quota_free(tenant)
    proxied.first.wait_until(lambda: _usage_seen(proxied.first.server, 0) and _usage_seen(proxied.second, 0), 30)
    filled = [f"fill-{uuid.uuid4().hex[:8]}" for _ in range(QUOTA - 1)]
    try:
        for name in filled:
            assert create(tenant, name) == "admitted"
        undo = provoke(controlplane, tenant, tmp_path, filled)
        failed = time.monotonic()
        assert "used: 5, limited: 5" in create(tenant, f"blocked-{uuid.uuid4().hex[:6]}"), "the ghost holds quota"
        undo()
        while (outcome := create(tenant, name := f"late-{uuid.uuid4().hex[:6]}")) != "admitted":
            assert "used: 5, limited: 5" in outcome or "has not finished" in outcome, outcome
            assert time.monotonic() - failed < GRACE + 10, f"the ghost still holds the quota: {outcome}"
            time.sleep(0.25)
        filled.append(name)
        print(f"{description}: the ghost held the quota for {time.monotonic() - failed:.1f} s (grace {GRACE:g} s)")
    finally:
        finish(tenant, filled)
