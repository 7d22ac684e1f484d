"""What the API server sends: the generated webhook configurations, their CEL evaluated in Python.

The property that matters: whenever a decision would deny a pod (or patch it), the conditions
send it. celpy evaluates the very expressions the shipped file holds; the real API server's
acceptance of them (CEL cost limits) is proven in tests/e2e/test_gpu_routes.py.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_gpu_webhook.cli.conditions import mutating_expression, render, template_conditions, validating_expression
from airflow_gpu_webhook.core.mutate import decide_ephemeral_mutation, decide_mutation
from airflow_gpu_webhook.core.policy import load_policy
from airflow_gpu_webhook.core.rules import DEVICE_REQUEST_ROOTS, GPU_POD_FORBIDDEN_ENV, TOOLKIT_ENV
from airflow_gpu_webhook.core.validate import decide_ephemeral_validation, decide_validation
from airflow_gpu_webhook.server.admission import validate_claim_template
from airflow_gpu_webhook.server.review import CLAIM_TEMPLATE, AdmissionRequest

from conftest import DRA_POLICY_FILE, POLICY_FILE, ROOT, airflow_fixture, airflow_fixture_ids, dra_template, policy_with

SHIPPED = ROOT / "manifests" / "base" / "webhook-configurations.yaml"
_ENV = celpy.Environment()


def _program(expression: str):
    return _ENV.program(_ENV.compile(expression))


def sends(expression: str, pod: dict[str, Any], operation: str = "CREATE", subresource: str = "",
          old: dict[str, Any] | None = None) -> bool:
    """The CEL expression evaluated as the API server would, on this request (which leaves an
    empty ``subResource`` out: reading it then is an error, and the pod would be refused)."""
    request = {"operation": operation, **({"subResource": subresource} if subresource else {})}
    activation = {"object": celpy.json_to_cel(pod), "oldObject": celpy.json_to_cel(old),
                  "request": celpy.json_to_cel(request)}
    result = _program(expression).evaluate(activation)
    assert isinstance(result, celpy.celtypes.BoolType), result   # an evaluation error is never a "no"
    return bool(result)


def test_the_shipped_configurations_are_generated_from_the_shipped_policy():
    assert SHIPPED.read_text() == render(load_policy(POLICY_FILE)), \
        "regenerate it: gpu-webhook policy conditions manifests/policy.yaml > manifests/base/webhook-configurations.yaml"


@pytest.mark.parametrize("case_id", airflow_fixture_ids())
def test_every_fixture_a_decision_denies_or_patches_is_sent(case_id, policy):
    case = airflow_fixture(case_id)
    pod, namespace = case["pod"], case["namespace"]
    mutation = decide_mutation(pod, namespace, policy)
    if mutation.patch:
        assert sends(mutating_expression(policy), pod)
    if not decide_validation(pod, namespace, policy, {}).allowed:
        assert sends(validating_expression(policy), pod)


def test_a_plain_cpu_pod_is_sent_to_neither_webhook(policy):
    pod = airflow_fixture("kpo_cpu_plain")["pod"]
    assert not sends(validating_expression(policy), pod) and not sends(mutating_expression(policy), pod)


UPDATES = [
    ("an update of a stamped pod is sent", {"gpu.platform/managed": "true"}, {"gpu.platform/managed": "true"}, True),
    ("an update that adds a stamp is sent", {}, {"gpu.platform/tenant": "vision"}, True),
    ("an update that removes a stamp is sent", {"gpu.platform/tenant": "vision"}, {}, True),
    ("an update of a CPU pod's labels is not sent", {"team": "a"}, {"team": "b"}, False),
]


@pytest.mark.parametrize("description, old, new, sent", UPDATES, ids=[u[0] for u in UPDATES])
def test_updates_of_pods(description, old, new, sent, policy):
    pod = airflow_fixture("kpo_cpu_plain")["pod"]
    before, after = copy.deepcopy(pod), copy.deepcopy(pod)
    before["metadata"]["labels"], after["metadata"]["labels"] = old, new
    assert sends(validating_expression(policy), after, "UPDATE", old=before) is sent
    assert not sends(mutating_expression(policy), after, "UPDATE", old=before)


def test_an_update_that_adds_a_toleration_is_validated(policy):
    """Red team: tolerations are the one reach a pod update can add (tests/test_update.py)."""
    pod = airflow_fixture("kpo_cpu_plain")["pod"]
    for before in ([], [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}]):
        old, new = copy.deepcopy(pod), copy.deepcopy(pod)
        old["spec"]["tolerations"] = before
        new["spec"]["tolerations"] = [*before, {"key": "nvidia.com/gpu", "operator": "Exists"}]
        assert sends(validating_expression(policy), new, "UPDATE", old=old)
        assert not sends(validating_expression(policy), old, "UPDATE", old=old)
    bare = copy.deepcopy(pod)
    bare["spec"].pop("tolerations", None)
    assert sends(validating_expression(policy), new, "UPDATE", old=bare)


def test_every_ephemeral_containers_update_is_validated(policy):
    pod = airflow_fixture("kpo_cpu_plain")["pod"]
    pod["spec"]["ephemeralContainers"] = [{"name": "debug", "image": "busybox"}]
    assert sends(validating_expression(policy), pod, "UPDATE", "ephemeralcontainers", old=pod)


def test_a_policy_with_other_label_keys_and_a_keyless_toleration_is_followed():
    policy = policy_with(labels={"profile": "example.com/gpu-profile", "count": "example.com/gpu-count"},
                         gpuRuntimeClasses=["nvidia-cdi"])
    pod = airflow_fixture("kpo_cpu_plain")["pod"]
    pod["metadata"]["labels"]["example.com/gpu-profile"] = "a100-80gb"
    assert sends(mutating_expression(policy), pod) and sends(validating_expression(policy), pod)
    cpu = airflow_fixture("kpo_cpu_plain")["pod"]
    cpu["spec"]["runtimeClassName"] = "nvidia-cdi"
    assert sends(validating_expression(policy), cpu)
    cpu["spec"]["runtimeClassName"] = "nvidia"
    assert not sends(validating_expression(policy), cpu)
    data = policy.model_dump(mode="json", exclude_none=True)
    data["spec"]["profiles"]["a100-80gb"]["tolerations"] = [{"operator": "Exists"}]
    keyless = type(policy).model_validate(data)
    cpu["spec"]["tolerations"] = [{"key": "anything", "operator": "Exists"}]
    assert sends(validating_expression(keyless), cpu)


# --- the property: hostile pods made of every route's ingredients ---

_names = st.sampled_from([*TOOLKIT_ENV, *GPU_POD_FORBIDDEN_ENV, "CUDA_VERSION", "PATH", "NVIDIA_visible_devices"])
_env = st.fixed_dictionaries({"name": _names}, optional={
    "value": st.sampled_from(["void", "all", "0", "void,0", ""]), "valueFrom": st.just({"fieldRef": {"fieldPath": "x"}})})
_paths = st.sampled_from([*DEVICE_REQUEST_ROOTS, DEVICE_REQUEST_ROOTS[0] + "/all", "//var/run/./nvidia-container-devices",
                          "/run/nvidia-container-devices/../nvidia-container-devices/0", "/var/run/nvidia-container-devicesX",
                          "/var/run", "/data", "/dev", "/"])
_quantity = st.one_of(st.sampled_from(["1", "2", "0", "NaN", "Infinity", "1e3", "2.0", "-1", "01", ""]), st.integers(-2, 3))
_resources = st.dictionaries(st.sampled_from(["limits", "requests"]), st.dictionaries(
    st.sampled_from(["nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "nvidia.com/x", "cpu",
                     "deviceclass.resource.kubernetes.io/gpu.nvidia.com"]), _quantity, max_size=2),
    max_size=2) | st.just({"claims": [{"name": "gpu"}]})
_security = st.fixed_dictionaries({}, optional={
    "privileged": st.booleans(),
    "capabilities": st.fixed_dictionaries({"add": st.lists(st.sampled_from(["SYS_ADMIN", "CAP_SYS_ADMIN", "ALL", "all",
                                                                            "NET_ADMIN"]), max_size=2)})})
_container = st.fixed_dictionaries({"name": st.sampled_from(["base", "sidecar", "gpu-driver-validation"]),
                                    "image": st.just("busybox")}, optional={
    "env": st.lists(_env, max_size=2),
    "volumeMounts": st.lists(st.fixed_dictionaries({"name": st.just("v"), "mountPath": _paths}), max_size=1),
    "resources": _resources, "securityContext": _security,
    "envFrom": st.lists(st.fixed_dictionaries({"configMapRef": st.just({"name": "task-env"})}, optional={
        "prefix": st.sampled_from(["", "NVIDIA_", "N", "LD_", "APP_", "nvidia_"])}), max_size=1)})
_toleration = st.fixed_dictionaries({}, optional={
    "key": st.sampled_from(["nvidia.com/gpu", "dedicated", ""]), "operator": st.sampled_from(["Exists", "Equal"]),
    "value": st.sampled_from(["present", ""]), "effect": st.sampled_from(["NoSchedule", "NoExecute", ""])})
_spec = st.fixed_dictionaries({"containers": st.lists(_container, min_size=1, max_size=2)}, optional={
    "initContainers": st.lists(_container, max_size=2),
    "tolerations": st.lists(_toleration, max_size=2),
    "runtimeClassName": st.sampled_from(["nvidia", "runc"]),
    "nodeName": st.just("gpu-0"),
    "hostPID": st.booleans(), "hostIPC": st.booleans(),
    "volumes": st.lists(st.fixed_dictionaries({"name": st.just("h"), "hostPath": st.fixed_dictionaries(
        {"path": st.sampled_from(["/", "/dev/char/195:0", "/run/nvidia/mps", "/data", "/var/lib/kubelet/device-plugins"])})}),
        max_size=1),
    "resourceClaims": st.sampled_from([[{"name": "gpu", "resourceClaimName": "a"}],
                                       [{"name": "gpu", "resourceClaimTemplateName": "gpu-platform-a100-dra"}],
                                       [{"name": "gpu-platform-0", "resourceClaimName": "a"}]]),
})
_labels = st.dictionaries(st.sampled_from(["gpu.platform/profile", "gpu.platform/count", "gpu.platform/managed",
                                           "gpu.platform/tenant", "kubernetes_pod_operator", "team"]),
                          st.sampled_from(["a100-80gb", "True", "true", "1", "vision"]), max_size=4)
_pods = st.builds(lambda labels, spec: {"metadata": {"name": "p", "labels": labels}, "spec": spec}, _labels, _spec)
_DRA_PROFILES = yaml.safe_load(DRA_POLICY_FILE.read_text())["spec"]["profiles"]
_policies = st.sampled_from([{}, {"gpuReachingPods": "void"}, {"resourceClaims": "allow"},
                             {"hostPathAllowlist": ["/data"], "unlabelledGpuPods": "allow"},
                             {"profiles": _DRA_PROFILES, "resourceClaims": "allow"}, {"profiles": _DRA_PROFILES}])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pod=_pods, changes=_policies, namespace=st.sampled_from(["ml-jobs", "analytics"]))
def test_whenever_a_decision_would_deny_or_patch_a_pod_the_conditions_send_it(pod, changes, namespace):
    policy = _policy(tuple(sorted((k, str(v)) for k, v in changes.items())), changes)
    if not decide_validation(pod, namespace, policy, {}).allowed:
        assert sends(validating_expression(policy), pod)
    if decide_mutation(pod, namespace, policy).patch:
        assert sends(mutating_expression(policy), pod)
    ephemeral = {**pod, "spec": {**pod["spec"], "ephemeralContainers": pod["spec"]["containers"]}}
    if decide_ephemeral_mutation(ephemeral, policy).patch:
        assert sends(mutating_expression(policy), ephemeral, "UPDATE", "ephemeralcontainers", old=pod)
    if not decide_ephemeral_validation(ephemeral, policy).allowed:
        assert sends(validating_expression(policy), ephemeral, "UPDATE", "ephemeralcontainers", old=pod)


DRA_ROUTES = [
    # (description, policy changes, change to a plain CPU pod)
    ("a DeviceClass's implicit extended resource, user DRA denied", {},
     lambda pod: pod["spec"]["containers"][0].setdefault("resources", {}).update(
         limits={"deviceclass.resource.kubernetes.io/gpu.nvidia.com": "1"})),
    ("a claim from a profile's template, user DRA allowed", {"profiles": _DRA_PROFILES, "resourceClaims": "allow"},
     lambda pod: pod["spec"].update(resourceClaims=[{"name": "g", "resourceClaimTemplateName": "gpu-platform-a100-dra"}])),
    ("a claim under the platform's name, user DRA allowed", {"profiles": _DRA_PROFILES, "resourceClaims": "allow"},
     lambda pod: pod["spec"].update(resourceClaims=[{"name": "gpu-platform-0", "resourceClaimName": "mine"}])),
]


@pytest.mark.parametrize(("description", "changes", "change"), DRA_ROUTES, ids=[c[0] for c in DRA_ROUTES])
def test_a_dra_route_the_validating_step_refuses_is_sent(description, changes, change):
    policy = _policy(tuple(sorted((k, str(v)) for k, v in changes.items())), changes)
    pod = airflow_fixture("kpo_cpu_plain")["pod"]
    change(pod)
    assert not decide_validation(pod, "airflow", policy, {}).allowed
    assert sends(validating_expression(policy), pod)


_POLICIES: dict[tuple, Any] = {}


def _policy(key: tuple, changes: dict[str, Any]):
    if key not in _POLICIES:
        _POLICIES[key] = policy_with(**changes)
    return _POLICIES[key]


# --- the platform's DRA templates: every write a decision would refuse is sent ---

def template_sent(policy, template: dict[str, Any], operation: str = "CREATE", old: dict[str, Any] | None = None) -> bool:
    """All the template webhook's matchConditions hold (the API server sends only then)."""
    return all(sends(c["expression"], template, operation, old=old) for c in template_conditions(policy))


def _stored(name: str, **exactly_changes: Any) -> dict[str, Any]:
    template = dra_template(name, **exactly_changes)
    template["metadata"]["uid"] = "8d6f"   # as the API server sends it
    return template


def _named(template: dict[str, Any], name: str) -> dict[str, Any]:
    return {**template, "metadata": {**template["metadata"], "name": name}}


ROGUE = _stored("a100-dra", count=8)
TEMPLATE_WRITES = [
    ("the policy's own template is not sent", "CREATE", _stored("a100-dra"), None, False),
    ("the other claim profile's own template is not sent", "CREATE", _stored("a100-dra-mig-1g.10gb"), None, False),
    ("one profile's spec under the other profile's name is sent", "CREATE",
     _named(_stored("a100-dra"), "gpu-platform-a100-dra-mig-1g.10gb"), None, True),
    ("8 devices per claim under a platform name are sent", "CREATE", ROGUE, None, True),
    ("another device class is sent", "CREATE", _stored("a100-dra", deviceClassName="gpu.example.com"), None, True),
    ("no selector is sent", "CREATE", _stored("a100-dra", selectors=None), None, True),
    ("admitting adminAccess: false is left to the webhook", "CREATE", _stored("a100-dra", adminAccess=False), None,
     True),
    ("a spec without the API server's defaults is left to the webhook", "CREATE",
     _stored("a100-dra", allocationMode=None, count=None), None, True),
    ("a gpu-platform- name of no claim profile is sent", "CREATE", _named(ROGUE, "gpu-platform-a100-mig-1g.10gb-er"),
     None, True),
    ("a template of another name is not sent", "CREATE", _named(ROGUE, "team-gpus"), None, False),
    ("a metadata-only update of any platform template is not sent", "UPDATE",
     {**ROGUE, "metadata": {**ROGUE["metadata"], "labels": {"a": "b"}}}, ROGUE, False),
    ("an update that changes the spec is sent", "UPDATE", ROGUE, _stored("a100-dra"), True),
]


@pytest.mark.parametrize("description, operation, template, old, sent", TEMPLATE_WRITES,
                         ids=[t[0] for t in TEMPLATE_WRITES])
def test_template_writes_under_the_dra_policy(description, operation, template, old, sent, dra_policy):
    assert template_sent(dra_policy, template, operation, old) is sent


def test_without_claim_profiles_every_platform_named_template_is_sent(policy):
    assert template_sent(policy, _stored("a100-dra"))
    assert not template_sent(policy, _named(_stored("a100-dra"), "team-gpus"))
    assert [c["name"] for c in template_conditions(policy)] == ["platform-template-name", "writes-the-spec"]


_exactly = st.fixed_dictionaries({}, optional={
    "deviceClassName": st.sampled_from(["gpu.nvidia.com", "mig.nvidia.com", "mig-1g.10gb.gpu.platform"]),
    "selectors": st.sampled_from([
        [{"cel": {"expression": 'device.attributes["gpu.nvidia.com"].productName == "NVIDIA A100-SXM4-80GB"'}}],
        [{"cel": {"expression": 'device.attributes["gpu.nvidia.com"].profile == "1g.10gb"'}}], [{"cel": {}}], []]),
    "allocationMode": st.sampled_from(["ExactCount", "All"]), "count": st.sampled_from([1, 2, 0]),
    "adminAccess": st.booleans(), "tolerations": st.just([{"operator": "Exists"}])})
_request = st.fixed_dictionaries({"name": st.sampled_from(["gpu", "x"])}, optional={
    "exactly": _exactly, "firstAvailable": st.just([{"name": "a", "deviceClassName": "gpu.nvidia.com"}])})
_templates = st.builds(
    lambda name, requests, extra: {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
                                   "metadata": {"name": name, "namespace": "ml-jobs"},
                                   "spec": {"spec": {"devices": {"requests": requests, **extra}}}},
    st.sampled_from(["gpu-platform-a100-dra", "gpu-platform-a100-dra-mig-1g.10gb", "gpu-platform-a100-mig-1g.10gb-er",
                     "gpu-platform-", "gpu-platforms", "team-gpus"]),
    st.lists(_request, min_size=1, max_size=2),
    st.fixed_dictionaries({}, optional={"constraints": st.just([{"requests": ["gpu"]}]),
                                        "config": st.just([{"opaque": {"driver": "x", "parameters": {}}}])}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(template=_templates, old=st.none() | _templates, operation=st.sampled_from(["CREATE", "UPDATE"]))
def test_whenever_the_validating_step_would_refuse_a_template_write_the_conditions_send_it(template, old, operation,
                                                                                          dra_policy):
    old = (old or template) if operation == "UPDATE" else None
    if old is not None:
        old = {**old, "metadata": template["metadata"]}
    request = AdmissionRequest("u", operation, "ml-jobs", "", False, template, old, kind=CLAIM_TEMPLATE)
    if not validate_claim_template(request, dra_policy).allowed:
        assert template_sent(dra_policy, template, operation, old)
