"""JSON Patch building blocks."""

from __future__ import annotations

import jsonpatch
import pytest

from webhook.patch import pointer, set_entries


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
