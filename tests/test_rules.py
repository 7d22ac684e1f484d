"""Security rules: the known escapes from the device plugin's allocation."""

from __future__ import annotations

import pytest

from conftest import airflow_fixture
from webhook.rules import security_violations


def _with(case_id, change):
    pod = airflow_fixture(case_id)["pod"]
    change(pod)
    return pod


def _volume(path):
    return lambda p: p["spec"]["volumes"].append({"name": "dev", "hostPath": {"path": path}})


def _env(name):
    return lambda p: p["spec"]["containers"][0].setdefault("env", []).append({"name": name, "value": "x"})


RULES = [
    ("NVIDIA_VISIBLE_DEVICES anywhere", "kpo_cpu_env_visible_devices", lambda p: None, False, ["forbidden-env"]),
    ("NVIDIA_MIG_CONFIG_DEVICES on a CPU pod", "kpo_cpu_plain", _env("NVIDIA_MIG_CONFIG_DEVICES"), False,
     ["forbidden-env"]),
    ("LD_PRELOAD on a GPU pod", "kpo_env_ld_preload", lambda p: None, True, ["forbidden-env"]),
    ("LD_PRELOAD on a CPU pod is fine", "kpo_cpu_plain", _env("LD_PRELOAD"), False, []),
    ("env in an init container counts", "kpo_existing_scheduling",
     lambda p: p["spec"]["initContainers"][0].setdefault("env", []).append({"name": "NVIDIA_VISIBLE_DEVICES"}),
     True, ["forbidden-env"]),
    ("privileged GPU container", "kpo_privileged", lambda p: None, True, ["privileged-gpu-pod"]),
    ("a privileged CPU pod is left to Pod Security", "kpo_privileged", lambda p: None, False, []),
    ("hostPath /dev/nvidia0", "kpo_hostpath_dev_nvidia", lambda p: None, True, ["host-device-path"]),
    ("hostPath /dev", "kpo_cpu_plain", _volume("/dev"), False, ["host-device-path"]),
    ("hostPath spelt //dev/./nvidiactl", "kpo_cpu_plain", _volume("//dev/./nvidiactl"), False, ["host-device-path"]),
    ("hostPath /dev/../dev/nvidia-uvm", "kpo_cpu_plain", _volume("/dev/../dev/nvidia-uvm"), False,
     ["host-device-path"]),
    ("hostPath /data is fine", "kpo_cpu_plain", _volume("/data"), True, []),
    ("hostPath /devices is fine", "kpo_cpu_plain", _volume("/devices"), True, []),
    ("an Airflow GPU pod breaks no rule", "kpo_h100_count2", lambda p: None, True, []),
]


@pytest.mark.parametrize("description, case_id, change, gpu_pod, reasons", RULES, ids=[r[0] for r in RULES])
def test_security_rules(description, case_id, change, gpu_pod, reasons):
    found = security_violations(_with(case_id, change), gpu_pod)
    assert [v.reason for v in found] == reasons


def test_hostile_shapes_do_not_crash_the_rules():
    hostile = {"spec": {"containers": [None, 3, {"env": [None, "x", {"name": None}]}], "volumes": [None, {"hostPath": None}]}}
    assert security_violations(hostile, True) == []
