"""Every route to a GPU that is not the device plugin's allocation, as changes to an Airflow pod:
one table for the e2e cases (tests/e2e/test_gpu_routes.py, on the real API server) and the
offline golden decisions (tests/test_admission.py, tests/golden/routes/)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ROUTES", "base_container"]


def base_container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["spec"]["containers"][0]


def _spec(**fields: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda pod: pod["spec"].update(fields)


def _security(**fields: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda pod: base_container(pod).setdefault("securityContext", {}).update(fields)


def _host_path(path: str) -> Callable[[dict[str, Any]], Any]:
    def change(pod: dict[str, Any]) -> None:
        pod["spec"].setdefault("volumes", []).append({"name": "host", "hostPath": {"path": path}})
        base_container(pod).setdefault("volumeMounts", []).append({"name": "host", "mountPath": "/host"})
    return change


def _device_request_mount(path: str) -> Callable[[dict[str, Any]], Any]:
    def change(pod: dict[str, Any]) -> None:
        pod["spec"].setdefault("volumes", []).append({"name": "req", "emptyDir": {}})
        base_container(pod).setdefault("volumeMounts", []).append({"name": "req", "mountPath": path})
    return change


def _env(name: str, value: str) -> Callable[[dict[str, Any]], Any]:
    return lambda pod: base_container(pod).setdefault("env", []).append({"name": name, "value": value})


ROUTES = [
    # (description, fixture, change, words in the denial)
    ("a CPU pod tolerating the GPU pool's taint is refused, naming the toleration",
     "kpo_cpu_plain", _spec(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
     "can reach a GPU node through toleration {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}"),
    ("a labelled pod not built by Airflow, holding no GPU, tolerating the GPU taint is refused",
     "kpo_cpu_plain", lambda pod: (pod["metadata"]["labels"].pop("kubernetes_pod_operator"),
                                   pod["metadata"]["labels"].update({"gpu.platform/profile": "a100-80gb"}),
                                   pod["spec"].update(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}])),
     "can reach a GPU node through toleration {key: nvidia.com/gpu, operator: Exists}"),
    ("a CPU pod tolerating every taint is refused",
     "kpo_cpu_plain", _spec(tolerations=[{"operator": "Exists"}]), "through toleration {operator: Exists}"),
    ("a CPU pod on the nvidia runtime class is refused",
     "kpo_cpu_plain", _spec(runtimeClassName="nvidia"), "through runtimeClassName nvidia"),
    ("a CPU pod naming a node (no scheduler, no taints) is refused",
     "kpo_cpu_plain", _spec(nodeName="a100-mig-0"), "through nodeName a100-mig-0"),
    ("a CPU pod mounting an emptyDir at the toolkit's device-request path is refused",
     "kpo_cpu_plain", _device_request_mount("/var/run/nvidia-container-devices/all"),
     "mounts volume 'req' at /var/run/nvidia-container-devices/all, which the NVIDIA container toolkit reads as a GPU"),
    ("the /run spelling of the device-request path is refused",
     "kpo_cpu_plain", _device_request_mount("/run/nvidia-container-devices/0"), "at /run/nvidia-container-devices/0"),
    ("a CPU pod setting NVIDIA_IMEX_CHANNELS is refused",
     "kpo_cpu_plain", _env("NVIDIA_IMEX_CHANNELS", "all"), "container 'base' sets env NVIDIA_IMEX_CHANNELS='all'"),
    ("NVIDIA_VISIBLE_DEVICES with any value but void is refused",
     "kpo_cpu_plain", _env("NVIDIA_VISIBLE_DEVICES", "void,0"), "only NVIDIA_VISIBLE_DEVICES=void is allowed"),
    ("a CPU pod with a DRA resource claim is refused",
     "kpo_cpu_plain", _spec(resourceClaims=[{"name": "gpu", "resourceClaimName": "any-gpu"}]),
     "sets spec.resourceClaims (Dynamic Resource Allocation)"),
    ("a CPU pod asking for a DeviceClass as an extended resource (KEP-5004's implicit name) is refused",
     "kpo_cpu_plain", lambda pod: base_container(pod).setdefault("resources", {}).update(
         limits={"deviceclass.resource.kubernetes.io/gpu.nvidia.com": "1"}),
     "asks for deviceclass.resource.kubernetes.io/gpu.nvidia.com, a DRA DeviceClass as an extended resource"),
    ("a GPU pod adding SYS_ADMIN is refused",
     "kpo_h100_count2", _security(capabilities={"add": ["SYS_ADMIN"]}), "container 'base' adds capability SYS_ADMIN"),
    ("a GPU pod with hostPID is refused", "kpo_h100_count2", _spec(hostPID=True), "sets spec.hostPID: true"),
    ("a GPU pod with hostIPC is refused", "kpo_h100_count2", _spec(hostIPC=True), "sets spec.hostIPC: true"),
    ("a GPU pod mounting hostPath / is refused", "kpo_h100_count2", _host_path("/"), "mounts hostPath '/'"),
    ("a GPU pod mounting /dev/char/195:0 (a symlink to /dev/nvidia0) is refused",
     "kpo_h100_count2", _host_path("/dev/char/195:0"), "mounts hostPath '/dev/char/195:0'"),
    ("a GPU pod mounting the MPS pipe directory is refused",
     "kpo_h100_count2", _host_path("/run/nvidia/mps"), "mounts hostPath '/run/nvidia/mps'"),
    ("a GPU pod mounting the driver root's /dev is refused",
     "kpo_h100_count2", _host_path("/run/nvidia/driver/dev"), "mounts hostPath '/run/nvidia/driver/dev'"),
    ("a GPU pod mounting the device plugins' sockets is refused",
     "kpo_h100_count2", _host_path("/var/lib/kubelet/device-plugins"), "mounts hostPath '/var/lib/kubelet/device-plugins'"),
]


