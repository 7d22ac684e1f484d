"""The hostile-tenant fixture itself: a ServiceAccount with the default ``edit`` role, no more."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from .conftest import tenant_user


@pytest.fixture
def tenant(controlplane, edit_role_ready, namespace, tmp_path) -> client.ApiClient:
    return tenant_user(controlplane, namespace, tmp_path)


def test_the_tenant_can_create_and_relabel_pods_in_its_namespace(controlplane, tenant, namespace) -> None:
    core = client.CoreV1Api(tenant)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "cpu"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    core.create_namespaced_pod(namespace, pod)
    patched = core.patch_namespaced_pod("cpu", namespace, {"metadata": {"labels": {"team": "vision"}}})
    assert patched.metadata.labels == {"team": "vision"}


@pytest.mark.parametrize("call", [
    pytest.param(lambda core, ns: core.list_namespaced_pod("kube-system"), id="read pods of another namespace"),
    pytest.param(lambda core, ns: core.patch_namespace(ns, {"metadata": {"labels": {"x": "y"}}}),
                 id="label its own namespace"),
    pytest.param(lambda core, ns: core.list_namespaced_config_map("gpu-webhook-ledger"), id="read the quota ledger"),
])
def test_the_tenant_cannot(call, tenant, namespace) -> None:
    with pytest.raises(ApiException) as denied:
        call(client.CoreV1Api(tenant), namespace)
    assert denied.value.status == 403
