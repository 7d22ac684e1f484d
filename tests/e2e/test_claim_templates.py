"""The DRA profiles' ResourceClaimTemplates on the real API server: a namespace user with the
default ``edit`` role may write ResourceClaimTemplates, so the validating configuration's template
webhook (generated for the DRA policy, webhook/cli/conditions.py) must refuse any spec under a
``gpu-platform-<profile>`` name but the policy's, and must not be needed for the policy's own
(the chart installs those before the webhook answers).

What only the real API server can show: the template it stores (its defaults applied) is exactly
the one the matchConditions skip, its CEL accepts the map comparison, and ``resource.k8s.io/v1``
writes reach the webhook as the v1 kind the webhook reads.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from airflow_gpu_webhook.cli.certs import ca_bundle, inject_ca_bundle
from airflow_gpu_webhook.cli.conditions import configurations
from airflow_gpu_webhook.core.dra import claim_template
from airflow_gpu_webhook.core.policy import load_policy

from .conftest import RegisteredWebhook, tenant_user
from .ports import free_port
from conftest import DRA_POLICY_FILE
from serve import WebhookServer

pytestmark = pytest.mark.e2e

POLICY = load_policy(DRA_POLICY_FILE)


def template(profile: str, namespace: str, name: str | None = None, **exactly: Any) -> dict[str, Any]:
    """The policy's template of ``profile``, renamed and with ``exactly`` fields changed."""
    body = claim_template(profile, POLICY.spec.profiles[profile], namespace)
    body["spec"]["spec"]["devices"]["requests"][0]["exactly"].update(exactly)
    if name is not None:
        body["metadata"]["name"] = name
    return body


class Templates:
    """ResourceClaimTemplates of one namespace, as the hostile tenant writes them."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api, self.namespace = client.ResourceV1Api(api), namespace

    def create(self, body: dict[str, Any], dry_run: str | None = None) -> Any:
        return self.api.create_namespaced_resource_claim_template(self.namespace, body, dry_run=dry_run)

    def refusal(self, body: dict[str, Any]) -> str:
        """The API server's message when it refuses ``body`` (dry run: nothing is stored)."""
        with pytest.raises(ApiException) as refused:
            self.create(body, dry_run="All")
        return json.loads(refused.value.body)["message"]


@pytest.fixture(scope="module")
def served(controlplane, tmp_path_factory) -> Iterator[WebhookServer]:
    server = WebhookServer(tmp_path_factory.mktemp("dra-templates"), DRA_POLICY_FILE,
                           client_ca=controlplane.webhook_client)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def register(controlplane, server: WebhookServer, url: str) -> list[dict[str, Any]]:
    """The configurations generated for the DRA policy, calling ``url`` (trusting ``server``'s CA)."""
    docs = configurations(POLICY)
    inject_ca_bundle(docs, ca_bundle(server.certs / "ca.crt"), url=url)
    controlplane.apply(docs)
    return docs


def unregister(controlplane) -> None:
    admission = client.AdmissionregistrationV1Api(controlplane.api_client())
    for delete in (admission.delete_mutating_webhook_configuration, admission.delete_validating_webhook_configuration):
        try:
            delete("gpu-webhook")
        except ApiException as err:
            if err.status != 404:
                raise


@pytest.fixture
def tenant(controlplane, edit_role_ready, namespace, tmp_path: Path) -> Templates:
    return Templates(tenant_user(controlplane, namespace, tmp_path, "dra-tenant"), namespace)


def test_the_policys_templates_need_no_webhook_and_any_other_spec_is_blocked_without_one(controlplane, served,
                                                                                         tenant) -> None:
    """Registered, but nothing listens where the API server calls (a fresh install before the
    webhook's pods are ready): the policy's own templates are stored, every other spec under a
    platform name is refused (failurePolicy Fail), and other names pass."""
    register(controlplane, served, f"https://127.0.0.1:{free_port()}")
    try:
        rogue = template("a100-dra", tenant.namespace, count=8)
        RegisteredWebhook.wait_until(lambda: _refused(tenant, rogue))
        assert "failed calling webhook" in tenant.refusal(rogue)
        stored = tenant.create(template("a100-dra", tenant.namespace))
        tenant.create(template("a100-dra-mig-1g.10gb", tenant.namespace))
        # What the conditions compare with is what the API server stores, defaults and all.
        assert client.ApiClient().sanitize_for_serialization(stored.spec.spec) == \
            template("a100-dra", tenant.namespace)["spec"]["spec"]
        tenant.create(template("a100-dra", tenant.namespace, name="team-gpus", count=8))
        relabelled = tenant.api.patch_namespaced_resource_claim_template(
            "gpu-platform-a100-dra", tenant.namespace, {"metadata": {"labels": {"team": "vision"}}})
        assert relabelled.metadata.labels["team"] == "vision"
        assert "failed calling webhook" in tenant.refusal(
            template("a100-dra", tenant.namespace, name="gpu-platform-a100-dra-mig-1g.10gb"))
    finally:
        unregister(controlplane)


def test_with_the_webhook_serving_another_spec_is_refused_in_its_words(controlplane, served, tenant) -> None:
    register(controlplane, served, f"https://127.0.0.1:{served.port}")
    try:
        rogue = template("a100-dra", tenant.namespace, count=8)
        RegisteredWebhook.wait_until(lambda: _refused(tenant, rogue) and "failed calling" not in tenant.refusal(rogue))
        message = tenant.refusal(rogue)
        assert 'admission webhook "claim-templates.gpu.platform" denied the request' in message
        assert "'gpu-platform-a100-dra' is the GPU platform's template of profile a100-dra" in message
        unknown = template("a100-dra", tenant.namespace, name=f"gpu-platform-{uuid.uuid4().hex[:6]}")
        assert "is no DRA profile's template; choose another name" in tenant.refusal(unknown)
        # Sent without the defaults, stored with them: skipped, or admitted by the webhook.
        bare = template("a100-dra", tenant.namespace)
        for key in ("allocationMode", "count"):
            del bare["spec"]["spec"]["devices"]["requests"][0]["exactly"][key]
        assert tenant.create(bare).metadata.name == "gpu-platform-a100-dra"
    finally:
        unregister(controlplane)


def _refused(tenant: Templates, body: dict[str, Any]) -> bool:
    try:
        tenant.create(body, dry_run="All")
    except ApiException:
        return True
    return False
