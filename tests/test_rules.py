"""Security rules: the known escapes from the device plugin's allocation."""

from __future__ import annotations

import pytest

from airflow_gpu_webhook.core.rules import gpu_reach, security_violations

from conftest import airflow_fixture, policy_with


def _with(case_id, change):
    pod = airflow_fixture(case_id)["pod"]
    change(pod)
    return pod


def _volume(path):
    return lambda p: p["spec"]["volumes"].append({"name": "dev", "hostPath": {"path": path}})


def _env(name, value="x", field="containers"):
    return lambda p: p["spec"][field][0].setdefault("env", []).append({"name": name, "value": value})


def _mount(path):
    return lambda p: p["spec"]["containers"][0].setdefault("volumeMounts", []).append({"name": "d", "mountPath": path})


def _security(**fields):
    return lambda p: p["spec"]["containers"][0].setdefault("securityContext", {}).update(fields)


def _spec(**fields):
    return lambda p: p["spec"].update(fields)


def _env_from(*sources, field="containers"):
    return lambda p: p["spec"][field][0].setdefault("envFrom", []).extend(sources)


CONFIG_MAP = {"configMapRef": {"name": "task-env"}}


RULES = [
    # (description, fixture, change, gpu_pod, reaching, reasons)
    ("NVIDIA_VISIBLE_DEVICES anywhere is denied", "kpo_cpu_env_visible_devices", lambda p: None, False, False,
     ["forbidden-env"]),
    ("NVIDIA_VISIBLE_DEVICES=void is the one value allowed", "kpo_cpu_plain", _env("NVIDIA_VISIBLE_DEVICES", "void"),
     False, False, []),
    ("NVIDIA_VISIBLE_DEVICES=void,0 is denied", "kpo_cpu_plain", _env("NVIDIA_VISIBLE_DEVICES", "void,0"),
     False, False, ["forbidden-env"]),
    ("void through valueFrom is denied", "kpo_cpu_plain",
     lambda p: p["spec"]["containers"][0].setdefault("env", []).append(
         {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}),
     False, False, ["forbidden-env"]),
    ("NVIDIA_MIG_CONFIG_DEVICES on a CPU pod is denied", "kpo_cpu_plain", _env("NVIDIA_MIG_CONFIG_DEVICES"),
     False, False, ["forbidden-env"]),
    ("NVIDIA_IMEX_CHANNELS on a CPU pod is denied", "kpo_cpu_plain", _env("NVIDIA_IMEX_CHANNELS"), False, False,
     ["forbidden-env"]),
    ("NVIDIA_GDS=enabled on a CPU pod is denied", "kpo_cpu_plain", _env("NVIDIA_GDS", "enabled"), False, False,
     ["forbidden-env"]),
    ("LD_PRELOAD on a GPU pod is denied", "kpo_env_ld_preload", lambda p: None, True, False, ["forbidden-env"]),
    ("LD_PRELOAD on a CPU pod is fine", "kpo_cpu_plain", _env("LD_PRELOAD"), False, False, []),
    ("env in an init container counts", "kpo_existing_scheduling",
     _env("NVIDIA_VISIBLE_DEVICES", "all", "initContainers"), True, False, ["forbidden-env"]),
    ("env in an ephemeral container counts", "kpo_cpu_plain",
     _spec(ephemeralContainers=[{"name": "debug", "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}]),
     False, False, ["forbidden-env"]),
    ("a mount at the device-request path is denied on any pod", "kpo_cpu_plain",
     _mount("/var/run/nvidia-container-devices/all"), False, False, ["device-request-mount"]),
    ("a mount at /run/nvidia-container-devices is denied", "kpo_cpu_plain",
     _mount("/run/nvidia-container-devices/0"), False, False, ["device-request-mount"]),
    ("a mount spelt //var/run/./nvidia-container-devices is denied", "kpo_cpu_plain",
     _mount("//var/run/./nvidia-container-devices"), False, False, ["device-request-mount"]),
    ("a mount at /var/run is fine", "kpo_cpu_plain", _mount("/var/run"), False, False, []),
    ("privileged GPU container is denied", "kpo_privileged", lambda p: None, True, False, ["privileged-gpu-pod"]),
    ("a privileged CPU pod is left to Pod Security", "kpo_privileged", lambda p: None, False, False, []),
    ("a privileged pod that reaches a GPU node is denied", "kpo_privileged", lambda p: None, False, True,
     ["privileged-gpu-pod"]),
    ("SYS_ADMIN on a GPU pod is denied", "kpo_h100_count2", _security(capabilities={"add": ["SYS_ADMIN"]}), True,
     False, ["privileged-capability"]),
    ("cap_sys_admin spelt in lower case is denied", "kpo_h100_count2",
     _security(capabilities={"add": ["cap_sys_admin"]}), True, False, ["privileged-capability"]),
    ("ALL capabilities on a GPU pod is denied", "kpo_h100_count2", _security(capabilities={"add": ["ALL"]}), True,
     False, ["privileged-capability"]),
    ("NET_ADMIN on a GPU pod is left to Pod Security", "kpo_h100_count2",
     _security(capabilities={"add": ["NET_ADMIN"]}), True, False, []),
    ("hostPID on a GPU pod is denied", "kpo_h100_count2", _spec(hostPID=True), True, False, ["host-namespace"]),
    ("hostIPC on a reaching pod is denied", "kpo_cpu_plain", _spec(hostIPC=True), False, True, ["host-namespace"]),
    ("hostPID on a CPU pod is left to Pod Security", "kpo_cpu_plain", _spec(hostPID=True), False, False, []),
    ("hostPath /dev/nvidia0 on a GPU pod is denied", "kpo_hostpath_dev_nvidia", lambda p: None, True, False,
     ["host-path"]),
    ("hostPath / on a GPU pod is denied", "kpo_h100_count2", _volume("/"), True, False, ["host-path"]),
    ("hostPath /dev/char/195:0 on a GPU pod is denied", "kpo_h100_count2", _volume("/dev/char/195:0"), True, False,
     ["host-path"]),
    ("hostPath /run/nvidia/mps on a reaching pod is denied", "kpo_cpu_plain", _volume("/run/nvidia/mps"), False, True,
     ["host-path"]),
    ("hostPath /var/lib/kubelet/device-plugins on a GPU pod is denied", "kpo_h100_count2",
     _volume("/var/lib/kubelet/device-plugins"), True, False, ["host-path"]),
    ("hostPath /data on a GPU pod is denied without an allowlist", "kpo_h100_count2", _volume("/data"), True, False,
     ["host-path"]),
    ("hostPath on a CPU pod that reaches no GPU is fine", "kpo_cpu_plain", _volume("/dev"), False, False, []),
    ("resourceClaims on any pod are denied", "kpo_cpu_plain",
     _spec(resourceClaims=[{"name": "gpu", "resourceClaimName": "a"}]), False, False, ["resource-claims"]),
    ("resources.claims on a container are denied", "kpo_cpu_plain",
     lambda p: p["spec"]["containers"][0].setdefault("resources", {}).update(claims=[{"name": "gpu"}]),
     False, False, ["resource-claims"]),
    ("an Airflow GPU pod breaks no rule", "kpo_h100_count2", lambda p: None, True, False, []),
    ("envFrom without a prefix on a GPU pod is denied: its keys could set NVIDIA_VISIBLE_DEVICES",
     "kpo_h100_count2", _env_from(CONFIG_MAP), True, False, ["forbidden-env"]),
    ("envFrom with prefix NVIDIA_ on a GPU pod is denied", "kpo_h100_count2",
     _env_from({"prefix": "NVIDIA_", **CONFIG_MAP}), True, False, ["forbidden-env"]),
    ("envFrom with prefix N (it begins NVIDIA_...) is denied", "kpo_h100_count2",
     _env_from({"prefix": "N", "secretRef": {"name": "s"}}), True, False, ["forbidden-env"]),
    ("envFrom with prefix LD_ (LD_PRELOAD) is denied", "kpo_h100_count2", _env_from({"prefix": "LD_", **CONFIG_MAP}),
     True, False, ["forbidden-env"]),
    ("envFrom with a safe prefix on a GPU pod is fine", "kpo_h100_count2", _env_from({"prefix": "APP_", **CONFIG_MAP}),
     True, False, []),
    ("envFrom on a GPU pod's init container counts too", "kpo_h100_count2",
     lambda p: p["spec"].setdefault("initContainers", []).append({"name": "init", "envFrom": [CONFIG_MAP]}),
     True, False, ["forbidden-env"]),
    ("envFrom without a prefix on a CPU pod is fine: it can reach no GPU", "kpo_cpu_plain", _env_from(CONFIG_MAP),
     False, False, []),
]


@pytest.mark.parametrize("description, case_id, change, gpu_pod, reaching, reasons", RULES, ids=[r[0] for r in RULES])
def test_security_rules(description, case_id, change, gpu_pod, reaching, reasons, policy):
    found = security_violations(_with(case_id, change), policy, gpu_pod, reaching)
    assert [v.reason for v in found] == reasons


ALLOWLIST = [
    ("a listed path is allowed", "/data", []),
    ("a path under a listed one is allowed", "/data/x", []),
    ("a sibling with the same prefix is denied", "/database", ["host-path"]),
    ("a path that climbs out of a listed one is denied", "/data/../dev", ["host-path"]),
]


@pytest.mark.parametrize("description, path, reasons", ALLOWLIST, ids=[a[0] for a in ALLOWLIST])
def test_the_host_path_allowlist(description, path, reasons):
    pod = _with("kpo_h100_count2", _volume(path))
    found = security_violations(pod, policy_with(hostPathAllowlist=["/data"]), True)
    assert [v.reason for v in found] == reasons


def test_env_from_passes_when_the_policy_allows_it():
    pod = _with("kpo_h100_count2", _env_from(CONFIG_MAP))
    assert security_violations(pod, policy_with(gpuPodEnvFrom="allow"), True) == []


def test_resource_claims_pass_when_the_policy_allows_them():
    pod = _with("kpo_cpu_plain", _spec(resourceClaims=[{"name": "gpu", "resourceClaimName": "a"}]))
    assert security_violations(pod, policy_with(resourceClaims="allow"), False) == []


def test_a_denial_names_container_field_value_and_what_to_do(policy):
    [found] = security_violations(_with("kpo_h100_count2", _security(capabilities={"add": ["SYS_ADMIN"]})), policy, True)
    assert "container 'base' adds capability SYS_ADMIN" in found.message
    assert "remove it from securityContext.capabilities.add" in found.message


REACH = [
    ("no toleration reaches nothing", {}, []),
    ("the profiles' toleration reaches a GPU node",
     {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}, ["toleration"]),
    ("an Equal toleration of the GPU taint key reaches it (the profile tolerates any value)",
     {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}]}, ["toleration"]),
    ("Exists with no key tolerates every taint",
     {"tolerations": [{"operator": "Exists"}]}, ["toleration"]),
    ("Exists with no key but another effect does not",
     {"tolerations": [{"operator": "Exists", "effect": "NoExecute"}]}, []),
    ("another taint key does not", {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}, []),
    ("the nvidia runtimeClassName reaches a GPU node", {"runtimeClassName": "nvidia"}, ["runtimeClassName"]),
    ("another runtimeClassName does not", {"runtimeClassName": "gvisor"}, []),
    ("spec.nodeName bypasses the scheduler", {"nodeName": "gpu-0"}, ["nodeName"]),
]


@pytest.mark.parametrize("description, fields, routes", REACH, ids=[r[0] for r in REACH])
def test_gpu_reach(description, fields, routes, policy):
    pod = _with("kpo_cpu_plain", _spec(**fields))
    assert [r.split(" ")[0] for r in gpu_reach(pod, policy)] == routes


def test_hostile_shapes_do_not_crash_the_rules(policy):
    hostile = {"spec": {"containers": [None, 3, {"env": [None, "x", {"name": None}], "volumeMounts": [None, {}],
                                                 "securityContext": {"capabilities": {"add": [None, 3]}}}],
                        "volumes": [None, {"hostPath": None}], "tolerations": [None, "x", {"key": None}]}}
    assert [v.reason for v in security_violations(hostile, policy, True)] == ["host-path"]
    assert gpu_reach(hostile, policy) == []
