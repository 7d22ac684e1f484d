"""The admission handlers: guard clauses, enforcement modes, errors, and the offline chain."""

from __future__ import annotations

import re

import jsonpatch
import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_gpu_webhook.core.mutate import decide_ephemeral_mutation, decide_mutation
from airflow_gpu_webhook.core.policy import load_policy, parse_policy
from airflow_gpu_webhook.core.validate import decide_ephemeral_validation, decide_validation
from airflow_gpu_webhook.server import admission
from airflow_gpu_webhook.server.admission import mutate, review_chain, validate
from airflow_gpu_webhook.server.review import parse_review

from conftest import (
    DRA_POLICY_FILE,
    admission_review,
    airflow_fixture,
    airflow_fixture_ids,
    claim_template_review,
    dra_template,
    policy_with,
)
from routes import ROUTES


def request_for(case_id: str, **changes):
    case = airflow_fixture(case_id)
    return parse_review(orjson.dumps(admission_review(case["pod"], case["namespace"], **changes)))


# Every Airflow-built fixture, through mutation then validation, as the API server chains them.
CHAIN = {
    "executor_cpu": (True, "unlabelled"),
    "executor_gpu_override": (True, "mutated"),
    "executor_mapped_gpu": (True, "mutated"),
    "kpo_count_not_int": (False, "invalid-count"),
    "kpo_count_over_max": (False, "count-over-max"),
    "kpo_count_zero": (False, "invalid-count"),
    "kpo_cpu_env_visible_devices": (False, "forbidden-env"),
    "kpo_cpu_plain": (True, "unlabelled"),
    "kpo_env_ld_preload": (False, "forbidden-env"),
    "kpo_env_visible_devices": (False, "forbidden-env"),
    "kpo_existing_scheduling": (True, "mutated"),
    "kpo_h100_count2": (True, "mutated"),
    "kpo_hostpath_dev_nvidia": (False, "host-path"),
    "kpo_long_dag_id": (True, "mutated"),
    "kpo_manual_gpu_mismatch": (True, "mutated"),
    "kpo_mapped": (True, "mutated"),
    "kpo_mig_1g_xcom": (True, "mutated"),
    "kpo_nightly_a100": (True, "mutated"),
    "kpo_no_tenant": (False, "no-tenant"),
    "kpo_nodeselector_conflict": (False, "node-selector-conflict"),
    "kpo_podlabel_tenant": (True, "mutated"),
    "kpo_privileged": (False, "privileged-gpu-pod"),
    "kpo_quota_breaker": (False, "quota-exceeded"),
    "kpo_unknown_profile": (False, "unknown-profile"),
    "kpo_unlabelled_gpu": (False, "unlabelled-gpu-pod"),
}


def test_every_fixture_has_an_expected_outcome():
    assert sorted(CHAIN) == airflow_fixture_ids()


@pytest.mark.parametrize("case_id", sorted(CHAIN))
def test_the_chain_decides_each_airflow_pod(case_id, policy):
    decision = review_chain(request_for(case_id), policy, {})
    assert (decision.allowed, decision.reason) == CHAIN[case_id], decision.message


def test_the_chain_returns_the_mutation_patch_and_validates_the_mutated_pod(policy):
    request = request_for("kpo_h100_count2")
    decision = review_chain(request, policy, {"vision": {}})
    final = jsonpatch.apply_patch(request.object, list(decision.patch))
    assert final["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"


@pytest.mark.parametrize("operation", ["DELETE", "CONNECT"])
def test_operations_other_than_create_and_update_pass_untouched(operation, policy):
    request = request_for("kpo_unknown_profile")._replace(operation=operation)
    assert mutate(request, policy).reason == "not-create"
    assert validate(request, policy, {}).allowed


def _relabel_request(labels: dict, subresource: str = ""):
    old = airflow_fixture("kpo_h100_count2")["pod"]
    old["metadata"]["labels"].update({"gpu.platform/managed": "true", "gpu.platform/tenant": "vision"})
    new = {**old, "metadata": {**old["metadata"], "labels": {**old["metadata"]["labels"], **labels}}}
    review = admission_review(new, "ml-jobs", operation="UPDATE", old=old)
    review["request"]["subResource"] = subresource or None
    return parse_review(orjson.dumps(review))


UPDATES = [
    ("validation refuses an update that moves a stamp", "validate", {"gpu.platform/tenant": "x"}, "", False,
     "accounting-fixed"),
    ("validation allows an update that keeps the stamps", "validate", {"already_checked": "True"}, "", True, "update"),
    ("mutation leaves every update untouched", "mutate", {"gpu.platform/tenant": "x"}, "", True, "not-create"),
    ("validation leaves a status update alone", "validate", {"gpu.platform/tenant": "x"}, "status", True,
     "not-create"),
]


@pytest.mark.parametrize("description, step, labels, subresource, allowed, reason", UPDATES,
                         ids=[u[0] for u in UPDATES])
def test_an_update_of_a_pod_is_judged_by_the_validating_step(description, step, labels, subresource, allowed,
                                                             reason, policy):
    request = _relabel_request(labels, subresource)
    decision = mutate(request, policy) if step == "mutate" else validate(request, policy, {})
    assert (decision.allowed, decision.reason) == (allowed, reason)


def test_warn_mode_turns_an_update_denial_into_a_warning():
    decision = validate(_relabel_request({"gpu.platform/tenant": "x"}), policy_with(enforcement="warn"), {})
    assert decision.allowed and "gpu.platform/tenant" in decision.warnings[0]


def test_an_ephemeral_containers_update_is_judged_and_voided(policy):
    pod = review_chain(request_for("kpo_h100_count2"), policy, {})
    request = request_for("kpo_h100_count2")
    final = jsonpatch.apply_patch(request.object, list(pod.patch))
    final["spec"]["ephemeralContainers"] = [{"name": "debug", "image": "busybox"}]
    update = request._replace(operation="UPDATE", subresource="ephemeralcontainers", object=final)
    voided = mutate(update, policy)
    assert voided.patch == ({"op": "add", "path": "/spec/ephemeralContainers/0/env",
                             "value": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}]},)
    assert validate(update, policy, {}).reason == "not-voided"
    assert validate(update._replace(object=jsonpatch.apply_patch(final, list(voided.patch))), policy, {}).allowed
    final["spec"]["ephemeralContainers"][0]["securityContext"] = {"privileged": True}
    assert validate(update, policy, {}).reason == "privileged-gpu-pod"


@pytest.mark.parametrize("description, case_id, change, words", ROUTES, ids=[r[0] for r in ROUTES])
def test_each_route_to_a_gpu_matches_its_golden_denial(description, case_id, change, words, policy, golden):
    pod = airflow_fixture(case_id)["pod"]
    change(pod)
    decision = review_chain(parse_review(orjson.dumps(admission_review(pod, "ml-jobs"))), policy, {})
    assert not decision.allowed and words in decision.message
    golden(f"routes/{re.sub(r'[^a-z0-9]+', '_', description.lower()).strip('_')}",
           {"reason": decision.reason, "code": decision.code, "message": decision.message})


def test_a_subresource_passes_untouched(policy):
    request = request_for("kpo_unknown_profile")._replace(subresource="status")
    assert (mutate(request, policy).allowed, mutate(request, policy).reason) == (True, "subresource")


def test_a_decision_that_raises_is_a_500_denial_never_an_allow(policy, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(admission, "decide_mutation", broken)
    decision = mutate(request_for("kpo_h100_count2"), policy)
    assert (decision.allowed, decision.code, decision.reason) == (False, 500, "internal-error")


def test_warn_mode_turns_a_denial_into_warnings_and_still_applies_the_profile():
    warn = policy_with(enforcement="warn")
    decision = mutate(request_for("kpo_privileged"), warn)
    assert decision.allowed and decision.warned and decision.reason == "privileged-gpu-pod"
    assert decision.label == "warned:privileged-gpu-pod"
    assert decision.warnings[0].startswith("[gpu-webhook warn-only] container 'base' sets securityContext.privileged: true")
    assert any(op["path"] == "/spec/initContainers" for op in decision.patch)


def test_warn_mode_allows_an_unknown_profile_untouched_with_a_warning():
    decision = review_chain(request_for("kpo_unknown_profile"), policy_with(enforcement="warn"), {})
    assert decision.allowed and decision.patch == ()
    assert any("is not a known GPU profile" in w for w in decision.warnings)


def test_warn_mode_reports_quota_overruns_as_warnings():
    decision = review_chain(request_for("kpo_quota_breaker"), policy_with(enforcement="warn"), {})
    assert decision.allowed and decision.patch
    assert any("exceeded quota: tenant vision, nvidia.com/gpu" in w for w in decision.warnings)


def test_dry_run_gets_the_same_decision(policy):
    for case_id in ("kpo_h100_count2", "kpo_quota_breaker"):
        assert review_chain(request_for(case_id, dry_run=True), policy, {}) == \
            review_chain(request_for(case_id), policy, {})


# --- hostile pods: whatever shape a field has, the webhook answers and never crashes ---

_garbage = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6) | st.just("nvidia.com/gpu"),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
_PATHS = [
    ("metadata",), ("metadata", "labels"), ("metadata", "labels", "gpu.platform/count"),
    ("metadata", "labels", "gpu.platform/profile"), ("metadata", "annotations"), ("spec",),
    ("spec", "containers"), ("spec", "containers", 0), ("spec", "containers", 0, "resources"),
    ("spec", "containers", 0, "resources", "limits"), ("spec", "containers", 0, "env"),
    ("spec", "containers", 0, "securityContext"), ("spec", "initContainers"), ("spec", "tolerations"),
    ("spec", "nodeSelector"), ("spec", "volumes"), ("spec", "containers", 0, "name"),
    ("spec", "containers", 0, "volumeMounts"), ("spec", "containers", 0, "resources", "requests"),
    ("spec", "containers", 0, "securityContext", "capabilities"), ("spec", "tolerations", 0),
    ("spec", "runtimeClassName"), ("spec", "nodeName"), ("spec", "resourceClaims"), ("spec", "ephemeralContainers"),
    ("spec", "hostPID"),
]


def _put(doc, path, value):
    node = doc
    for part in path[:-1]:
        node = node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else (
            node.setdefault(part, {}) if isinstance(node, dict) else None)
        if node is None:
            return
    if isinstance(node, dict) or (isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node)):
        node[path[-1]] = value


@settings(max_examples=1500, deadline=None)
@given(case_id=st.sampled_from(["kpo_mig_1g_xcom", "executor_gpu_override", "kpo_cpu_plain"]),
       edits=st.lists(st.tuples(st.sampled_from(_PATHS), _garbage), min_size=1, max_size=3))
def test_a_hostile_pod_gets_a_decision_never_an_exception(policy, case_id, edits):
    case = airflow_fixture(case_id)
    pod = case["pod"]
    for path, value in edits:
        _put(pod, path, value)
    mutated = decide_mutation(pod, case["namespace"], policy)
    if mutated.allowed and mutated.patch:
        pod = jsonpatch.apply_patch(pod, list(mutated.patch))
    checked = decide_validation(pod, case["namespace"], policy, {})
    assert checked.reason != "internal-error" and mutated.reason != "internal-error"
    assert decide_ephemeral_validation(pod, policy).reason != "internal-error"
    assert decide_ephemeral_mutation(pod, policy).reason != "internal-error"


_quantities = st.one_of(st.text(max_size=12), st.from_regex(r"[0-9]{1,12}", fullmatch=True),
                        st.integers(min_value=-2**63, max_value=2**63 - 1),
                        st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e3", "2.0", "2000m", "-1", "01", "1k"]))


@settings(max_examples=300, deadline=None)
@given(quantity=_quantities, key=st.sampled_from(["nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "nvidia.com/x"]),
       section=st.sampled_from(["limits", "requests"]), labelled=st.booleans())
def test_any_gpu_quantity_gets_a_clear_answer_and_only_canonical_counts_pass(policy, quantity, key, section, labelled):
    pod = airflow_fixture("kpo_h100_count2" if labelled else "kpo_unlabelled_gpu")["pod"]
    pod["spec"]["containers"][0].setdefault("resources", {}).setdefault(section, {})[key] = quantity
    decision = review_chain(parse_review(orjson.dumps(admission_review(pod, "ml-jobs"))),
                            policy_with(unlabelledGpuPods="allow"), {})
    canonical = (type(quantity) is int and 0 <= quantity < 10**9) or (
        isinstance(quantity, str) and quantity.isascii() and quantity.isdigit() and len(quantity) <= 9
        and (quantity == "0" or not quantity.startswith("0")))
    assert decision.code != 500, decision.message
    if labelled:   # the profile replaces what is set by hand on base, with a warning
        assert decision.allowed or decision.reason == "quota-exceeded", decision.message
    else:
        assert (decision.reason == "invalid-quantity") == (not canonical), (quantity, decision.message)


def test_while_usage_is_not_synced_quota_bound_pods_get_a_retryable_denial(policy):
    request = request_for("kpo_h100_count2")
    final = jsonpatch.apply_patch(request.object, list(mutate(request, policy).patch))
    decision = validate(request._replace(object=final), policy, None)
    assert (decision.allowed, decision.code, decision.reason) == (False, 503, "usage-not-synced")
    assert "retry in a few seconds" in decision.message
    assert validate(request_for("kpo_cpu_plain"), policy, None).allowed, "pass-through pods are unaffected"
    assert validate(request._replace(object=final), policy_with(enforcement="warn"), None).allowed


def test_while_the_node_list_is_not_synced_a_gpu_pod_is_admitted_with_a_warning(policy):
    request = request_for("kpo_h100_count2")
    final = jsonpatch.apply_patch(request.object, list(mutate(request, policy).patch))
    decision = validate(request._replace(object=final), policy, {}, None, nodes_synced=False)
    assert decision.allowed and any("did not check that a node can hold" in w for w in decision.warnings)


# --- ResourceClaimTemplates: only the policy's spec under a platform template's name ---

def _template(name: str = "a100-dra", **exactly_changes) -> dict:
    return dra_template(name, **exactly_changes)


def _renamed(template: dict, name: str) -> dict:
    return {**template, "metadata": {**template["metadata"], "name": name}}


def _relabelled(template: dict) -> dict:
    return {**template, "metadata": {**template["metadata"], "labels": {"team": "vision"}}}


ROGUE = _template(count=8)
TEMPLATES = [
    ("the policy's own template is admitted", "validate", "CREATE", _template(), None, True, "platform-template-ok"),
    ("the policy's template without the defaults the API server fills in is admitted", "validate", "CREATE",
     _template(allocationMode=None, count=None), None, True, "platform-template-ok"),
    ("a platform template asking for 8 devices per claim is refused", "validate", "CREATE", ROGUE, None, False,
     "platform-template"),
    ("a platform template of another device class is refused", "validate", "CREATE",
     _template(deviceClassName="any.gpu.example"), None, False, "platform-template"),
    ("a platform template without the profile's selector is refused", "validate", "CREATE",
     _template(selectors=None), None, False, "platform-template"),
    ("a platform template with admin access is refused", "validate", "CREATE", _template(adminAccess=True), None,
     False, "platform-template"),
    ("a gpu-platform- name that is no claim profile's template is refused", "validate", "CREATE",
     _renamed(_template(), "gpu-platform-a100-mig-1g.10gb-er"), None, False, "platform-template"),
    ("a template of another name passes untouched", "validate", "CREATE", _renamed(ROGUE, "my-own-gpus"), None, True,
     "not-platform-template"),
    ("an update of the labels only passes, whatever the stored spec", "validate", "UPDATE", _relabelled(ROGUE), ROGUE,
     True, "update"),
    ("an update that changes the spec is judged and refused", "validate", "UPDATE", ROGUE, _template(), False,
     "platform-template"),
    ("a delete passes untouched", "validate", "DELETE", None, _template(), True, "not-create"),
    ("mutation leaves a template untouched", "mutate", "CREATE", ROGUE, None, True, "not-pod"),
]


@pytest.mark.parametrize("description, step, operation, template, old, allowed, reason", TEMPLATES,
                         ids=[t[0] for t in TEMPLATES])
def test_a_resource_claim_template_write_is_judged_by_the_validating_step(description, step, operation, template, old,
                                                                          allowed, reason, dra_policy):
    review = claim_template_review(template, "ml-jobs", operation=operation, old=old)
    request = parse_review(orjson.dumps(review))
    decision = mutate(request, dra_policy) if step == "mutate" else validate(request, dra_policy, {})
    assert (decision.allowed, decision.reason, decision.patch) == (allowed, reason, ()), decision.message
    if not allowed:
        assert decision.code == 403 and "gpu-platform-" in decision.message


def test_a_refused_template_names_the_policys_spec_and_why():
    request = parse_review(orjson.dumps(claim_template_review(ROGUE, "ml-jobs")))
    message = validate(request, load_policy(DRA_POLICY_FILE), {}).message
    assert "'gpu-platform-a100-dra' is the GPU platform's template of profile a100-dra" in message
    assert "each claim from it is charged as one device" in message


def test_the_offline_chain_judges_a_template_as_the_validating_step_does(dra_policy):
    request = parse_review(orjson.dumps(claim_template_review(ROGUE, "ml-jobs")))
    assert review_chain(request, dra_policy, {}) == validate(request, dra_policy, {})
    assert review_chain(request._replace(object=_template()), dra_policy, {}).allowed


def test_warn_mode_turns_a_template_denial_into_a_warning():
    data = yaml.safe_load(DRA_POLICY_FILE.read_text())
    data["spec"]["enforcement"] = "warn"
    warn = parse_policy(data)
    decision = validate(parse_review(orjson.dumps(claim_template_review(ROGUE, "ml-jobs"))), warn, {})
    assert decision.allowed and decision.warned and decision.reason == "platform-template"
    assert decision.warnings[0].startswith("[gpu-webhook warn-only] ResourceClaimTemplate 'gpu-platform-a100-dra'")


def test_a_template_decision_that_raises_is_a_500_denial(dra_policy, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(admission, "decide_template", broken)
    decision = validate(parse_review(orjson.dumps(claim_template_review(_template(), "ml-jobs"))), dra_policy, {})
    assert (decision.allowed, decision.code, decision.reason) == (False, 500, "internal-error")
