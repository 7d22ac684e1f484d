"""JSON Patch (RFC 6902) operations built directly from a decision on the raw pod dict.

No document diff on the hot path and no typed round trip: each helper looks at what is there
and emits the few operations that make it what the decision wants, so a second pass over the
patched pod emits nothing (idempotent, safe under ``reinvocationPolicy: IfNeeded``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

__all__ = ["Op", "add", "insert_at", "pointer", "remove", "replace_at", "set_entries"]

Op = dict[str, Any]


@lru_cache(maxsize=4096)
def pointer(*parts: str | int) -> str:
    """A JSON Pointer (RFC 6901): ``pointer("metadata", "labels", "a/b")`` -> ``/metadata/labels/a~1b``.

    Cached: the same few paths (label keys, container indexes) recur on every GPU pod, and
    escaping was the decision's largest single cost.
    """
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def add(path: str, value: Any) -> Op:
    """``add`` creates a member or replaces an existing one (RFC 6902 section 4.1)."""
    return {"op": "add", "path": path, "value": value}


def insert_at(path: str, value: Any) -> Op:
    """Insert ``value`` into an array before the element at ``path`` (``.../0``) or at its end
    (``.../-``): RFC 6902 ``add`` on an array index shifts, it never overwrites."""
    return add(path, value)


def replace_at(path: str, value: Any) -> Op:
    """Overwrite the array element (or member) at ``path``, which must exist (RFC 6902 section 4.3):
    never ``add``, which on an array index would insert a second element."""
    return {"op": "replace", "path": path, "value": value}


def remove(path: str) -> Op:
    return {"op": "remove", "path": path}


def set_entries(parts: tuple[str | int, ...], current: Any, desired: Mapping[str, Any]) -> list[Op]:
    """Operations that make the mapping at ``parts`` contain ``desired`` (other keys kept).

    A missing or ``null`` mapping is added whole; otherwise only keys that differ are set.
    """
    if not desired:
        return []
    if not isinstance(current, dict):
        return [add(pointer(*parts), dict(desired))]
    return [add(pointer(*parts, key), value) for key, value in desired.items()
            if key not in current or current[key] != value]
