"""JSON Patch building blocks."""

from __future__ import annotations

import jsonpatch
import pytest

from airflow_gpu_webhook.core.patch import add, insert, pointer, remove, replace, set_entries


@pytest.mark.parametrize("parts, expected", [
    (("metadata", "labels", "gpu.platform/managed"), "/metadata/labels/gpu.platform~1managed"),
    (("spec", "containers", 0, "resources"), "/spec/containers/0/resources"),
    (("a~b",), "/a~0b"),
])
def test_pointers_escape_slash_and_tilde(parts, expected):
    assert pointer(*parts) == expected


@pytest.mark.parametrize("current", [None, {}, {"a": "1"}, {"a": "0", "b": "2"}])
def test_set_entries_makes_the_mapping_contain_what_is_desired_and_keeps_the_rest(current):
    doc = {"m": current} if current is not None else {}
    ops = set_entries(("m",), current, {"a": "1", "x/y": "2"})
    patched = jsonpatch.apply_patch(doc, ops)
    assert patched["m"]["a"] == "1" and patched["m"]["x/y"] == "2"
    assert all(patched["m"][k] == v for k, v in (current or {}).items() if k != "a")
    assert set_entries(("m",), patched["m"], {"a": "1", "x/y": "2"}) == []


ARRAYS = [
    ("add of an object member overwrites it", lambda: add("/m/k", "new"), None),
    ("insert at 0 shifts the others", lambda: insert("/a/0", "new"), ["new", "x", "y"]),
    ("insert at - appends", lambda: insert("/a/-", "new"), ["x", "y", "new"]),
    ("replace at 0 overwrites in place", lambda: replace("/a/0", "new"), ["new", "y"]),
    ("replace at 1 overwrites in place", lambda: replace("/a/1", "new"), ["x", "new"]),
    ("remove at 0 shifts the others down", lambda: remove("/a/0"), ["y"]),
]


@pytest.mark.parametrize("description, op, expected", ARRAYS, ids=[a[0] for a in ARRAYS])
def test_array_insert_and_replace_mean_what_they_say(description, op, expected):
    doc = {"a": ["x", "y"], "m": {"k": "old"}}
    patched = jsonpatch.apply_patch(doc, [op()])
    if expected is None:
        assert patched == {"a": ["x", "y"], "m": {"k": "new"}}
    else:
        assert patched == {"a": expected, "m": {"k": "old"}}


def test_replace_refuses_an_index_that_is_not_there():
    with pytest.raises(jsonpatch.JsonPatchException):
        jsonpatch.apply_patch({"a": []}, [replace("/a/0", "new")])
