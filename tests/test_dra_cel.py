"""DRA device selectors on cel-python: the ``device`` variable as the scheduler's allocator builds
it, Kubernetes' semver and quantity functions, and every failure an unknown answer, never a no."""

from __future__ import annotations

import pytest

from airflow_gpu_webhook.cluster.dra_cel import DeviceError, Selectors, Semver, device_value

A100 = {
    "name": "gpu-0",
    "attributes": {
        "productName": {"string": "NVIDIA A100-SXM4-80GB"},   # bare: the driver is its domain
        "index": {"int": 0},
        "driverVersion": {"version": "550.54.15"},
        "mig.capable": {"bool": True},
        "resource.kubernetes.io/pcieRoot": {"string": "pci0000:00"},
        "gpu.nvidia.com/profile": {"string": "1g.10gb"},
        "links": {"ints": [1, 2]},
    },
    "capacity": {"memory": {"value": "80Gi"}},
}

CASES = [
    ("the driver is the slice's", 'device.driver == "gpu.nvidia.com"', True),
    ("a bare attribute name is qualified with the driver", 'device.attributes["gpu.nvidia.com"].productName == "NVIDIA A100-SXM4-80GB"', True),
    ("a qualified attribute name keeps its own domain", 'device.attributes["resource.kubernetes.io"].pcieRoot == "pci0000:00"', True),
    ("an int attribute compares as an int", 'device.attributes["gpu.nvidia.com"].index == 0', True),
    ("a bool attribute is a bool", 'device.attributes["gpu.nvidia.com"]["mig.capable"]', True),
    ("a selector that says no is a no", 'device.attributes["gpu.nvidia.com"].profile == "2g.20gb"', False),
    ("an unknown domain is an empty map, as in Kubernetes", '"x" in device.attributes["other.example.com"]', False),
    ("has() on an unknown domain is false", 'has(device.attributes["other.example.com"].x)', False),
    ("reading a missing attribute is an error: not known", 'device.attributes["gpu.nvidia.com"].missing == "x"', None),
    ("a false guard short-circuits a later error", 'device.driver == "other" && device.attributes["gpu.nvidia.com"].missing == "x"', False),
    ("a version attribute against semver()", 'device.attributes["gpu.nvidia.com"].driverVersion.isGreaterThan(semver("535.104.5"))', True),
    ("semver compareTo", 'device.attributes["gpu.nvidia.com"].driverVersion.compareTo(semver("550.54.15")) == 0', True),
    ("semver parts", 'device.attributes["gpu.nvidia.com"].driverVersion.major() == 550', True),
    ("semver() normalises with its second argument", 'semver("v1.2", true) == semver("1.2.0")', True),
    ("semver() refuses what is no version: not known", 'semver("1.2") == semver("1.2.0")', None),
    ("a capacity quantity against quantity()", 'device.capacity["gpu.nvidia.com"].memory.compareTo(quantity("40Gi")) >= 0', True),
    ("quantity isLessThan", 'device.capacity["gpu.nvidia.com"].memory.isLessThan(quantity("80Gi"))', False),
    ("quantities equal by value", 'quantity("1") == quantity("1000m")', True),
    ("quantity asInteger", 'device.capacity["gpu.nvidia.com"].memory.asInteger() == 85899345920', True),
    ("quantity arithmetic", 'quantity("1Gi").add(quantity("1Gi")).isGreaterThan(quantity("2G"))', True),
    ("comparing a quantity with a version is an error: not known", 'device.capacity["gpu.nvidia.com"].memory.isGreaterThan(semver("1.0.0"))', None),
    ("a list attribute with includes", 'device.attributes["gpu.nvidia.com"].links.includes(2)', True),
    ("cel.bind, which cel-python lacks: not known", 'cel.bind(d, device.attributes["gpu.nvidia.com"], d.index == 0)', None),
    ("a result that is no bool: not known", 'device.driver', None),
    ("an expression cel-python cannot parse: not known", 'device.driver ==', None),
    ("allowMultipleAllocations defaults to false", '!device.allowMultipleAllocations', True),
]


@pytest.mark.parametrize("description, expression, expected", CASES, ids=[c[0] for c in CASES])
def test_a_selector_answers_as_the_allocator_would_or_not_known(description, expression, expected):
    assert Selectors().matches((expression,), device_value(A100, "gpu.nvidia.com")) is expected


def test_several_selectors_stop_at_the_first_no_before_any_later_error():
    device = device_value(A100, "gpu.nvidia.com")
    selectors = Selectors()
    assert selectors.matches(('device.driver == "other"', "device.driver =="), device) is False
    assert selectors.matches(('device.driver == "gpu.nvidia.com"', "device.driver =="), device) is None
    assert selectors.matches((), device) is True


def test_an_expression_is_compiled_once_and_its_error_kept():
    selectors = Selectors()
    assert selectors.compile('device.driver == "x"') is None
    assert "CELParseError" in selectors.compile("device.driver ==")
    selectors.forget_unused({'device.driver == "x"'})
    assert list(selectors._programs) == ['device.driver == "x"']


@pytest.mark.parametrize("attributes", [
    pytest.param({"v": {"version": "not-a-version"}}, id="a version that is no semver"),
    pytest.param({"v": {"float": 1.5}}, id="an attribute of a kind Kubernetes does not know"),
    pytest.param({"v": {}}, id="an attribute without a value"),
])
def test_a_device_kubernetes_could_not_evaluate_either_is_refused(attributes):
    with pytest.raises(DeviceError):
        device_value({"name": "d", "attributes": attributes}, "gpu.nvidia.com")


@pytest.mark.parametrize("lower, higher", [
    ("1.0.0", "1.0.1"), ("1.9.0", "1.10.0"), ("1.0.0-alpha", "1.0.0"), ("1.0.0-alpha", "1.0.0-alpha.1"),
    ("1.0.0-alpha.1", "1.0.0-alpha.beta"), ("1.0.0-beta.2", "1.0.0-beta.11"), ("1.0.0-rc.1", "1.0.0"),
])
def test_versions_order_by_semver_precedence(lower, higher):
    assert Semver(lower) < Semver(higher)


def test_build_metadata_does_not_order_versions():
    assert Semver("1.0.0+build.1") == Semver("1.0.0+build.2")
