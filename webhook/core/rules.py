"""Security rules: every known route to a GPU that is not the device plugin's allocation, pure.

The NVIDIA container toolkit decides which devices a container sees from more than the
device plugin's allocation. Each list below names the toolkit source it comes from
(NVIDIA/nvidia-container-toolkit, ``internal/config/image/``), so a toolkit upgrade can be
checked against it. docs/security.md lists every route and how it is closed.

On every pod the webhook sees:
- toolkit env vars (:data:`TOOLKIT_ENV`) in any container, except ``NVIDIA_VISIBLE_DEVICES=void``,
  the toolkit's own way to give a container no GPU, which the mutation puts on containers
  that hold none (:data:`VOID`);
- volume mounts at the toolkit's device-request path (:data:`DEVICE_REQUEST_ROOTS`);
- ``spec.resourceClaims`` (DRA) unless the policy allows them (the platform's own claims are
  judged by the GPU rules, webhook/core/dra.py), and the implicit extended resource of every
  DeviceClass (``deviceclass.resource.kubernetes.io/<class>``, KEP-5004).
On GPU pods and pods that can reach a GPU node (:func:`gpu_reach`):
- capabilities the toolkit treats as privileged, ``privileged: true``, ``hostPID``, ``hostIPC``;
- hostPath volumes outside the policy's ``hostPathAllowlist``;
- ``LD_PRELOAD`` (it can replace the libraries the isolation relies on).
Values set through ``envFrom`` cannot be seen at admission: that is why ``void`` is set
explicitly (an explicit ``env`` entry wins over ``envFrom``) and privilege is denied.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from .decision import Reason, Violation
from .dra import is_platform_entry, platform_claim_names
from .pod import CONTAINER_FIELDS, Container, all_containers, as_dict, as_list, spec
from .policy import Policy

__all__ = [
    "DEVICE_CLASS_RESOURCE_PREFIX",
    "DEVICE_REQUEST_ROOTS",
    "GPU_POD_FORBIDDEN_ENV",
    "PRIVILEGED_CAPABILITIES",
    "TOOLKIT_ENV",
    "VISIBLE_DEVICES",
    "VOID",
    "gpu_reach",
    "is_void",
    "security_violations",
]

VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
#: ``devicesFromEnvvars`` in cuda_image.go: a list containing "void" gives no device at all,
#: and an explicit value also defeats the legacy-image rule (CUDA_VERSION set, the variable
#: unset: every GPU of the node).
VOID = "void"

#: Env vars the toolkit reads to choose devices, libraries or extra device nodes, and why each
#: is refused. Sources: envvars.go (NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES,
#: NVIDIA_MIG_CONFIG_DEVICES, NVIDIA_MIG_MONITOR_DEVICES, NVIDIA_IMEX_CHANNELS) and
#: internal/modifier/gated.go (NVIDIA_GDS, NVIDIA_MOFED, NVIDIA_NVSWITCH, NVIDIA_GDRCOPY
#: ``=enabled`` inject extra device nodes in CDI mode).
_TOOLKIT_ENV_RISK = {
    VISIBLE_DEVICES: "makes the container toolkit expose GPUs the device plugin never allocated",
    "NVIDIA_DRIVER_CAPABILITIES": "changes which driver libraries and devices the container toolkit mounts",
    "NVIDIA_MIG_CONFIG_DEVICES": "gives the container the right to reconfigure MIG on the whole GPU",
    "NVIDIA_MIG_MONITOR_DEVICES": "gives the container the right to monitor every MIG device of the GPU",
    "NVIDIA_IMEX_CHANNELS": "makes the container toolkit expose IMEX channel devices",
    "NVIDIA_GDS": "makes the container toolkit inject GPUDirect Storage devices",
    "NVIDIA_MOFED": "makes the container toolkit inject InfiniBand devices",
    "NVIDIA_NVSWITCH": "makes the container toolkit inject NVSwitch devices",
    "NVIDIA_GDRCOPY": "makes the container toolkit inject the gdrdrv device",
}
TOOLKIT_ENV = tuple(_TOOLKIT_ENV_RISK)
_GPU_POD_ENV_RISK = {
    "LD_PRELOAD": "can replace the CUDA and container-toolkit libraries the GPU isolation relies on",
}
GPU_POD_FORBIDDEN_ENV = tuple(_GPU_POD_ENV_RISK)
_GPU_POD_RISKS = {**_TOOLKIT_ENV_RISK, **_GPU_POD_ENV_RISK}

#: cuda_image.go ``DeviceListAsVolumeMountsRoot``: with ``accept-nvidia-visible-devices-as-volume-mounts``
#: a mount whose destination starts with it (a string prefix, ``filepath.Clean``-ed) is a device
#: request. /var/run is /run in every image, so both spellings are closed.
DEVICE_REQUEST_ROOTS = ("/var/run/nvidia-container-devices", "/run/nvidia-container-devices")

#: privileged.go ``IsPrivileged``: CAP_SYS_ADMIN in the bounding set makes the toolkit honour env
#: var device requests even from an unprivileged container. Kubernetes names capabilities
#: without the prefix, the runtimes add ``CAP_`` (and ``ALL`` grants every one).
PRIVILEGED_CAPABILITIES = ("SYS_ADMIN", "ALL")

def _clean(path: str) -> str:
    """``filepath.Clean`` of an absolute path (a leading ``//`` folded too)."""
    return posixpath.normpath("/" + path.lstrip("/"))


def _where(field: str, container: Mapping[str, Any]) -> str:
    kind = {"initContainers": "init container", "ephemeralContainers": "ephemeral container"}.get(field, "container")
    return f"{kind} {container.get('name')!r}"


def _env_violations(containers: list[Container], gpu_pod: bool) -> list[Violation]:
    risks = _GPU_POD_RISKS if gpu_pod else _TOOLKIT_ENV_RISK
    found = []
    for field, _, container in containers:
        for env in as_list(container.get("env")):
            name = as_dict(env).get("name")
            if name not in risks or (name == VISIBLE_DEVICES and is_void(env)):
                continue
            value = " through valueFrom" if "valueFrom" in env else f"={env.get('value')!r}"
            instead = (f"only {VISIBLE_DEVICES}={VOID} is allowed, " if name == VISIBLE_DEVICES else "")
            found.append(Violation(
                Reason.FORBIDDEN_ENV,
                f"{_where(field, container)} sets env {name}{value}, which {risks[name]}; remove it "
                f"({instead}GPUs are assigned by the GPU profile label)"))
    return found


def _unsafe_prefix(prefix: Any) -> bool:
    """Whether ``envFrom`` with this ``prefix`` can name a variable a GPU pod may not set: every
    name it makes is ``prefix + key``, and a key is anything, so only a prefix that no such
    name starts with is safe."""
    return not isinstance(prefix, str) or not prefix or any(name.startswith(prefix) for name in _GPU_POD_RISKS)


def _env_from_violations(containers: list[Container]) -> list[Violation]:
    found = []
    for field, _, container in containers:
        for source in as_list(container.get("envFrom")):
            prefix = as_dict(source).get("prefix")
            if not _unsafe_prefix(prefix):
                continue
            given = f"prefix {prefix!r}" if prefix else "no prefix"
            found.append(Violation(
                Reason.FORBIDDEN_ENV,
                f"{_where(field, container)} reads envFrom with {given}, so its ConfigMap or Secret can set "
                f"{VISIBLE_DEVICES} and widen the GPUs the device plugin allocated; give every envFrom entry a "
                f"prefix (for example 'APP_'), or use env with valueFrom for the keys the task needs"))
    return found


def is_void(env: Any) -> bool:
    """True for the env entry ``NVIDIA_VISIBLE_DEVICES=void`` written as a literal value."""
    return (isinstance(env, dict) and env.get("name") == VISIBLE_DEVICES and env.get("value") == VOID
            and "valueFrom" not in env)


def _mount_violations(containers: list[Container]) -> list[Violation]:
    found = []
    for field, _, container in containers:
        for mount in as_list(container.get("volumeMounts")):
            path = as_dict(mount).get("mountPath")
            if isinstance(path, str) and _clean(path).startswith(DEVICE_REQUEST_ROOTS):
                found.append(Violation(
                    Reason.DEVICE_REQUEST_MOUNT,
                    f"{_where(field, container)} mounts volume {mount.get('name')!r} at {path}, which the NVIDIA "
                    f"container toolkit reads as a GPU device request; mount it elsewhere (GPUs are assigned "
                    f"by the GPU profile label)"))
    return found


def _privilege_violations(pod: Mapping[str, Any], containers: list[Container], why: str) -> list[Violation]:
    found = []
    for key in ("hostPID", "hostIPC"):
        if spec(pod).get(key) is True:
            found.append(Violation(Reason.HOST_NAMESPACE, f"the pod sets spec.{key}: true in {why}, which lets it "
                                                          f"reach other containers' GPUs; remove spec.{key}"))
    for field, _, container in containers:
        context = as_dict(container.get("securityContext"))
        if context.get("privileged") is True:
            found.append(Violation(Reason.PRIVILEGED_GPU_POD,
                                   f"{_where(field, container)} sets securityContext.privileged: true in {why} and "
                                   f"would see every GPU of the node; remove securityContext.privileged"))
        for cap in as_list(as_dict(context.get("capabilities")).get("add")):
            if isinstance(cap, str) and cap.upper().removeprefix("CAP_") in PRIVILEGED_CAPABILITIES:
                found.append(Violation(
                    Reason.PRIVILEGED_CAPABILITY,
                    f"{_where(field, container)} adds capability {cap} in {why}; the NVIDIA container toolkit "
                    f"treats CAP_SYS_ADMIN as privileged and would honour device requests from env vars; "
                    f"remove it from securityContext.capabilities.add"))
    return found


def _host_path_violations(pod: Mapping[str, Any], allowlist: tuple[str, ...], why: str) -> list[Violation]:
    found = []
    for volume in as_list(spec(pod).get("volumes")):
        if "hostPath" not in as_dict(volume):
            continue
        path = as_dict(volume["hostPath"]).get("path")
        clean = _clean(path) if isinstance(path, str) else None
        if clean is not None and any(clean == a or clean.startswith(a + "/") for a in allowlist):
            continue
        allowed = ", ".join(allowlist) if allowlist else "none"
        found.append(Violation(
            Reason.HOST_PATH,
            f"volume {volume.get('name')!r} mounts hostPath {path!r} in {why}; a hostPath can hand GPU device "
            f"nodes, driver files or the device plugin's socket to the pod; use another volume type "
            f"(hostPaths this policy allows: {allowed})"))
    return found


#: KEP-5004: every DeviceClass also answers, as an extended resource, to this prefix plus its name
#: (``deviceclass.resource.kubernetes.io/gpu.nvidia.com: 1`` gets a whole GPU through DRA).
DEVICE_CLASS_RESOURCE_PREFIX = "deviceclass.resource.kubernetes.io/"


def _claim_violations(pod: Mapping[str, Any], containers: list[Container], policy: Policy) -> list[Violation]:
    """DRA claims the policy does not hand out. The platform's own claims (:mod:`.dra`) are judged
    by the GPU rules instead: exactly the profile's on a managed pod, none on any other."""
    if policy.spec.resourceClaims == "allow":
        return []
    entries = as_list(spec(pod).get("resourceClaims"))
    ours = platform_claim_names(pod, policy)
    found = [Violation(Reason.RESOURCE_CLAIMS, "the pod sets spec.resourceClaims (Dynamic Resource Allocation), which "
                                               "would get devices outside GPU profiles and quota; remove them (GPUs "
                                               "come from the GPU profile label, and DRA profiles add their claims)")
             ] if any(not is_platform_entry(e, policy) for e in entries) else []
    for field, _, container in containers:
        resources = as_dict(container.get("resources"))
        implicit = sorted({name for section in ("limits", "requests") for name in as_dict(resources.get(section))
                           if isinstance(name, str) and name.startswith(DEVICE_CLASS_RESOURCE_PREFIX)})
        if implicit:
            found.append(Violation(Reason.RESOURCE_CLAIMS,
                                   f"{_where(field, container)} asks for {', '.join(implicit)}, a DRA DeviceClass "
                                   f"as an extended resource, which the scheduler serves with devices outside GPU "
                                   f"profiles and quota; remove it (GPUs come from the GPU profile label)"))
        claims = as_list(resources.get("claims"))
        if any(as_dict(c).get("name") not in ours for c in claims):
            found.append(Violation(Reason.RESOURCE_CLAIMS,
                                   f"{_where(field, container)} sets resources.claims (Dynamic Resource Allocation) "
                                   f"outside the GPU profile's claims; remove them (GPUs come from the GPU profile "
                                   f"label)"))
    return found


def _tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Whether a pod toleration tolerates some taint a profile toleration stands for.

    A profile toleration ``{key, operator, value, effect}`` implies GPU nodes tainted with that
    key (any value under ``Exists``; any effect when it names none). As the scheduler reads a
    toleration: no key with ``Exists`` tolerates every taint, no effect matches every effect.
    """
    key, operator = toleration.get("key") or "", toleration.get("operator") or "Equal"
    effect = toleration.get("effect") or ""
    if key == "":
        return operator == "Exists" and (not effect or not taint.get("effect") or effect == taint.get("effect"))
    if key != taint.get("key"):
        return False
    if effect and taint.get("effect") and effect != taint.get("effect"):
        return False
    return operator == "Exists" or taint.get("operator") == "Exists" or toleration.get("value") == taint.get("value")


def gpu_reach(pod: Mapping[str, Any], policy: Policy) -> list[str]:
    """How a pod could reach a GPU node's devices without a GPU: each route named, or none."""
    pod_spec = spec(pod)
    routes = []
    for toleration in as_list(pod_spec.get("tolerations")):
        if isinstance(toleration, dict) and any(_tolerates(toleration, t) for t in policy.gpu_taints):
            routes.append(f"toleration {_describe(toleration)} (GPU nodes carry the profiles' taint)")
    runtime = pod_spec.get("runtimeClassName")
    if runtime in policy.spec.gpuRuntimeClasses:
        routes.append(f"runtimeClassName {runtime} (a GPU runtime)")
    if pod_spec.get("nodeName"):
        routes.append(f"nodeName {pod_spec.get('nodeName')} (bypasses the scheduler and the GPU nodes' taints)")
    return routes


def _describe(toleration: Mapping[str, Any]) -> str:
    fields = ("key", "operator", "value", "effect")
    return "{" + ", ".join(f"{k}: {toleration[k]}" for k in fields if toleration.get(k) not in (None, "")) + "}"


def security_violations(pod: Mapping[str, Any], policy: Policy, gpu_pod: bool,
                        reaching: bool = False) -> list[Violation]:
    """Every security rule the pod breaks; ``gpu_pod`` when it holds or asks for a GPU,
    ``reaching`` when it holds none but can reach a GPU node (:func:`gpu_reach`)."""
    containers = list(all_containers(pod, CONTAINER_FIELDS))   # walked once for every rule
    found = _env_violations(containers, gpu_pod) + _mount_violations(containers) + _claim_violations(
        pod, containers, policy)
    if gpu_pod and policy.spec.gpuPodEnvFrom == "prefixed":
        found += _env_from_violations(containers)
    if gpu_pod or reaching:
        why = "a GPU pod" if gpu_pod else "a pod that can reach a GPU node"
        found += (_privilege_violations(pod, containers, why)
                  + _host_path_violations(pod, policy.spec.hostPathAllowlist, why))
    return found
