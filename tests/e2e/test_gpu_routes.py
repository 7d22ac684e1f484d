"""No GPU without a profile, on the real API server: every route to a GPU that is not the device
plugin's allocation, tried by a hostile namespace user (a ServiceAccount with the default
``edit`` role), through the shipped (generated) webhook configurations.

Each case here was admitted before issue 14: the CPU pods were never even sent. docs/security.md
lists the routes, the container-toolkit source of each, and how it is closed.
"""

from __future__ import annotations

import json
import uuid
from base64 import b64encode
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from airflow_gpu_webhook.cli.certs import ca_bundle, generate, inject_ca_bundle
from airflow_gpu_webhook.cli.conditions import configurations
from airflow_gpu_webhook.core.policy import load_policy

from .conftest import RegisteredWebhook, StubWebhook, airflow_pod, tenant_user
from conftest import POLICY_FILE
from routes import ROUTES, base_container

pytestmark = pytest.mark.e2e

VOID = {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}
#: The vision tenant's namespace: a managed pod there is charged to vision.
NAMESPACE = "ml-jobs"


@pytest.fixture(scope="module")
def tenant(controlplane, edit_role_ready, webhook, tmp_path_factory) -> client.CoreV1Api:
    """The hostile tenant, in a namespace the policy gives GPUs to."""
    controlplane.apply({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"},
                        "handler": "nvidia"})
    return client.CoreV1Api(tenant_user(controlplane, NAMESPACE, tmp_path_factory.mktemp("tenant"), "gpu-routes"))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _pod(case_id: str, change: Callable[[dict[str, Any]], Any], complete_after: str | None = "1s") -> dict[str, Any]:
    pod = airflow_pod(case_id, unique("route"), complete_after=complete_after)
    pod["metadata"]["namespace"] = NAMESPACE
    change(pod)
    return pod


def message_of(err: ApiException) -> str:
    return json.loads(err.body)["message"]


@pytest.mark.parametrize("description, case_id, change, words", ROUTES, ids=[r[0] for r in ROUTES])
def test_each_route_to_a_gpu_is_refused_for_a_namespace_user(tenant, webhook, description, case_id, change, words):
    pod = _pod(case_id, change)
    with pytest.raises(ApiException) as caught:
        tenant.create_namespaced_pod(NAMESPACE, pod)
    assert caught.value.status == 403, caught.value.body
    assert words in message_of(caught.value)
    with pytest.raises(ApiException) as missing:   # read back as the admin
        webhook.core.read_namespaced_pod(pod["metadata"]["name"], NAMESPACE)
    assert missing.value.status == 404


def _with_sidecar_and_init(pod: dict[str, Any]) -> None:
    pod["spec"]["containers"].append({"name": "airflow-xcom-sidecar", "image": "alpine"})
    pod["spec"]["initContainers"] = [{"name": "fetch-data", "image": "nvidia/cuda:12.2.0-base-ubuntu22.04"}]


def test_every_container_of_a_managed_pod_without_a_gpu_is_stored_with_void(tenant):
    stored = tenant.create_namespaced_pod(NAMESPACE, _pod("kpo_h100_count2", _with_sidecar_and_init))
    env = {c.name: [{"name": e.name, "value": e.value} for e in (c.env or [])]
           for c in stored.spec.containers + stored.spec.init_containers}
    assert VOID in env["airflow-xcom-sidecar"] and VOID in env["fetch-data"]
    assert VOID not in env["base"] and VOID not in env["gpu-driver-validation"]


def _debug(*env: dict[str, str], **security: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": unique("debug"), "image": "busybox", "env": list(env)}
    if security:
        container["securityContext"] = security
    return container


def _add_ephemeral(core: client.CoreV1Api, name: str, container: dict[str, Any]) -> Any:
    """A strategic merge patch: ephemeral containers merge by name, so only the new one is sent."""
    return core.patch_namespaced_pod_ephemeralcontainers(name, NAMESPACE, {"spec": {"ephemeralContainers": [container]}})


@pytest.fixture(scope="module")
def debugger(controlplane, tenant) -> client.CoreV1Api:
    """The tenant, also allowed ``kubectl debug`` (pods/ephemeralcontainers), as namespace admins
    commonly grant it: the default ``edit`` role does not."""
    controlplane.apply([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "debug", "namespace": NAMESPACE},
         "rules": [{"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["get", "patch", "update"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "gpu-routes-debug", "namespace": NAMESPACE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "debug"},
         "subjects": [{"kind": "ServiceAccount", "name": "gpu-routes", "namespace": NAMESPACE}]},
    ])
    return tenant


def test_ephemeral_containers_on_a_running_managed_pod_are_voided_and_judged(debugger, controlplane):
    tenant = debugger
    name = tenant.create_namespaced_pod(NAMESPACE, _pod("kpo_h100_count2", lambda p: None, complete_after=None)
                                        ).metadata.name
    try:
        controlplane.wait_for_pod(NAMESPACE, name, lambda p: p.status.phase == "Running", timeout=30)
        stored = _add_ephemeral(tenant, name, _debug())
        debug = stored.spec.ephemeral_containers[-1]
        assert [{"name": e.name, "value": e.value} for e in debug.env] == [VOID]
        for hostile, words in [
            (_debug({"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}),
             "sets env NVIDIA_VISIBLE_DEVICES='all'"),
            (_debug(privileged=True), "sets securityContext.privileged: true in a GPU pod"),
            (_debug(capabilities={"add": ["SYS_ADMIN"]}), "adds capability SYS_ADMIN"),
            ({**_debug(), "envFrom": [{"configMapRef": {"name": "any"}}]}, "reads envFrom with no prefix"),
        ]:
            with pytest.raises(ApiException) as caught:
                _add_ephemeral(tenant, name, hostile)
            assert caught.value.status == 403 and words in message_of(caught.value), caught.value.body
    finally:   # a running GPU pod holds its tenant's quota: later modules must not inherit it
        tenant.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)


# --- reinvocation: another mutating webhook edits every container, ours runs again ---

def _foreign_env(request: dict[str, Any]) -> dict[str, Any]:
    """A foreign webhook's answer: env FOREIGN_TRACE=1 on every container and init container that lacks it."""
    pod = request["object"]
    ops = []
    for field in ("initContainers", "containers"):
        for i, c in enumerate(pod["spec"].get(field) or []):
            if any(e.get("name") == "FOREIGN_TRACE" for e in c.get("env") or []):
                continue
            entry = {"name": "FOREIGN_TRACE", "value": "1"}
            ops.append({"op": "add", "path": f"/spec/{field}/{i}/env/-", "value": entry} if c.get("env")
                       else {"op": "add", "path": f"/spec/{field}/{i}/env", "value": [entry]})
    response: dict[str, Any] = {"allowed": True}
    if ops:
        response.update(patchType="JSONPatch", patch=b64encode(json.dumps(ops).encode()).decode())
    return response


@pytest.fixture
def foreign_webhook(controlplane, tmp_path: Path) -> Iterator[str]:
    """A second mutating webhook (its own CA from the project's cert code), called after ours
    (configurations run in name order) with reinvocationPolicy IfNeeded, for labelled pods."""
    certs = generate(tmp_path / "foreign", "foreign", "default")
    stub = StubWebhook(_foreign_env, certs.cert, certs.key)
    label = "foreign-webhook-test"
    controlplane.apply({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "zz-foreign-env"},
        "webhooks": [{"name": "env.foreign.example", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                      "failurePolicy": "Fail", "reinvocationPolicy": "IfNeeded", "timeoutSeconds": 5,
                      "clientConfig": {"url": stub.url, "caBundle": ca_bundle(certs.ca_cert)},
                      "objectSelector": {"matchLabels": {label: "true"}},
                      "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                 "resources": ["pods"]}]}]})
    try:
        yield label
    finally:
        client.AdmissionregistrationV1Api(controlplane.api_client()).delete_mutating_webhook_configuration(
            "zz-foreign-env")
        stub.stop()


def test_a_foreign_webhook_editing_every_container_leaves_exactly_one_validator(tenant, foreign_webhook,
                                                                                controlplane):
    def labelled(pod: dict[str, Any]) -> None:
        _with_sidecar_and_init(pod)
        pod["metadata"]["labels"][foreign_webhook] = "true"

    pod = _pod("kpo_h100_count2", labelled)
    RegisteredWebhook.wait_until(lambda: _foreign_ready(tenant, pod))
    stored = tenant.create_namespaced_pod(NAMESPACE, pod)
    names = [c.name for c in stored.spec.init_containers]
    assert names == ["gpu-driver-validation", "fetch-data"], names
    for c in stored.spec.containers + stored.spec.init_containers:
        env = [e.name for e in c.env or []]
        assert env.count("FOREIGN_TRACE") == 1, (c.name, env)
        assert (env.count("NVIDIA_VISIBLE_DEVICES") == 1) == (c.name not in ("base", "gpu-driver-validation"))


def _foreign_ready(core: client.CoreV1Api, pod: dict[str, Any]) -> bool:
    """The API server calls the foreign webhook (a dry run shows its env var)."""
    probe = json.loads(json.dumps(pod))
    probe["metadata"]["name"] = unique("probe")
    created = core.create_namespaced_pod(NAMESPACE, probe, dry_run="All")
    return any(e.name == "FOREIGN_TRACE" for e in created.spec.containers[0].env or [])


# --- gpuReachingPods: void, with the configurations generated from that policy ---

@pytest.fixture
def void_mode(controlplane, webhook, tmp_path: Path) -> Iterator[RegisteredWebhook]:
    """The webhook serving a policy with ``gpuReachingPods: void``, registered through the
    configurations generated from that same policy; the shipped ones are back afterwards."""
    data = yaml.safe_load(POLICY_FILE.read_text())
    data["spec"]["gpuReachingPods"] = "void"
    policy_file = tmp_path / "void-policy.yaml"
    policy_file.write_text(yaml.safe_dump(data))
    void = RegisteredWebhook(controlplane, tmp_path, policy=policy_file)

    def generated(url: str | None = None) -> list[dict[str, Any]]:
        docs = configurations(load_policy(policy_file))
        inject_ca_bundle(docs, ca_bundle(void.server.certs / "ca.crt"), url=url or void.base_url)
        return docs

    void.configurations = generated  # type: ignore[method-assign]
    try:
        void.register()
        yield void
    finally:
        void.server.stop()
        webhook.register()


def test_in_void_mode_a_pod_that_can_reach_a_gpu_node_gets_void_on_every_container(tenant, void_mode):
    def reaching(pod: dict[str, Any]) -> None:
        _with_sidecar_and_init(pod)
        pod["spec"]["tolerations"] = [{"operator": "Exists"}]

    stored = tenant.create_namespaced_pod(NAMESPACE, _pod("kpo_cpu_plain", reaching))
    for c in stored.spec.containers + stored.spec.init_containers:
        assert [{"name": e.name, "value": e.value} for e in c.env or []].count(VOID) == 1, c.name
    with pytest.raises(ApiException) as caught:   # privilege still refused on a pod that reaches GPUs
        tenant.create_namespaced_pod(NAMESPACE, _pod("kpo_cpu_plain", lambda p: (
            reaching(p), base_container(p).update(securityContext={"privileged": True}))))
    assert "sets securityContext.privileged: true in a pod that can reach a GPU node" in message_of(caught.value)
