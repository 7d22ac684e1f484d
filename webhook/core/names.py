"""NVIDIA resource names and version numbers: one syntax for the policy and the driver validator.

Stdlib only: the init container's program (webhook/validator/) imports this module and nothing
else of core, so what the policy accepts as a profile's resource or minimum version is exactly
what the validator it configures can parse.

    >>> mig_profile("nvidia.com/mig-1g.10gb"), mig_profile("nvidia.com/gpu")
    ('1g.10gb', None)
"""

from __future__ import annotations

import re

__all__ = ["GPU_RESOURCE", "GPU_RESOURCE_PREFIX", "MIG_PREFIX", "VERSION", "is_gpu_resource", "mig_profile"]

GPU_RESOURCE_PREFIX = "nvidia.com/"
#: Whole GPUs (or MIG devices under the device plugin's "single" strategy).
GPU_RESOURCE = GPU_RESOURCE_PREFIX + "gpu"
#: MIG devices under the "mixed" strategy: ``nvidia.com/mig-<profile>``.
MIG_PREFIX = GPU_RESOURCE_PREFIX + "mig-"
#: A MIG profile as the device plugin names its resource: ``1g.10gb``, ``3g.40gb``, compute
#: instances such as ``1c.2g.20gb``, and attributes after the memory (``1g.10gb.me``, the
#: ``+me`` profile: a resource name has no ``+``).
_MIG_PROFILE = re.compile(r"[0-9]+[cg](\.[0-9]+[cg])*\.[0-9]+gb(\.[a-z0-9]+)*", re.ASCII)
#: A version as drivers and CUDA report them: ASCII digits and dots, "550.54.15", "12.4".
VERSION = re.compile(r"[0-9]+(\.[0-9]+)*", re.ASCII)


def mig_profile(resource: str) -> str | None:
    """The MIG profile of ``nvidia.com/mig-<profile>``; None for ``nvidia.com/gpu`` or anything
    that is not an NVIDIA GPU resource (tell them apart with :func:`is_gpu_resource`)."""
    if resource.startswith(MIG_PREFIX) and _MIG_PROFILE.fullmatch(profile := resource[len(MIG_PREFIX):]):
        return profile
    return None


def is_gpu_resource(resource: str) -> bool:
    """``nvidia.com/gpu`` or ``nvidia.com/mig-<profile>``."""
    return resource == GPU_RESOURCE or mig_profile(resource) is not None
