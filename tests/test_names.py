"""One syntax for NVIDIA resource names and versions, shared by the policy and the driver validator."""

from __future__ import annotations

import pytest

from airflow_gpu_webhook.core.names import VERSION, is_gpu_resource, mig_profile
from airflow_gpu_webhook.core.policy import PolicyError
from airflow_gpu_webhook.validator.checks import parse_resource

from conftest import policy_with

RESOURCES = [
    ("whole GPUs", "nvidia.com/gpu", None, True),
    ("a MIG slice", "nvidia.com/mig-1g.10gb", "1g.10gb", True),
    ("a MIG slice with media extensions (+me, spelled .me in a resource name)", "nvidia.com/mig-1g.10gb.me",
     "1g.10gb.me", True),
    ("a compute-instance profile", "nvidia.com/mig-1c.2g.20gb", "1c.2g.20gb", True),
    ("another vendor", "amd.com/gpu", None, False),
    ("an empty profile", "nvidia.com/mig-", None, False),
    ("a profile without memory", "nvidia.com/mig-big", None, False),
    ("a plus sign, which no resource name has", "nvidia.com/mig-1g.10gb+me", None, False),
    ("upper case", "nvidia.com/GPU", None, False),
]


@pytest.mark.parametrize("description, resource, profile, valid", RESOURCES, ids=[r[0] for r in RESOURCES])
def test_the_policy_accepts_exactly_the_resources_the_validator_parses(description, resource, profile, valid):
    assert mig_profile(resource) == profile and is_gpu_resource(resource) is valid
    profiles = {"p": {"resource": resource, "maxCount": 1}}
    if valid:
        assert parse_resource(resource) == profile
        assert policy_with(profiles=profiles, tenants={}).spec.profiles["p"].resource == resource
    else:
        with pytest.raises(ValueError):
            parse_resource(resource)
        with pytest.raises(PolicyError, match="is not an NVIDIA GPU resource"):
            policy_with(profiles=profiles, tenants={})


@pytest.mark.parametrize("text, valid", [
    ("550.54.15", True), ("535.104.05", True), ("12.4", True), ("535", True),
    ("v12", False), ("1..2", False), ("", False), ("12.4 ", False), ("\uff15\uff13\uff15", False),
], ids=lambda v: repr(v))
def test_a_version_is_ascii_digits_and_dots(text, valid):
    assert bool(VERSION.fullmatch(text)) is valid
