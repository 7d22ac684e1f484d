"""The policy loader: the reference contract loads unchanged; every error names file and field."""

from __future__ import annotations

import copy
import json
from decimal import Decimal

import jsonschema
import pytest
import yaml

from airflow_gpu_webhook.core.policy import PolicyError, load_policy, parse_policy, policy_schema

from conftest import POLICY_FILE

REFERENCE = yaml.safe_load(POLICY_FILE.read_text())


def test_the_reference_policy_loads_unchanged_with_its_meaning():
    policy = load_policy(POLICY_FILE)
    assert list(policy.spec.profiles) == ["a100-80gb", "h100-80gb", "a100-mig-1g.10gb", "a100-mig-2g.20gb",
                                          "a100-mig-3g.40gb"]
    assert list(policy.spec.tenants) == ["vision", "forecasting"], "tenant order decides matching"
    assert policy.spec.profiles["a100-mig-1g.10gb"].gpuEquivalent == Decimal("0.125")
    assert policy.spec.tenants["vision"].quota == {"nvidia.com/gpu": 4, "nvidia.com/mig-1g.10gb": 14,
                                                   "gpuEquivalent": 6}
    assert policy.spec.enforcement == "enforce" and policy.spec.unlabelledGpuPods == "deny"


def test_the_manifests_copy_is_the_shared_reference():
    shared = POLICY_FILE.parents[2] / "shared" / "reference" / "policy.yaml"
    if not shared.exists():
        pytest.skip(f"{shared} is not beside this checkout")
    assert yaml.safe_load(shared.read_text()) == REFERENCE


def _broken(path: str, value):
    data = copy.deepcopy(REFERENCE)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return data


ERRORS = [
    ("a zero maxCount", "spec.profiles.a100-80gb.maxCount", 0, "spec.profiles.a100-80gb.maxCount: Input should be greater than 0"),
    ("a resource that is not an NVIDIA GPU", "spec.profiles.h100-80gb.resource", "amd.com/gpu", "spec.profiles.h100-80gb.resource"),
    ("a misspelt field", "spec.unlabeledGpuPods", "deny", "spec.unlabeledGpuPods: Extra inputs are not permitted"),
    ("an unknown unlabelledGpuPods value", "spec.unlabelledGpuPods", "warn", "spec.unlabelledGpuPods"),
    ("a driver version that is not a version", "spec.driverValidation.minDriverVersion", "latest", "minDriverVersion"),
    ("a missing driverValidation", "spec.driverValidation", KeyError, "spec.driverValidation: Field required"),
    ("a quota line for CPU", "spec.tenants.vision.quota.cpu", 4, "quota line 'cpu' is neither gpuEquivalent"),
    ("a negative quota", "spec.tenants.forecasting.quota.gpuEquivalent", -1, "spec.tenants.forecasting.quota.gpuEquivalent"),
    ("an empty match entry", "spec.tenants.forecasting.match", [{}], "needs at least one of namespace, podLabels"),
    ("a serviceAccount without its namespace", "spec.tenants.forecasting.match", [{"serviceAccount": "worker"}],
     "spec.tenants.forecasting.match.0.serviceAccount: String should match pattern"),
    ("an empty group", "spec.tenants.forecasting.match", [{"group": ""}], "match.0.group"),
    ("an Exists toleration with a value", "spec.profiles.a100-80gb.tolerations",
     [{"key": "k", "operator": "Exists", "value": "v"}], "operator Exists must not have a value"),
    ("a wrong kind", "kind", "Policy", "kind: Input should be 'GPUPolicy'"),
    ("no profiles", "spec.profiles", {}, "spec.profiles"),
]


@pytest.mark.parametrize("description, path, value, words", ERRORS, ids=[e[0] for e in ERRORS])
def test_an_invalid_policy_names_the_file_and_the_field(description, path, value, words):
    with pytest.raises(PolicyError) as caught:
        parse_policy(_broken(path, value), "team-policy.yaml")
    assert str(caught.value).startswith("team-policy.yaml: ")
    assert words in str(caught.value)


@pytest.mark.parametrize("text, words", [
    ("spec: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_a_file_that_is_not_a_policy_document_is_refused(tmp_path, text, words):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=words) as caught:
        load_policy(path)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_a_policy_error(tmp_path):
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path / "nope.yaml")


def test_new_optional_fields_keep_old_files_valid():
    data = copy.deepcopy(REFERENCE)
    data["spec"]["enforcement"] = "warn"
    assert parse_policy(data).spec.enforcement == "warn"


def test_a_policy_knows_whether_a_tenant_is_matched_on_the_requester():
    data = copy.deepcopy(REFERENCE)
    assert not parse_policy(data).reads_requester
    data["spec"]["tenants"]["forecasting"]["match"].append({"serviceAccount": "airflow/forecasting-worker"})
    assert parse_policy(data).reads_requester


def test_the_published_schema_accepts_the_reference_and_rejects_a_typo():
    schema = policy_schema()
    jsonschema.validate(REFERENCE, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_broken("spec.unlabeledGpuPods", "deny"), schema)


def test_the_published_schema_file_is_current():
    published = POLICY_FILE.parents[1] / "docs" / "policy.schema.json"
    assert json.loads(published.read_text()) == policy_schema(), \
        "regenerate it: gpu-webhook policy schema > docs/policy.schema.json"


def test_a_per_policy_view_is_computed_once_per_policy_object(policy):
    from airflow_gpu_webhook.core.policy import per_policy

    from conftest import policy_with

    calls = []

    @per_policy
    def view(p):
        calls.append(p)
        return object()

    first = view(policy)
    assert view(policy) is first and calls == [policy]
    reloaded = policy_with()
    assert view(reloaded) is not first and calls == [policy, reloaded]

