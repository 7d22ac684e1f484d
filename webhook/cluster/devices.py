"""How many DRA devices each node offers each DRA profile: ResourceSlices and DeviceClasses in,
counts per node out, merged into the node offers (core/nodes.py ``NodeBook.set_devices``) under
each profile's ``dra_capacity_key``, where the validating step's capacity check reads them.

A device counts for a profile when its DeviceClass's selectors and then (``claim`` form) the
profile's own selector all select it, evaluated as the scheduler's allocator does
(webhook/cluster/dra_cel.py). Like the node check, the count is what a node could *ever* hold:
devices already allocated are not subtracted, nor are tainted ones (the claims tolerate none,
but the allocator skips tainted devices only with DRADeviceTaints on), and a device that consumes
shared counters (partitionable MIG devices) counts whole, so a node may be counted more than it
can give at once. Overcounting only lets a pod through to wait Pending, as without the check;
the webhook never denies on an undercount it could have avoided:

- only the slices of a pool's newest generation count, as for the allocator; an incomplete pool's
  devices count (they are coming);
- only node-local slices (``spec.nodeName``) are counted per node. A device of any other slice
  (``allNodes``, ``nodeSelector``, ``perDeviceNodeSelection``) that a profile might select makes
  that profile's count unknown on every node;
- a selector that cannot be compiled or evaluated on a device, or a device whose attributes
  cannot be read (as Kubernetes would fail it), makes the profile's count on that node unknown;
- until both watches have read their lists, and again from a watch failure until its next
  list, every DRA profile's count is unknown.

An unknown count never denies: the capacity check skips a node it cannot know
(core/nodes.py ``capacity_verdict``). A DeviceClass that does not exist selects nothing (no pod of
that profile can be allocated until it does).

Selectors are evaluated when a slice changes (that slice only) or when a class or the policy
changes (every slice), on the watch's thread or one of the book's own, never per admission.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from celpy import celtypes

from ..core.dra import dra_capacity_key
from ..core.pod import as_dict, as_list, metadata
from ..core.policy import Policy
from .dra_cel import DeviceError, Selectors, device_value

__all__ = ["CLASSES_PATH", "SLICES_PATH", "DeviceBook", "Devices"]

log = logging.getLogger("gpu_webhook.devices")

SLICES_PATH = "/apis/resource.k8s.io/v1/resourceslices"
CLASSES_PATH = "/apis/resource.k8s.io/v1/deviceclasses"

#: node -> capacity key -> devices (None: not known there); and key -> devices on every node.
Devices = tuple[dict[str, dict[str, int | None]], dict[str, int | None]]


@dataclass(frozen=True)
class _Slice:
    """What counting needs of one ResourceSlice: its pool and generation, its node (None: not
    node-local) and its devices as CEL values (None: a device no selector can be evaluated on)."""

    pool: tuple[str, str]
    generation: int
    node: str | None
    devices: tuple[celtypes.MapType | None, ...]

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> _Slice:
        spec = as_dict(obj.get("spec"))
        driver, pool = str(spec.get("driver", "")), as_dict(spec.get("pool"))
        devices: list[celtypes.MapType | None] = []
        for device in as_list(spec.get("devices")):
            try:
                devices.append(device_value(as_dict(device), driver))
            except DeviceError as err:
                log.info("ResourceSlice %s: device %s cannot be evaluated (%s)", metadata(obj).get("name"),
                         as_dict(device).get("name"), err)
                devices.append(None)
        generation = pool.get("generation")
        node = spec.get("nodeName")
        return cls((driver, str(pool.get("name", ""))), generation if isinstance(generation, int) else 0,
                   node if isinstance(node, str) and node else None, tuple(devices))


@dataclass(frozen=True)
class _Profile:
    """A DRA profile as counting needs it: its key, its class and its own selector (if any)."""

    key: str
    device_class: str
    selector: str | None


def _profiles(policy: Policy) -> tuple[_Profile, ...]:
    return tuple(_Profile(dra_capacity_key(name), p.dra.deviceClassName, p.dra.selector)
                 for name, p in policy.spec.profiles.items() if p.dra is not None)


def _class_selectors(obj: Mapping[str, Any]) -> tuple[str, ...]:
    """A DeviceClass's CEL selectors, in order; one that is not CEL is an expression that cannot
    compile (a future kind of selector: not known)."""
    return tuple(str(as_dict(as_dict(s).get("cel")).get("expression", "\0"))
                 for s in as_list(as_dict(obj.get("spec")).get("selectors")))


class _Source:
    """One watch's view into the device book (the Book protocol of webhook/cluster/tracker.py)."""

    def __init__(self, apply: Callable[[str, Mapping[str, Any]], None],
                 replace_all: Callable[[Iterable[Mapping[str, Any]]], None], lost: Callable[[], None]) -> None:
        self.apply, self.replace_all, self.lost = apply, replace_all, lost


class DeviceBook:
    """DRA device counts per node and profile, from the slice and class watches; pushes every
    change to ``publish`` (``NodeBook.set_devices``). Thread-safe: two watch threads and a reload.

    ``slices`` and ``classes`` are what the two watches feed (``apply``, ``replace_all``) and
    tell when they fall behind (``lost``)."""

    def __init__(self, policy: Policy, publish: Callable[[dict[str, dict[str, int | None]],
                                                          dict[str, int | None]], None]) -> None:
        self._lock = threading.Lock()          # the book's state; held while counting
        self._publishing = threading.Lock()    # what is published and a reload's pending profiles
        self._publish = publish
        self._selectors = Selectors()
        self._profiles = _profiles(policy)
        self._slices: dict[str, _Slice] = {}
        self._classes: dict[str, tuple[str, ...]] = {}
        self._counts: dict[str, dict[str, int | None]] = {}    # slice name -> key -> count (0s left out)
        self._synced = {"slices": False, "classes": False}
        self._pending: tuple[_Profile, ...] | None = None   # a reload's profiles, not counted yet
        self._published: Devices = ({}, {})
        self.slices = _Source(self._apply_slice, self._replace_slices, lambda: self._lost("slices"))
        self.classes = _Source(self._apply_class, self._replace_classes, lambda: self._lost("classes"))
        with self._lock:
            self._push()

    # -- what the watches and a reload call
    def _apply_slice(self, event: str, obj: Mapping[str, Any]) -> None:
        name = str(metadata(obj).get("name", ""))
        view = None if event == "DELETED" else _Slice.from_object(obj)
        with self._lock:
            self._slices.pop(name, None)
            self._counts.pop(name, None)
            if view is not None:
                self._slices[name] = view
                self._counts[name] = self._count(view)
            self._push()

    def _replace_slices(self, objs: Iterable[Mapping[str, Any]]) -> None:
        views = {str(metadata(o).get("name", "")): _Slice.from_object(o) for o in objs}   # the pages, read first
        with self._lock:
            self._slices, self._synced["slices"] = views, True
            self._recount()

    def _apply_class(self, event: str, obj: Mapping[str, Any]) -> None:
        name = str(metadata(obj).get("name", ""))
        with self._lock:
            before = self._classes.get(name)
            if event == "DELETED":
                self._classes.pop(name, None)
            else:
                self._classes[name] = _class_selectors(obj)
            if self._classes.get(name) != before:
                self._recount()

    def _replace_classes(self, objs: Iterable[Mapping[str, Any]]) -> None:
        classes = {str(metadata(o).get("name", "")): _class_selectors(o) for o in objs}
        with self._lock:
            self._classes, self._synced["classes"] = classes, True
            self._recount()

    def _lost(self, source: str) -> None:
        """A watch failed: its view may be behind until its next list, so nothing is known."""
        with self._lock:
            if self._synced[source]:
                self._synced[source] = False
                self._push()

    def set_policy(self, policy: Policy) -> None:
        """A reload: when the DRA profiles changed, every slice is counted again, on a thread of
        its own (a reload runs on the server's event loop, and counting a large cluster takes
        seconds); meanwhile every DRA count is unknown, never the old profiles' or zero. Takes
        only the short publishing lock, never the one a recount holds."""
        profiles = _profiles(policy)
        with self._publishing:
            if profiles == (self._pending if self._pending is not None else self._profiles):
                return
            self._pending = profiles
            self._published = ({}, {p.key: None for p in profiles})
            self._publish(*self._published)
        threading.Thread(target=self._take_profiles, name="dra recount", daemon=True).start()

    def _take_profiles(self) -> None:
        with self._lock:
            with self._publishing:   # the newest profiles win; a later thread finds none pending
                profiles, self._pending = self._pending, None
            if profiles is not None:
                self._profiles = profiles
                self._recount()

    def devices(self) -> Devices:
        """What was last published: node -> key -> count, and key -> count on every node."""
        return self._published

    # -- counting, under the lock
    def _recount(self) -> None:
        in_use = {e for p in self._profiles for e in (*self._classes.get(p.device_class, ()), p.selector) if e}
        self._selectors.forget_unused(in_use)
        self._counts = {name: self._count(view) for name, view in self._slices.items()}
        self._push()

    def _count(self, view: _Slice) -> dict[str, int | None]:
        """Per profile key, how many of the slice's devices it selects (None: not known); 0s left out."""
        counts: dict[str, int | None] = {}
        by_class: dict[str, list[_Profile]] = {}
        for profile in self._profiles:
            if profile.device_class in self._classes:
                by_class.setdefault(profile.device_class, []).append(profile)
        for device_class, profiles in by_class.items():
            for device in view.devices:
                chosen = None if device is None else self._selectors.matches(self._classes[device_class], device)
                if chosen is False:
                    continue
                for profile in profiles:
                    held = counts.get(profile.key, 0)
                    if held is None:
                        continue   # already unknown on this slice
                    if chosen and profile.selector is not None:
                        assert device is not None   # chosen is None for a device that cannot be evaluated
                        own = self._selectors.matches((profile.selector,), device)
                    else:
                        own = chosen
                    if own is None or own:
                        counts[profile.key] = None if own is None else held + 1
        return counts

    def _push(self) -> None:
        if not all(self._synced.values()):
            devices: dict[str, dict[str, int | None]] = {}
            everywhere: dict[str, int | None] = {p.key: None for p in self._profiles}
        else:
            devices, everywhere = self._totals()
        with self._publishing:
            if self._pending is not None:
                return   # a reload's recount is on its way; until then everything is unknown
            self._published = (devices, everywhere)
            self._publish(devices, everywhere)

    def _totals(self) -> Devices:
        newest: dict[tuple[str, str], int] = {}
        for view in self._slices.values():
            newest[view.pool] = max(newest.get(view.pool, view.generation), view.generation)
        devices: dict[str, dict[str, int | None]] = {}
        everywhere: dict[str, int | None] = {}
        for name, view in self._slices.items():
            if view.generation != newest[view.pool]:
                continue   # an older generation the driver is replacing
            for key, count in self._counts.get(name, {}).items():
                if view.node is None:
                    everywhere[key] = None   # placed by node selection the webhook does not evaluate
                    continue
                held = devices.setdefault(view.node, {}).get(key, 0)
                devices[view.node][key] = None if held is None or count is None else held + count
        return devices, everywhere
