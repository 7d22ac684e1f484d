"""JSON Patch (RFC 6902) operations built directly from a decision on the raw pod dict.

No document diff on the hot path and no typed round trip: each helper looks at what is there
and emits the few operations that make it what the decision wants, so a second pass over the
patched pod emits nothing (idempotent, safe under ``reinvocationPolicy: IfNeeded``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

__all__ = ["Op", "add", "insert", "pointer", "remove", "replace", "set_entries"]

Op = dict[str, Any]


@lru_cache(maxsize=4096)
def pointer(*parts: str | int) -> str:
    """A JSON Pointer (RFC 6901): ``pointer("metadata", "labels", "a/b")`` -> ``/metadata/labels/a~1b``.

    Cached: the same few paths (label keys, container indexes) recur on every GPU pod, and
    escaping was the decision's largest single cost.
    """
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def add(path: str, value: Any) -> Op:
    """Set the member at ``path`` of an object, creating it or overwriting it (RFC 6902 section
    4.1). For an array element use :func:`insert` or :func:`replace`: ``add`` at an array index
    inserts, it never overwrites."""
    return {"op": "add", "path": path, "value": value}


def insert(path: str, value: Any) -> Op:
    """Insert ``value`` into an array before the element at ``path`` (``.../0``), or append it
    (``.../-``): RFC 6902 ``add`` on an array index shifts the elements after it."""
    return {"op": "add", "path": path, "value": value}


def replace(path: str, value: Any) -> Op:
    """Overwrite the array element (or member) at ``path``, which must exist (RFC 6902 section 4.3):
    never :func:`insert`, which would put a second element beside it."""
    return {"op": "replace", "path": path, "value": value}


def remove(path: str) -> Op:
    """Remove the member or array element at ``path`` (later array elements shift down)."""
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
