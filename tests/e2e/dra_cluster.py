"""Dynamic Resource Allocation (DRA) for the testbed: simulated GPU nodes whose GPUs are published
by hand as NVIDIA's DRA driver for GPUs (github.com/NVIDIA/k8s-dra-driver-gpu, v25.12.0) publishes
them, plus the DeviceClasses its Helm chart installs.

Pure data builders (no cluster needed) and one helper, :func:`install`, which the session fixture
calls after the device-plugin pools exist. What it creates:

- the DRA node pool of ``testbed/dra-nodes.yaml``: nodes ``dra-a100-0`` and ``dra-a100-1`` (label
  ``gpu.platform/backend: dra``, GFD labels, the ``nvidia.com/gpu`` taint, NO ``nvidia.com/*`` in
  capacity/allocatable);
- one ResourceSlice per DRA node (driver ``gpu.nvidia.com``, pool = node name) with the devices
  ``gpu-0``, ``gpu-1`` (whole A100-SXM4-80GB), ``gpu-2-mig-1g10gb-19-0``,
  ``gpu-2-mig-1g10gb-19-1`` (MIG 1g.10gb) and ``gpu-2-mig-3g40gb-9-4`` (MIG 3g.40gb);
- DeviceClasses ``gpu.nvidia.com`` and ``mig.nvidia.com`` exactly as the chart defines them
  (deployments/helm/.../templates/deviceclass-{gpu,mig}.yaml; on a resource.k8s.io/v1 cluster the
  chart gives ``gpu.nvidia.com`` ``extendedResourceName: nvidia.com/gpu``), and
  ``mig-1g-10gb.gpu.nvidia.com`` with ``extendedResourceName: nvidia.com/mig-1g.10gb`` (KEP-5004,
  shaped like the driver's demo/specs/extended-resources/mig-1g-12gb.yaml).

Device names and attributes follow the driver's kubelet plugin (cmd/gpu-kubelet-plugin,
deviceinfo.go / mig.go, static-MIG path; the DynamicMIG feature gate is off by default):
a whole GPU is ``gpu-<minor>``, a MIG device ``gpu-<parent minor>-mig-<profile without dots>-
<GI profile id>-<placement start>``. Unqualified attribute names belong to the driver's domain, so
a CEL selector reads them as ``device.attributes['gpu.nvidia.com'].profile``.

No kubelet runs: nothing calls the driver's NodePrepareResources, so a pod whose claim is
allocated is simply run by kwok. See docs/dra-testbed.md.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .controlplane import TESTBED, ControlPlane, node_objects

DRA_NODES_FILE = TESTBED / "dra-nodes.yaml"
#: The driver name of NVIDIA's DRA driver for GPUs (also the attribute/capacity domain).
DRIVER = "gpu.nvidia.com"
GPU_CLASS = "gpu.nvidia.com"
MIG_CLASS = "mig.nvidia.com"
#: KEP-5004 class: pods asking for the extended resource MIG_1G_10GB_RESOURCE are served by it on
#: nodes that do not advertise that resource.
MIG_1G_10GB_CLASS = "mig-1g-10gb.gpu.nvidia.com"
MIG_1G_10GB_RESOURCE = "nvidia.com/mig-1g.10gb"
#: What the chart's gpu.nvidia.com class maps whole GPUs to (on resource.k8s.io/v1 clusters).
GPU_RESOURCE = "nvidia.com/gpu"
BACKEND_LABEL = "gpu.platform/backend"
#: nodeSelector for the DRA pool.
DRA_SELECTOR = {BACKEND_LABEL: "dra"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
#: Annotation the scheduler puts on the ResourceClaim it creates for DRA-backed extended resources.
EXTENDED_RESOURCE_CLAIM_ANNOTATION = "resource.kubernetes.io/extended-resource-claim"
#: Finalizer the scheduler puts on every claim it allocates (removed on deallocation).
ALLOCATION_FINALIZER = "resource.kubernetes.io/delete-protection"

# NVML's view of the GPU model and the node's driver, as the kubelet plugin reads it (nvlib.go):
# productName = nvmlDeviceGetName, brand/architecture = go-nvlib's *AsString ("Nvidia" for
# NVML_BRAND_NVIDIA, "Ampere"), versions as semver (driver 550.90.07 -> 550.90.7, CUDA 12.4 ->
# 12.4.0, compute capability 8.0 -> 8.0.0), memory = total framebuffer in bytes.
DRIVER_VERSION = "550.90.7"
CUDA_DRIVER_VERSION = "12.4.0"
GPU_MODELS: dict[str, dict[str, Any]] = {
    "NVIDIA-A100-SXM4-80GB": {
        "productName": "NVIDIA A100-SXM4-80GB",
        "brand": "Nvidia",
        "architecture": "Ampere",
        "cudaComputeCapability": "8.0.0",
        "memory": "80Gi",
        # PCI bus ids of the 8 SXM slots of a p4de.24xlarge, by minor.
        "pciBusIDs": ["0000:10:1c.0", "0000:10:1d.0", "0000:20:1c.0", "0000:20:1d.0",
                      "0000:90:1c.0", "0000:90:1d.0", "0000:a0:1c.0", "0000:a0:1d.0"],
        # GPU instance profiles (nvidia-smi mig -lgip): NVML profile id, placement size (memory
        # slices), SMs, copy/decode/encode/JPEG/OFA engines, memory in MiB (the same values as the
        # GFD labels mig-<profile>.memory of testbed/nodes.yaml).
        "mig": {
            "1g.10gb": {"id": 19, "size": 1, "multiprocessors": 14, "copyEngines": 1, "decoders": 0,
                        "encoders": 0, "jpegEngines": 0, "ofaEngines": 0, "memoryMiB": 9984},
            "2g.20gb": {"id": 14, "size": 2, "multiprocessors": 28, "copyEngines": 2, "decoders": 1,
                        "encoders": 0, "jpegEngines": 0, "ofaEngines": 0, "memoryMiB": 20096},
            "3g.40gb": {"id": 9, "size": 4, "multiprocessors": 42, "copyEngines": 3, "decoders": 2,
                        "encoders": 0, "jpegEngines": 0, "ofaEngines": 0, "memoryMiB": 40192},
        },
    },
}


# ------------------------------------------------------------------------------- DeviceClasses
def _cel(expression: str) -> dict[str, Any]:
    return {"cel": {"expression": expression}}


def device_class(name: str, expression: str, extended_resource_name: str | None = None) -> dict[str, Any]:
    """A resource.k8s.io/v1 DeviceClass selecting devices by one CEL expression."""
    spec: dict[str, Any] = {"selectors": [_cel(expression)]}
    if extended_resource_name:
        spec["extendedResourceName"] = extended_resource_name
    return {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": name}, "spec": spec}


def device_classes() -> list[dict[str, Any]]:
    """The chart's two GPU classes (as rendered for a resource.k8s.io/v1 cluster) and the KEP-5004
    class for MIG 1g.10gb."""
    return [
        device_class(GPU_CLASS, f"device.driver == '{DRIVER}' && device.attributes['{DRIVER}'].type == 'gpu'",
                     GPU_RESOURCE),
        device_class(MIG_CLASS, f"device.driver == '{DRIVER}' && device.attributes['{DRIVER}'].type == 'mig'"),
        device_class(MIG_1G_10GB_CLASS,
                     f"device.driver == '{DRIVER}' && device.attributes['{DRIVER}'].type == 'mig' && "
                     f"device.attributes['{DRIVER}'].profile == '1g.10gb'", MIG_1G_10GB_RESOURCE),
    ]


# ------------------------------------------------------------------------------------- devices
def _uuid(prefix: str, *parts: object) -> str:
    """A stable fake NVML UUID (GPU-... / MIG-...) for a node's device."""
    return f"{prefix}-{uuid.uuid5(uuid.NAMESPACE_URL, '/'.join(map(str, parts)))}"


def _s(value: str) -> dict[str, str]:
    return {"string": value}


def _v(value: str) -> dict[str, str]:
    return {"version": value}


def _common_attributes(model: dict[str, Any], bus_id: str) -> dict[str, Any]:
    return {
        "productName": _s(model["productName"]),
        "brand": _s(model["brand"]),
        "architecture": _s(model["architecture"]),
        "cudaComputeCapability": _v(model["cudaComputeCapability"]),
        "driverVersion": _v(DRIVER_VERSION),
        "cudaDriverVersion": _v(CUDA_DRIVER_VERSION),
        "resource.kubernetes.io/pciBusID": _s(bus_id),
    }


def gpu_device(node: str, model_key: str, minor: int) -> dict[str, Any]:
    """A whole GPU as GpuInfo.GetDevice() publishes it."""
    model = GPU_MODELS[model_key]
    return {
        "name": f"gpu-{minor}",
        "attributes": {"type": _s("gpu"), "uuid": _s(_uuid("GPU", node, minor)),
                       **_common_attributes(model, model["pciBusIDs"][minor])},
        "capacity": {"memory": {"value": model["memory"]}},
    }


def mig_device_name(parent_minor: int, profile: str, profile_id: int, placement: int) -> str:
    """MigSpecTuple.ToCanonicalName: dots dropped from the profile, RFC 1123 lower case."""
    return f"gpu-{parent_minor}-mig-{profile.replace('.', '').lower()}-{profile_id}-{placement}"


def mig_device(node: str, model_key: str, parent_minor: int, profile: str, placement: int) -> dict[str, Any]:
    """A static MIG device as MigDeviceInfo.GetDevice() publishes it: the parent's attributes
    (pciBusID too), type ``mig``, its own uuid, ``parentUUID``, ``profile``; the GPU instance
    profile's engines and memory as capacity, plus one ``memorySlice<i>: 1`` per slice it holds."""
    model = GPU_MODELS[model_key]
    p = model["mig"][profile]
    capacity: dict[str, Any] = {k: {"value": str(p[k])} for k in (
        "multiprocessors", "copyEngines", "decoders", "encoders", "jpegEngines", "ofaEngines")}
    capacity["memory"] = {"value": f"{p['memoryMiB']}Mi"}
    for i in range(placement, placement + p["size"]):
        capacity[f"memorySlice{i}"] = {"value": "1"}
    return {
        "name": mig_device_name(parent_minor, profile, p["id"], placement),
        "attributes": {"type": _s("mig"), "uuid": _s(_uuid("MIG", node, parent_minor, profile, placement)),
                       "parentUUID": _s(_uuid("GPU", node, parent_minor)), "profile": _s(profile),
                       **_common_attributes(model, model["pciBusIDs"][parent_minor])},
        "capacity": capacity,
    }


def _pools(path: Path) -> dict[str, dict[str, Any]]:
    return dict(yaml.safe_load(path.read_text())["pools"])


def node_devices(path: Path = DRA_NODES_FILE) -> dict[str, list[dict[str, Any]]]:
    """Every DRA node's devices, by node name, in the order the slice lists them."""
    out: dict[str, list[dict[str, Any]]] = {}
    for pool, p in _pools(path).items():
        dra = p["dra"]
        for i in range(p["count"]):
            node = f"{pool}-{i}"
            devices = []
            for gpu in dra["gpus"]:
                if not gpu["mig"]:
                    devices.append(gpu_device(node, dra["gpu"], gpu["minor"]))
                for m in gpu["mig"]:  # MIG enabled: only its MIG devices are published, not the GPU
                    devices.append(mig_device(node, dra["gpu"], gpu["minor"], m["profile"], m["placement"]))
            out[node] = devices
    return out


def devices_of(kind: str, profile: str | None = None, path: Path = DRA_NODES_FILE) -> set[tuple[str, str]]:
    """(node = pool name, device name) of every published device of `kind` ("gpu" or "mig"), MIG
    ones of `profile` only if given: what an allocation result's (pool, device) must be in."""
    return {(node, d["name"]) for node, devices in node_devices(path).items() for d in devices
            if d["attributes"]["type"]["string"] == kind
            and (profile is None or d["attributes"].get("profile", {}).get("string") == profile)}


def resource_slice(node: str, devices: list[dict[str, Any]], node_uid: str | None = None) -> dict[str, Any]:
    """The one ResourceSlice the kubelet plugin publishes for `node`: pool named after the node,
    generation 1, one slice. Named like the kubelet helper's ``<index>-<driver>-<node>-<random>``
    without the random suffix (so that apply is idempotent); owned by the Node when its uid is
    given, as the helper does (no garbage collector runs here, so that is informative only)."""
    meta: dict[str, Any] = {"name": f"0-{DRIVER}-{node}"}
    if node_uid:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid,
                                    "controller": True}]
    return {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": meta,
        "spec": {"driver": DRIVER, "nodeName": node,
                 "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                 "devices": copy.deepcopy(devices)},
    }


def resource_slices(path: Path = DRA_NODES_FILE, node_uids: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return [resource_slice(node, devices, (node_uids or {}).get(node)) for node, devices in node_devices(path).items()]


def dra_nodes(path: Path = DRA_NODES_FILE) -> list[dict[str, Any]]:
    """The DRA pool's Node manifests (testbed/dra-nodes.yaml through controlplane.node_objects)."""
    return node_objects(path)


# ------------------------------------------------------------------------- claims and pods
def claim_template(name: str, namespace: str, device_class_name: str, *, cel: str | None = None,
                   count: int = 1, request: str = "gpu") -> dict[str, Any]:
    """A ResourceClaimTemplate with one request of `count` devices of a class (optional CEL)."""
    exactly: dict[str, Any] = {"deviceClassName": device_class_name, "allocationMode": "ExactCount", "count": count}
    if cel:
        exactly["selectors"] = [_cel(cel)]
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"spec": {"devices": {"requests": [{"name": request, "exactly": exactly}]}}}}


def pod_with_claim(name: str, namespace: str, template: str, *, claim: str = "gpu",
                   labels: dict[str, str] | None = None, node_selector: dict[str, str] | None = None
                   ) -> dict[str, Any]:
    """A pod shaped like Airflow's (container ``base``) whose claim `claim` comes from the
    ResourceClaimTemplate `template`, tolerating the GPU taint."""
    spec: dict[str, Any] = {
        "containers": [{"name": "base", "image": "busybox", "resources": {"claims": [{"name": claim}]}}],
        "resourceClaims": [{"name": claim, "resourceClaimTemplateName": template}],
        "tolerations": [GPU_TOLERATION], "restartPolicy": "Never",
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}}, "spec": spec}


# --------------------------------------------------------------------------------- install
def install(cp: ControlPlane, path: Path = DRA_NODES_FILE, timeout: float = 30.0) -> list[str]:
    """Create the DRA nodes (Ready), the DeviceClasses and the ResourceSlices; idempotent (server-
    side apply). Returns the DRA node names. Waits until the scheduler-visible objects exist."""
    from kubernetes import client

    names = cp.create_gpu_nodes(path)
    core = client.CoreV1Api(cp.api_client())
    uids = {n: core.read_node(n).metadata.uid for n in names}
    cp.apply(device_classes())
    cp.apply(resource_slices(path, uids))
    resource = client.ResourceV1Api(cp.api_client())
    deadline = time.monotonic() + timeout
    while {s.spec.node_name for s in resource.list_resource_slice().items if s.spec.driver == DRIVER} < set(names):
        if time.monotonic() > deadline:
            raise TimeoutError(f"ResourceSlices for {names} not listed after {timeout}s")
        time.sleep(0.2)
    return names


def allocated_devices(cp: ControlPlane) -> set[tuple[str, str]]:
    """(pool, device) of every device of this driver allocated to any ResourceClaim right now."""
    from kubernetes import client

    claims = client.ResourceV1Api(cp.api_client()).list_resource_claim_for_all_namespaces().items
    return {(r.pool, r.device) for c in claims if c.status and c.status.allocation
            for r in c.status.allocation.devices.results or [] if r.driver == DRIVER}


def allocation(claim: Any) -> list[tuple[str, str, str]]:
    """(driver, pool, device) of each device allocated to a ResourceClaim (a client model)."""
    assert claim.status.allocation is not None, f"claim {claim.metadata.name} not allocated: {claim.status}"
    return [(r.driver, r.pool, r.device) for r in claim.status.allocation.devices.results]


def wait_for(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll until `condition()` is truthy and return that value."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met after {timeout}s")
        time.sleep(0.2)
    return value
