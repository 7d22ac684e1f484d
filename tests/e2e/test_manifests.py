"""The shipped manifests, rendered by kustomize and accepted by the real API server.

`kubectl kustomize` (the testbed's kubectl, built from the Kubernetes module) renders the base
(manifests/) and both overlays; the API server takes every object: server-side apply for real
for the base's namespaced objects and RBAC, `dryRun=All` for the webhook configurations (real
ones would send GPU pods of other tests to a Service with no endpoints, failurePolicy Fail) and
for the overlays (same names as the base). A Pod made from the Deployment's template passes Pod
Security `restricted` in the webhook's namespace. The ServiceAccount, with a real token from the
TokenRequest API, can read and watch pods in every namespace, list the nodes, and keep the quota
ledger in its own namespace (the webhook's own Ledger code, for real), and nothing else.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from .controlplane import COMPLETE_AFTER_LABEL, ControlPlane
from conftest import POLICY_FILE, ROOT, airflow_fixture
from serve import WebhookServer

pytestmark = pytest.mark.e2e

MANIFESTS = ROOT / "manifests"
NAMESPACE = "gpu-webhook"
LEDGER_NAMESPACE = "gpu-webhook-ledger"
SERVICE_ACCOUNT = f"system:serviceaccount:{NAMESPACE}:gpu-webhook"
WEBHOOK_KINDS = {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
INJECT_CA_FROM = "cert-manager.io/inject-ca-from"
#: What the base renders: kind -> how many (the webhook's namespace and the ledger's; one of the rest).
BASE_OBJECTS = Counter({"Namespace": 2, "ServiceAccount": 1, "ClusterRole": 1, "ClusterRoleBinding": 1, "Role": 1,
                        "RoleBinding": 1, "ConfigMap": 1, "Service": 1, "Deployment": 1, "PodDisruptionBudget": 1,
                        "NetworkPolicy": 1, **dict.fromkeys(WEBHOOK_KINDS, 1)})
BASE_KINDS = set(BASE_OBJECTS)


def render(cp: ControlPlane, directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run([str(cp.bin_dir / "kubectl"), "kustomize", str(directory)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in the render"
    return found[0]


class Applier:
    """Server-side apply of rendered objects as the admin, for real or with dryRun=All."""

    def __init__(self, cp: ControlPlane) -> None:
        self.dynamic = DynamicClient(cp.api_client())

    def knows(self, obj: dict[str, Any]) -> bool:
        try:
            self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            return True
        except ResourceNotFoundError:
            return False

    def apply(self, obj: dict[str, Any], *, dry_run: bool) -> dict[str, Any]:
        resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        namespace = obj["metadata"].get("namespace") if resource.namespaced else None
        try:
            return self.dynamic.server_side_apply(resource, body=obj, namespace=namespace,
                                                  field_manager="gpu-webhook-manifests", force_conflicts=True,
                                                  dry_run="All" if dry_run else None).to_dict()
        except ApiException as err:
            pytest.fail(f"the API server refused {obj['kind']} {obj['metadata']['name']}: {err.status} {err.body}")


@pytest.fixture(scope="module")
def applier(controlplane: ControlPlane) -> Applier:
    return Applier(controlplane)


@pytest.fixture(scope="module")
def base(controlplane: ControlPlane, applier: Applier) -> list[dict[str, Any]]:
    """The base, rendered and applied: for real, but the webhook configurations with dryRun=All."""
    objs = render(controlplane, MANIFESTS)
    for obj in objs:
        applier.apply(obj, dry_run=obj["kind"] in WEBHOOK_KINDS)
    return objs


# ------------------------------------------------------------------------------------- the base
def test_the_base_ships_the_policy_contract_unchanged() -> None:
    assert (MANIFESTS / "base" / "policy.yaml").read_bytes() == POLICY_FILE.read_bytes(), \
        "manifests/base/policy.yaml must be a copy of manifests/policy.yaml: cp manifests/policy.yaml manifests/base/"


def test_the_base_renders_every_object_and_the_api_server_accepts_them(controlplane, base, applier) -> None:
    assert Counter(o["kind"] for o in base) == BASE_OBJECTS
    policy = one(base, "ConfigMap", "gpu-webhook-policy")
    assert policy["data"]["policy.yaml"] == POLICY_FILE.read_text()
    for config in (o for o in base if o["kind"] in WEBHOOK_KINDS):
        assert all("caBundle" not in w["clientConfig"] for w in config["webhooks"]), "an overlay sets caBundle"
        stored = applier.apply(config, dry_run=True)
        assert [w["name"] for w in stored["webhooks"]] == [w["name"] for w in config["webhooks"]]
    core = client.CoreV1Api(controlplane.api_client())
    assert core.read_namespaced_config_map("gpu-webhook-policy", NAMESPACE).data == policy["data"]
    apps = client.AppsV1Api(controlplane.api_client())
    assert apps.read_namespaced_deployment("gpu-webhook", NAMESPACE).spec.replicas == 2
    assert client.PolicyV1Api(controlplane.api_client()).read_namespaced_pod_disruption_budget(
        "gpu-webhook", NAMESPACE).spec.min_available == 1


def _template_pod(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    template = deployment["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod", "spec": template["spec"],
            "metadata": {**template["metadata"], "name": name, "namespace": deployment["metadata"]["namespace"]}}


def test_a_pod_from_the_deployment_template_passes_pod_security_restricted(controlplane, base) -> None:
    core = client.CoreV1Api(controlplane.api_client())
    labels = core.read_namespace(NAMESPACE).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = _template_pod(one(base, "Deployment"), "gpu-webhook-psa-check")
    created = core.create_namespaced_pod(NAMESPACE, pod, dry_run="All")
    assert created.spec.containers[0].security_context.read_only_root_filesystem is True
    # The control: the same pod, allowed to escalate privileges, is refused, so the check is real.
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(NAMESPACE, pod, dry_run="All")
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in json.loads(refused.value.body)["message"]


# ----------------------------------------------------------------------------------- overlays
def test_the_cert_manager_overlay_renders_the_ca_chain_and_the_injection(controlplane, base, applier) -> None:
    objs = render(controlplane, MANIFESTS / "overlays" / "cert-manager")
    serving = one(objs, "Certificate", "gpu-webhook-tls")
    ca = one(objs, "Certificate", "gpu-webhook-ca")
    issuers = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Issuer"}
    # The chain: self-signed issuer -> CA certificate -> CA issuer -> serving certificate.
    assert ca["spec"]["isCA"] is True and "selfSigned" in issuers[ca["spec"]["issuerRef"]["name"]]["spec"]
    assert issuers[serving["spec"]["issuerRef"]["name"]]["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    # The serving certificate names the Service and fills the Secret the Deployment mounts.
    service = one(objs, "Service")
    assert f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc" in serving["spec"]["dnsNames"]
    volumes = one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": serving["spec"]["secretName"]}} in volumes
    assert all(o["metadata"].get("namespace") == NAMESPACE for o in [serving, ca, *issuers.values()])
    for config in (o for o in objs if o["kind"] in WEBHOOK_KINDS):
        assert config["metadata"]["annotations"][INJECT_CA_FROM] == f"{NAMESPACE}/gpu-webhook-tls"
        assert all("caBundle" not in w["clientConfig"] for w in config["webhooks"])
    # cert-manager's CRDs are not on the testbed: everything else must be accepted as rendered.
    unknown = [o for o in objs if not applier.knows(o)]
    assert {(o["apiVersion"], o["kind"]) for o in unknown} == {("cert-manager.io/v1", "Issuer"),
                                                              ("cert-manager.io/v1", "Certificate")}
    for obj in objs:
        if obj not in unknown:
            stored = applier.apply(obj, dry_run=True)
            if obj["kind"] in WEBHOOK_KINDS:
                assert stored["metadata"]["annotations"][INJECT_CA_FROM] == f"{NAMESPACE}/gpu-webhook-tls"


def test_the_self_managed_overlay_carries_the_certs_from_certs_generate(controlplane, base, applier, tmp_path) -> None:
    # A copy of manifests/, so the test never writes certificates into the checkout.
    manifests = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, manifests, symlinks=True, ignore=shutil.ignore_patterns("*.crt", "*.key"))
    certs = manifests / "overlays" / "self-managed" / "certs"
    subprocess.run([sys.executable, "-m", "airflow_gpu_webhook.cli.main", "certs", "generate", "--out", str(certs),
                    "--service", "gpu-webhook", "--namespace", NAMESPACE], check=True, capture_output=True)
    objs = render(controlplane, manifests / "overlays" / "self-managed")
    assert {o["kind"] for o in objs} == BASE_KINDS | {"Secret"}

    secret = one(objs, "Secret", "gpu-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    for key, data in secret["data"].items():
        assert base64.b64decode(data) == (certs / key).read_bytes()
    ca_pem = (certs / "ca.crt").read_bytes()
    assert base64.b64encode((certs / "ca.key").read_bytes()).decode() not in yaml.safe_dump_all(objs)
    serving = x509.load_pem_x509_certificate((certs / "tls.crt").read_bytes())
    serving.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert f"gpu-webhook.{NAMESPACE}.svc" in names

    for obj in objs:
        stored = applier.apply(obj, dry_run=True)
        if obj["kind"] in WEBHOOK_KINDS:   # the API server decodes the (line-wrapped) base64 to the CA
            assert [base64.b64decode(w["clientConfig"]["caBundle"]) for w in stored["webhooks"]] == \
                [ca_pem] * len(obj["webhooks"])


def test_the_network_policy_opens_only_the_webhooks_port_of_its_pods(base) -> None:
    policy, deployment = one(base, "NetworkPolicy"), one(base, "Deployment")
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]
    assert [rule["ports"] for rule in policy["spec"]["ingress"]] == [[{"port": port, "protocol": "TCP"}]]


def test_the_client_ca_component_makes_the_webhook_require_the_api_servers_certificate(controlplane, base, applier,
                                                                                         tmp_path) -> None:
    """Opt-in, on top of an overlay: the client CA's Secret is mounted and serve gets --client-ca."""
    manifests = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, manifests, symlinks=True, ignore=shutil.ignore_patterns("*.crt", "*.key"))
    certs = manifests / "overlays" / "self-managed" / "certs"
    subprocess.run([sys.executable, "-m", "airflow_gpu_webhook.cli.main", "certs", "generate", "--client", "--out", str(certs),
                    "--service", "gpu-webhook", "--namespace", NAMESPACE], check=True, capture_output=True)
    shutil.copy(certs / "client-ca.crt", manifests / "components" / "client-ca" / "certs")
    overlay = tmp_path / "manifests" / "overlays" / "mine"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../self-managed"], "components": ["../../components/client-ca"]}))
    objs = render(controlplane, overlay)
    secret = one(objs, "Secret", "gpu-webhook-client-ca")
    assert base64.b64decode(secret["data"]["client-ca.crt"]) == (certs / "client-ca.crt").read_bytes()
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert "--client-ca=/etc/gpu-webhook/client-ca/client-ca.crt" in pod["containers"][0]["args"]
    assert {"name": "client-ca", "mountPath": "/etc/gpu-webhook/client-ca", "readOnly": True} in \
        pod["containers"][0]["volumeMounts"]
    assert {"name": "client-ca", "secret": {"secretName": "gpu-webhook-client-ca"}} in pod["volumes"]
    assert "apiserver-client" not in yaml.safe_dump_all(objs), "the API server's pair stays with the API server"
    for obj in objs:
        applier.apply(obj, dry_run=True)


# ---------------------------------------------------------------------------------------- RBAC
@pytest.fixture(scope="module")
def as_service_account(controlplane: ControlPlane, base, tmp_path_factory) -> Iterator[client.ApiClient]:
    """An API client holding a real ServiceAccount token (TokenRequest API), as in the pod."""
    core = client.CoreV1Api(controlplane.api_client())
    token = core.create_namespaced_service_account_token(
        "gpu-webhook", NAMESPACE, {"spec": {"expirationSeconds": 600}}).status.token
    ca = tmp_path_factory.mktemp("sa") / "ca.crt"
    ca.write_bytes(controlplane.ca.pem)
    config = client.Configuration(host=controlplane.server)
    config.ssl_ca_cert = str(ca)
    config.api_key = {"authorization": f"Bearer {token}"}
    api = client.ApiClient(config)
    yield api
    api.close()


def test_serve_runs_as_the_service_account_and_charges_quota_through_the_ledger(as_service_account,
                                                                                 tmp_path) -> None:
    """The real `serve --track-usage` with the ServiceAccount's token as its only identity: its pod
    watch syncs (/readyz) and an admission records its reservation in the ledger namespace."""
    kubeconfig = tmp_path / "sa.kubeconfig"
    config = as_service_account.configuration
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "testbed", "cluster": {"server": config.host, "certificate-authority": config.ssl_ca_cert}}],
        "users": [{"name": "sa", "user": {"token": config.api_key["authorization"].removeprefix("Bearer ")}}],
        "contexts": [{"name": "sa", "context": {"cluster": "testbed", "user": "sa"}}]}))
    args = ("--track-usage", "--kubeconfig", str(kubeconfig), "--ledger-namespace", LEDGER_NAMESPACE)
    with WebhookServer(tmp_path / "serve", extra_args=args) as server:   # ready = the watch synced
        case = airflow_fixture("kpo_h100_count2")
        pod = {**case["pod"], "metadata": {**case["pod"]["metadata"], "uid": str(uuid.uuid4())}}
        _, validated = server.chain(pod, case["namespace"])
        assert validated is not None and validated["allowed"] is True, validated
    ledger = client.CoreV1Api(as_service_account).read_namespaced_config_map("gpu-webhook-ledger-vision",
                                                                             LEDGER_NAMESPACE)
    assert pod["metadata"]["uid"] in json.loads(ledger.data["reservations"])


def test_the_service_account_is_who_the_token_says(as_service_account) -> None:
    review = client.AuthenticationV1Api(as_service_account).create_self_subject_review({})
    assert review.status.user_info.username == SERVICE_ACCOUNT


def test_the_service_account_lists_the_nodes_for_the_capacity_check(as_service_account) -> None:
    names = {n.metadata.name for n in client.CoreV1Api(as_service_account).list_node().items}
    assert {"h100-0", "a100-mig-mixed-0"} <= names


def test_the_service_account_lists_and_watches_pods_in_every_namespace(controlplane, as_service_account,
                                                                        namespace) -> None:
    core = client.CoreV1Api(as_service_account)
    listed = core.list_pod_for_all_namespaces(label_selector="gpu.platform/managed=true")  # the tracker's list
    name = f"rbac-watch-{uuid.uuid4().hex[:6]}"
    admin = client.CoreV1Api(controlplane.api_client())
    admin.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {COMPLETE_AFTER_LABEL: "0s"}},
        "spec": {"containers": [{"name": "base", "image": "busybox"}], "restartPolicy": "Never"}})
    try:
        events = watch.Watch().stream(core.list_pod_for_all_namespaces, resource_version=listed.metadata.resource_version,
                                      timeout_seconds=10)
        seen = next((e for e in events if e["object"].metadata.name == name), None)
        assert seen is not None and seen["type"] == "ADDED"
        assert core.read_namespaced_pod(name, namespace).metadata.name == name
    finally:
        admin.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def test_the_service_account_keeps_the_quota_ledger_with_the_webhooks_own_code(controlplane, as_service_account) -> None:
    """The ledger's real read-check-write rounds, as the ServiceAccount, in the ledger namespace."""
    from airflow_gpu_webhook.cluster.ledger import Ledger
    from airflow_gpu_webhook.cluster.tracker import UsageBook
    from airflow_gpu_webhook.core.policy import load_policy

    policy = load_policy(POLICY_FILE)
    ledger = Ledger(client.CoreV1Api(as_service_account), LEDGER_NAMESPACE, UsageBook(policy), deadline=10)
    quota = policy.spec.tenants["forecasting"].quota
    charge = {"nvidia.com/gpu": Decimal(1), "gpuEquivalent": Decimal(1)}
    first = ledger.reserve("forecasting", quota, str(uuid.uuid4()), "airflow/a", charge)    # creates the ConfigMap
    second = ledger.reserve("forecasting", quota, str(uuid.uuid4()), "airflow/b", charge)   # updates it
    third = ledger.reserve("forecasting", quota, str(uuid.uuid4()), "airflow/c", charge)
    assert (first.allowed, second.allowed, third.reason) == (True, True, "quota-exceeded"), third.message
    stored = client.CoreV1Api(controlplane.api_client()).read_namespaced_config_map(
        "gpu-webhook-ledger-forecasting", LEDGER_NAMESPACE)
    assert len(json.loads(stored.data["reservations"])) == 2


REFUSED = [  # (what, call on CoreV1Api) - each a dry run, so a wrongly granted one changes nothing
    ("create a pod", lambda core, ns: core.create_namespaced_pod(ns, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "rbac-write"},
        "spec": {"containers": [{"name": "base", "image": "busybox"}]}}, dry_run="All")),
    ("patch the policy ConfigMap", lambda core, ns: core.patch_namespaced_config_map(
        "gpu-webhook-policy", NAMESPACE, {"data": {"policy.yaml": "{}"}}, dry_run="All")),
    ("delete a node", lambda core, ns: core.delete_node("cpu-0", dry_run="All")),
    ("label a node", lambda core, ns: core.patch_node("cpu-0", {"metadata": {"labels": {"x": "y"}}}, dry_run="All")),
    ("read secrets", lambda core, ns: core.list_namespaced_secret(NAMESPACE)),
    ("create a ConfigMap outside the ledger namespace", lambda core, ns: core.create_namespaced_config_map(
        NAMESPACE, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rbac-cm"}}, dry_run="All")),
    ("delete a ledger ConfigMap", lambda core, ns: core.delete_namespaced_config_map(
        "gpu-webhook-ledger-forecasting", LEDGER_NAMESPACE, dry_run="All")),
    ("create an event", lambda core, ns: core.create_namespaced_event(ns, {
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "rbac-event"},
        "involvedObject": {"kind": "Pod", "name": "x", "namespace": ns}, "reason": "Test", "message": "x"},
        dry_run="All")),
]


@pytest.mark.parametrize("what, call", REFUSED, ids=[r[0] for r in REFUSED])
def test_the_service_account_cannot(what, call, as_service_account, namespace) -> None:
    with pytest.raises(ApiException) as refused:
        call(client.CoreV1Api(as_service_account), namespace)
    assert refused.value.status == 403, refused.value.body
    assert SERVICE_ACCOUNT in refused.value.body
