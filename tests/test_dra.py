"""DRA claim templates, pure: which template holds the policy's spec, and which templates the
platform keeps in which namespaces."""

from __future__ import annotations

import copy

import pytest

from airflow_gpu_webhook.core import dra
from airflow_gpu_webhook.core.dra import claim_template, decide_template, desired_templates, template_matches

from conftest import policy_with


def _template(policy, profile="a100-dra", namespace="ml-jobs"):
    return claim_template(profile, policy.spec.profiles[profile], namespace)


def _with(change):
    def changed(template):
        change(template)
        return template
    return changed


def _exactly(template):
    return template["spec"]["spec"]["devices"]["requests"][0]["exactly"]


MATCHES = [
    ("the policy's own template matches", lambda t: t, True),
    ("the API server's defaults written out still match",
     _with(lambda t: _exactly(t).update(adminAccess=False, tolerations=[])), True),
    ("labels and annotations do not matter to the spec",
     _with(lambda t: t["metadata"].update(labels={}, annotations={"a": "b"})), True),
    ("another selector does not match", _with(lambda t: _exactly(t)["selectors"][0]["cel"].update(expression="true")),
     False),
    ("two devices per claim do not match", _with(lambda t: _exactly(t).update(count=2)), False),
    ("another device class does not match", _with(lambda t: _exactly(t).update(deviceClassName="other")), False),
    ("extra constraints do not match",
     _with(lambda t: t["spec"]["spec"]["devices"].update(constraints=[{"matchAttribute": "x"}])), False),
    ("a template of a profile the policy does not have does not match",
     _with(lambda t: t["metadata"].update(name="gpu-platform-gone")), False),
    ("a name that is no string does not match", _with(lambda t: t["metadata"].update(name=["x"])), False),
]


@pytest.mark.parametrize("description, change, matches", MATCHES, ids=[m[0] for m in MATCHES])
def test_a_template_matches_when_it_holds_the_profiles_spec(dra_policy, description, change, matches):
    template = change(copy.deepcopy(_template(dra_policy)))
    assert template_matches(template, dra_policy) is matches
    if isinstance(template["metadata"]["name"], str) and template["metadata"]["name"].startswith("gpu-platform-"):
        assert decide_template(template, dra_policy).allowed is matches, "the same judgement as a write"


def test_the_platform_keeps_every_claim_profiles_template_in_every_namespace_a_tenant_names(dra_policy):
    assert dra.template_namespaces(dra_policy) == ("airflow", "ml-jobs")
    desired = desired_templates(dra_policy)
    assert sorted(desired) == [("airflow", "gpu-platform-a100-dra"), ("airflow", "gpu-platform-a100-dra-mig-1g.10gb"),
                               ("ml-jobs", "gpu-platform-a100-dra"), ("ml-jobs", "gpu-platform-a100-dra-mig-1g.10gb")]
    assert desired["airflow", "gpu-platform-a100-dra"] == _template(dra_policy, namespace="airflow")
    assert all(template_matches(t, dra_policy) for t in desired.values())


def test_tenants_matched_without_a_namespace_name_none_and_a_policy_without_claims_wants_none(dra_policy):
    tenants = {"anyone": {"match": [{"dagIdPrefix": "x_"}, {"group": "team"}]}}
    assert dra.template_namespaces(policy_with(tenants=tenants)) == ()
    assert desired_templates(policy_with()) == {}
