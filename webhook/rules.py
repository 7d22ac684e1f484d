"""Security rules that hold for every pod the webhook judges, pure.

Each rule closes a known way around the NVIDIA device plugin's allocation:
- ``NVIDIA_VISIBLE_DEVICES`` / ``NVIDIA_DRIVER_CAPABILITIES`` / ``NVIDIA_MIG_CONFIG_DEVICES``
  in the pod spec make the container toolkit expose devices the plugin never allocated
  (even to a pod that asked for no GPU), so they are denied on every pod;
- ``LD_PRELOAD`` in a GPU container can subvert the toolkit's and CUDA's libraries, so it is
  denied on GPU pods;
- a privileged container in a GPU pod sees every GPU of the node;
- a hostPath under ``/dev/nvidia*`` (or ``/dev`` itself) hands device nodes to the pod.
Values set through ``envFrom`` cannot be seen at admission; that limit is documented.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from .decision import Violation
from .pod import all_containers, as_dict, as_list, spec

__all__ = ["ALWAYS_FORBIDDEN_ENV", "GPU_POD_FORBIDDEN_ENV", "security_violations"]

#: Why each variable is refused: the denial says it, so the author knows it is not arbitrary.
_ENV_RISK = {
    "NVIDIA_VISIBLE_DEVICES": "makes the container toolkit expose GPUs the device plugin never allocated",
    "NVIDIA_DRIVER_CAPABILITIES": "changes which driver libraries and devices the container toolkit mounts",
    "NVIDIA_MIG_CONFIG_DEVICES": "gives the container the right to reconfigure MIG on the whole GPU",
    "LD_PRELOAD": "can replace the CUDA and container-toolkit libraries the GPU isolation relies on",
}
ALWAYS_FORBIDDEN_ENV = ("NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "NVIDIA_MIG_CONFIG_DEVICES")
GPU_POD_FORBIDDEN_ENV = ("LD_PRELOAD",)


def _env_violations(pod: Mapping[str, Any], gpu_pod: bool) -> list[Violation]:
    forbidden = ALWAYS_FORBIDDEN_ENV + (GPU_POD_FORBIDDEN_ENV if gpu_pod else ())
    found = []
    for _, _, container in all_containers(pod):
        for env in as_list(container.get("env")):
            if isinstance(env, dict) and env.get("name") in forbidden:
                found.append(Violation(
                    "forbidden-env",
                    f"container {container.get('name')!r} sets {env['name']}, which {_ENV_RISK[env['name']]}; "
                    "remove it (GPUs are assigned by the GPU profile label)"))
    return found


def _privileged_violations(pod: Mapping[str, Any]) -> list[Violation]:
    return [
        Violation("privileged-gpu-pod",
                  f"container {container.get('name')!r} is privileged in a GPU pod and would see every GPU "
                  f"of the node; remove securityContext.privileged")
        for _, _, container in all_containers(pod)
        if as_dict(container.get("securityContext")).get("privileged") is True
    ]


def _exposes_gpu_devices(path: str) -> bool:
    normal = posixpath.normpath("/" + path.lstrip("/"))
    return normal == "/dev" or normal.startswith("/dev/nvidia")


def _host_path_violations(pod: Mapping[str, Any]) -> list[Violation]:
    found = []
    for volume in as_list(spec(pod).get("volumes")):
        path = as_dict(as_dict(volume).get("hostPath")).get("path")
        if isinstance(path, str) and _exposes_gpu_devices(path):
            found.append(Violation(
                "host-device-path",
                f"volume {volume.get('name')!r} mounts hostPath {path}: GPU device nodes come only from "
                f"the device plugin; remove the volume"))
    return found


def security_violations(pod: Mapping[str, Any], gpu_pod: bool) -> list[Violation]:
    """Every security rule the pod breaks; ``gpu_pod`` is true when it gets or asks for a GPU."""
    found = _env_violations(pod, gpu_pod) + _host_path_violations(pod)
    if gpu_pod:
        found += _privileged_violations(pod)
    return found
