"""DRA profiles in the core (webhook/core/dra.py): the claims, the template, the charge, and who may
write the template. The mutation and validation of DRA pods are tested with theirs
(tests/test_mutate.py, tests/test_validate.py); here are the pieces and the policy fields."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from airflow_gpu_webhook.core import dra
from airflow_gpu_webhook.core.dra import (
    claim_entries,
    claim_list_ops,
    claim_template,
    decide_template,
    desired_templates,
    dra_request,
    is_platform_entry,
    template_matches,
    template_profiles,
)
from airflow_gpu_webhook.core.policy import PolicyError, parse_policy

from conftest import DRA_POLICY_FILE, policy_with

MIG = "a100-dra-mig-1g.10gb"
MIG_TEMPLATE = "gpu-platform-" + MIG


def test_the_example_policy_loads_and_names_a_template_for_each_claim_profile_only(dra_policy):
    assert template_profiles(dra_policy) == {"gpu-platform-a100-dra": "a100-dra", MIG_TEMPLATE: MIG}
    assert not dra_policy.spec.profiles["a100-mig-1g.10gb-er"].claims   # extendedResource form: no claim
    assert dra_policy.spec.profiles[MIG].claims


def _policy_error(profile: dict[str, Any], name: str = "p") -> str:
    data = yaml.safe_load(Path(DRA_POLICY_FILE).read_text())
    data["spec"]["profiles"] = {name: profile}
    with pytest.raises(PolicyError) as err:
        parse_policy(data, "dra.yaml")
    return str(err.value)


BAD_PROFILES = [
    # (description, profile, profile name, words the error must hold)
    ("a selector in the extendedResource form",
     {"resource": "nvidia.com/gpu", "maxCount": 1,
      "dra": {"deviceClassName": "gpu.nvidia.com", "form": "extendedResource", "selector": "true"}}, "p",
     ["dra.yaml: spec.profiles.p.dra", "DeviceClass's own selectors"]),
    ("a device class name that is no object name",
     {"resource": "nvidia.com/gpu", "maxCount": 1, "dra": {"deviceClassName": "GPU_class"}}, "p",
     ["spec.profiles.p.dra.deviceClassName"]),
    ("an unknown form", {"resource": "nvidia.com/gpu", "maxCount": 1,
                         "dra": {"deviceClassName": "gpu.nvidia.com", "form": "magic"}}, "p",
     ["spec.profiles.p.dra.form"]),
    ("a claim profile whose name makes no template name",
     {"resource": "nvidia.com/gpu", "maxCount": 1, "dra": {"deviceClassName": "gpu.nvidia.com"}}, "A100_DRA",
     ["spec.profiles", "'gpu-platform-A100_DRA'"]),
    ("an empty selector", {"resource": "nvidia.com/gpu", "maxCount": 1,
                           "dra": {"deviceClassName": "gpu.nvidia.com", "selector": ""}}, "p",
     ["spec.profiles.p.dra.selector"]),
]


@pytest.mark.parametrize(("description", "profile", "name", "words"), BAD_PROFILES, ids=[c[0] for c in BAD_PROFILES])
def test_a_bad_dra_profile_is_refused_at_load_naming_the_field(description, profile, name, words):
    message = _policy_error(profile, name)
    for word in words:
        assert word in message


def test_a_device_plugin_profile_may_have_a_name_no_template_could_have():
    data = yaml.safe_load(Path(DRA_POLICY_FILE).read_text())
    data["spec"]["profiles"]["A100_plain"] = {"resource": "nvidia.com/gpu", "maxCount": 1}
    assert "A100_plain" in parse_policy(data, "x").spec.profiles


ENTRIES = [
    # (entry, is it the platform's)
    ({"name": "gpu-platform-0", "resourceClaimTemplateName": MIG_TEMPLATE}, True),
    ({"name": "gpu-platform-0", "resourceClaimName": "my-own-claim"}, True),          # the platform's name
    ({"name": "mine", "resourceClaimTemplateName": MIG_TEMPLATE}, True),              # the platform's template
    ({"name": "mine", "resourceClaimTemplateName": "gpu-platform-not-a-profile"}, True),
    ({"name": "mine", "resourceClaimTemplateName": "my-template"}, False),
    ({"name": "gpu", "resourceClaimName": "gpu-platform-0"}, False),                  # a claim, not a template
    ("gpu-platform-0", False),
    ({}, False),
]


@pytest.mark.parametrize(("entry", "ours"), ENTRIES)
def test_which_claim_entries_are_the_platforms(entry, ours, dra_policy):
    assert is_platform_entry(entry, dra_policy) is ours


def _entry(i: int, template: str = MIG_TEMPLATE) -> dict[str, str]:
    return {"name": f"gpu-platform-{i}", "resourceClaimTemplateName": template}


USER = {"name": "scratch", "resourceClaimTemplateName": "scratch-space"}
LISTS = [
    # (description, current list, desired, list after the operations)
    ("no list: added whole", None, [_entry(0)], [_entry(0)]),
    ("no list and nothing wanted: nothing", None, [], None),
    ("already right: nothing", [_entry(0), _entry(1)], [_entry(0), _entry(1)], [_entry(0), _entry(1)]),
    ("one too many: rewritten", [_entry(0), _entry(1)], [_entry(0)], [_entry(0)]),
    ("wrong template: rewritten", [_entry(0, "gpu-platform-a100-dra")], [_entry(0)], [_entry(0)]),
    ("a user entry is kept, ours go after it", [_entry(0), USER], [_entry(0), _entry(1)],
     [USER, _entry(0), _entry(1)]),
    ("ours removed when the profile has none", [USER, _entry(0), _entry(3)], [], [USER]),
]


@pytest.mark.parametrize(("description", "current", "desired", "after"), LISTS, ids=[c[0] for c in LISTS])
def test_claim_list_operations_make_the_platforms_entries_exact(description, current, desired, after, dra_policy):
    doc = {"spec": {} if current is None else {"resourceClaims": copy.deepcopy(current)}}
    ops = claim_list_ops(("spec", "resourceClaims"), doc["spec"].get("resourceClaims"), desired,
                         lambda e: is_platform_entry(e, dra_policy))
    patched = jsonpatch.apply_patch(doc, ops)
    assert patched["spec"].get("resourceClaims") == after
    again = claim_list_ops(("spec", "resourceClaims"), patched["spec"].get("resourceClaims"), desired,
                           lambda e: is_platform_entry(e, dra_policy))
    assert again == []


REQUESTS = [
    # (description, resourceClaims, request)
    ("two MIG claims", claim_entries(MIG, 2), {"nvidia.com/mig-1g.10gb": Decimal(2)}),
    ("a whole GPU claim", claim_entries("a100-dra", 1), {"nvidia.com/gpu": Decimal(1)}),
    ("a profile template under another name still counts", [{"name": "x", "resourceClaimTemplateName": MIG_TEMPLATE}],
     {"nvidia.com/mig-1g.10gb": Decimal(1)}),
    ("a user template is not the quota's", [USER], {}),
    ("a direct claim is not the quota's", [{"name": "gpu-platform-0", "resourceClaimName": "c"}], {}),
    ("garbage", ["x", 3, None], {}),
]


@pytest.mark.parametrize(("description", "claims", "request_"), REQUESTS, ids=[c[0] for c in REQUESTS])
def test_what_a_pods_claims_charge(description, claims, request_, dra_policy):
    assert dra_request({"spec": {"resourceClaims": claims}}, dra_policy) == request_


def _template(change=lambda spec: None, name: str = MIG_TEMPLATE, profile: str = MIG, policy=None) -> dict[str, Any]:
    template = claim_template(profile, policy.spec.profiles[profile], "airflow") if policy else {}
    template["metadata"]["name"] = name
    change(template["spec"]["spec"]["devices"])
    return template


def _exactly(devices: dict[str, Any]) -> dict[str, Any]:
    return devices["requests"][0]["exactly"]


TEMPLATES = [
    # (description, change to spec.spec.devices, name, allowed, reason, words)
    ("the policy's own template", lambda d: None, MIG_TEMPLATE, True, "platform-template-ok", ""),
    ("with the API server's defaults written out", lambda d: _exactly(d).update(adminAccess=False, tolerations=[]),
     MIG_TEMPLATE, True, "platform-template-ok", ""),
    ("another name: not the platform's", lambda d: _exactly(d).update(count=8), "my-gpus", True,
     "not-platform-template", ""),
    ("count 8: each claim would hold 8 devices, charged as 1", lambda d: _exactly(d).update(count=8), MIG_TEMPLATE,
     False, "platform-template", "charged as one device"),
    ("all devices", lambda d: _exactly(d).update(allocationMode="All"), MIG_TEMPLATE, False, "platform-template", ""),
    ("a second request", lambda d: d["requests"].append({"name": "more", "exactly": {
        "deviceClassName": "gpu.nvidia.com"}}), MIG_TEMPLATE, False, "platform-template", ""),
    ("another selector", lambda d: _exactly(d).update(selectors=[{"cel": {"expression": "true"}}]), MIG_TEMPLATE,
     False, "platform-template", ""),
    ("another device class", lambda d: _exactly(d).update(deviceClassName="gpu.nvidia.com"), MIG_TEMPLATE, False,
     "platform-template", ""),
    ("admin access", lambda d: _exactly(d).update(adminAccess=True), MIG_TEMPLATE, False, "platform-template", ""),
    ("first-available alternatives", lambda d: d["requests"][0].update(
        firstAvailable=[{"name": "big", "deviceClassName": "gpu.nvidia.com", "count": 8}]), MIG_TEMPLATE, False,
     "platform-template", ""),
    ("constraints", lambda d: d.update(constraints=[{"matchAttribute": "gpu.nvidia.com/parentUUID"}]),
     MIG_TEMPLATE, False, "platform-template", ""),
    ("a platform name no profile has", lambda d: None, "gpu-platform-h100-dra", False, "platform-template",
     "no DRA profile's template"),
]


@pytest.mark.parametrize(("description", "change", "name", "allowed", "reason", "words"), TEMPLATES,
                         ids=[c[0] for c in TEMPLATES])
def test_only_the_policys_spec_may_be_written_to_a_platform_template(description, change, name, allowed, reason, words,
                                                                     dra_policy):
    decision = decide_template(_template(change, name, policy=dra_policy), dra_policy)
    assert (decision.allowed, decision.reason) == (allowed, reason)
    assert words in decision.message


def test_deleting_a_platform_template_is_allowed(dra_policy):
    template = _template(lambda d: _exactly(d).update(count=8), policy=dra_policy)
    assert decide_template(template, dra_policy, deleting=True).allowed


def test_the_template_asks_one_device_of_the_profiles_class_and_selector(dra_policy):
    template = claim_template(MIG, dra_policy.spec.profiles[MIG], "ml-jobs")
    assert template["metadata"]["namespace"] == "ml-jobs"
    assert template["spec"]["spec"]["devices"]["requests"] == [{"name": "gpu", "exactly": {
        "deviceClassName": "mig.nvidia.com", "allocationMode": "ExactCount", "count": 1,
        "selectors": [{"cel": {"expression": 'device.attributes["gpu.nvidia.com"].profile == "1g.10gb"'}}]}}]

# ---------------------------------------------------------------- the templates the platform keeps
def _profile_template(policy, profile="a100-dra", namespace="ml-jobs"):
    return claim_template(profile, policy.spec.profiles[profile], namespace)


def _with(change):
    def changed(template):
        change(template)
        return template
    return changed


def _exactly_of(template):
    return template["spec"]["spec"]["devices"]["requests"][0]["exactly"]


MATCHES = [
    ("the policy's own template matches", lambda t: t, True),
    ("the API server's defaults written out still match",
     _with(lambda t: _exactly_of(t).update(adminAccess=False, tolerations=[])), True),
    ("labels and annotations do not matter to the spec",
     _with(lambda t: t["metadata"].update(labels={}, annotations={"a": "b"})), True),
    ("another selector does not match", _with(lambda t: _exactly_of(t)["selectors"][0]["cel"].update(expression="true")),
     False),
    ("two devices per claim do not match", _with(lambda t: _exactly_of(t).update(count=2)), False),
    ("another device class does not match", _with(lambda t: _exactly_of(t).update(deviceClassName="other")), False),
    ("extra constraints do not match",
     _with(lambda t: t["spec"]["spec"]["devices"].update(constraints=[{"matchAttribute": "x"}])), False),
    ("a template of a profile the policy does not have does not match",
     _with(lambda t: t["metadata"].update(name="gpu-platform-gone")), False),
    ("a name that is no string does not match", _with(lambda t: t["metadata"].update(name=["x"])), False),
]


@pytest.mark.parametrize("description, change, matches", MATCHES, ids=[m[0] for m in MATCHES])
def test_a_template_matches_when_it_holds_the_profiles_spec(dra_policy, description, change, matches):
    template = change(copy.deepcopy(_profile_template(dra_policy)))
    assert template_matches(template, dra_policy) is matches
    if isinstance(template["metadata"]["name"], str) and template["metadata"]["name"].startswith("gpu-platform-"):
        assert decide_template(template, dra_policy).allowed is matches, "the same judgement as a write"


def test_the_platform_keeps_every_claim_profiles_template_in_every_namespace_a_tenant_names(dra_policy):
    assert dra.template_namespaces(dra_policy) == ("airflow", "ml-jobs")
    desired = desired_templates(dra_policy)
    assert sorted(desired) == [("airflow", "gpu-platform-a100-dra"), ("airflow", "gpu-platform-a100-dra-mig-1g.10gb"),
                               ("ml-jobs", "gpu-platform-a100-dra"), ("ml-jobs", "gpu-platform-a100-dra-mig-1g.10gb")]
    assert desired["airflow", "gpu-platform-a100-dra"] == _profile_template(dra_policy, namespace="airflow")
    assert all(template_matches(t, dra_policy) for t in desired.values())


def test_tenants_matched_without_a_namespace_name_none_and_a_policy_without_claims_wants_none(dra_policy):
    tenants = {"anyone": {"match": [{"dagIdPrefix": "x_"}, {"group": "team"}]}}
    assert dra.template_namespaces(policy_with(tenants=tenants)) == ()
    assert desired_templates(policy_with()) == {}
