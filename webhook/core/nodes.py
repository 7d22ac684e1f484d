"""Can any node ever hold this pod? Pure: node facts in, a verdict out.

A pod that asks for more of a GPU resource than any node of its pool offers sits Pending until
Airflow's start-up timeout. The webhook knows better at admission: it keeps the nodes' labels,
taints and allocatable (:class:`NodeBook`, fed by a watch like the pod watch) and refuses a GPU
pod whose node selector and tolerations match no node able to hold ``count`` units, naming what
exists instead. A pool that autoscales from zero has no nodes to look at: its profile says
``scaleFromZero: true`` and the verdict is then a warning. Until the node watch has synced, the
webhook only warns: it never denies on a guess.

A DRA profile's units are counted from ResourceSlices (webhook/cluster/devices.py) under the
profile's own key (``dra_capacity_key``) and merged into the offers with
:meth:`NodeBook.set_devices`. A count that could not be known there (a selector the webhook
cannot evaluate, slices not read yet) is listed in the offer's ``unknown``: such a node might
fit, so the verdict never denies past it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .decision import Reason, Violation
from .pod import as_dict, as_list, gpu_quantity, metadata, spec

__all__ = ["NodeBook", "NodeOffer", "capacity_verdict", "tolerates"]

_BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


@dataclass(frozen=True)
class NodeOffer:
    """What scheduling needs of one node: labels, blocking taints, allocatable GPU units, and
    the keys whose count is not known there (``unknown``: the node may hold any number)."""

    name: str
    labels: Mapping[str, str]
    taints: tuple[Mapping[str, Any], ...]
    allocatable: Mapping[str, int]
    unknown: frozenset[str] = frozenset()

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> NodeOffer:
        meta = metadata(node)
        allocatable = {k: int(q) for k, v in as_dict(as_dict(node.get("status")).get("allocatable")).items()
                       if k.startswith("nvidia.com/") and (q := gpu_quantity(v)) is not None}
        taints = tuple(t for t in as_list(spec(node).get("taints"))
                       if isinstance(t, dict) and t.get("effect") in _BLOCKING_EFFECTS)
        return cls(str(meta.get("name", "")), dict(as_dict(meta.get("labels"))), taints, allocatable)


def _tolerates_one(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", "")


def tolerates(tolerations: Sequence[Mapping[str, Any]], taints: tuple[Mapping[str, Any], ...]) -> bool:
    """Every NoSchedule/NoExecute taint is tolerated (the scheduler's rule)."""
    return all(any(_tolerates_one(t, taint) for t in tolerations) for taint in taints)


def capacity_verdict(pod: Mapping[str, Any], resource: str, count: int, offers: Sequence[NodeOffer],
                     scale_from_zero: bool, keys: tuple[str, ...] = ()) -> tuple[Violation | None, str | None]:
    """(denial, warning) for a final pod asking ``count`` x ``resource``; both None when a node fits.

    ``keys``: where a node offer counts such units (default: ``resource`` itself, the device
    plugin's allocatable); a DRA profile's are counted from ResourceSlices under its own key.
    """
    selector = as_dict(spec(pod).get("nodeSelector"))
    tolerations = [t for t in as_list(spec(pod).get("tolerations")) if isinstance(t, dict)]
    pool = [o for o in offers if all(o.labels.get(k) == v for k, v in selector.items())
            and tolerates(tolerations, o.taints)]
    keys = keys or (resource,)
    largest = max((o.allocatable.get(key, 0) for o in pool for key in keys), default=0)
    if largest >= count or any(key in o.unknown for o in pool for key in keys):
        return None, None   # a node fits, or one whose count is unknown might: never deny on a guess
    where = ", ".join(f"{k}={v}" for k, v in sorted(selector.items())) or "any node"
    if not pool and scale_from_zero:
        return None, (f"no node matches {where} yet; the pool scales from zero, so the pod waits for "
                      f"a {count} x {resource} node to be added")
    instead = (f"the largest offers {largest}" if pool else
               "no node matches that selector and tolerations at all")
    return Violation(Reason.NO_NODE_FITS, f"no node offers {count} x {resource} with {where}; {instead}; "
                                          f"ask for fewer or another profile"), None


class NodeBook:
    """The nodes the watch has seen, as offers; thread-safe. Same interface as the usage book.

    ``offers()`` is on the path of every validating request, so it returns a snapshot built when
    the nodes change (rarely), not a copy per request.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeOffer] = {}
        self._devices: Mapping[str, Mapping[str, int | None]] = {}
        self._everywhere: Mapping[str, int | None] = {}
        self._snapshot: tuple[NodeOffer, ...] = ()

    def apply(self, event: str, node: Mapping[str, Any]) -> None:
        offer = NodeOffer.from_node(node)
        with self._lock:
            if event == "DELETED":
                self._nodes.pop(offer.name, None)
            else:
                self._nodes[offer.name] = offer
            self._rebuild()

    def replace_all(self, nodes: Iterable[Mapping[str, Any]]) -> None:
        offers = [NodeOffer.from_node(n) for n in nodes]
        with self._lock:
            self._nodes = {o.name: o for o in offers}
            self._rebuild()

    def set_devices(self, devices: Mapping[str, Mapping[str, int | None]],
                    everywhere: Mapping[str, int | None] | None = None) -> None:
        """Replace the DRA device counts: node name -> key -> devices there, and ``everywhere``:
        key -> devices added on every node. None is a count not known (on that node, or on every
        node); a key absent from both counts 0. The node watch's own allocatable is kept apart,
        so either side may change without the other."""
        copied = {name: dict(counts) for name, counts in devices.items()}
        with self._lock:
            self._devices, self._everywhere = copied, dict(everywhere or {})
            self._rebuild()

    def _rebuild(self) -> None:
        self._snapshot = tuple(self._with_devices(o) for o in self._nodes.values())

    def _with_devices(self, offer: NodeOffer) -> NodeOffer:
        here = self._devices.get(offer.name, {})
        if not here and not self._everywhere:
            return offer
        counts: dict[str, int] = {}
        unknown: set[str] = set()
        for key in {*here, *self._everywhere}:
            local, shared = here.get(key, 0), self._everywhere.get(key, 0)
            if local is None or shared is None:
                unknown.add(key)
            else:
                counts[key] = local + shared
        return replace(offer, allocatable={**offer.allocatable, **counts}, unknown=frozenset(unknown))

    def offers(self) -> tuple[NodeOffer, ...]:
        return self._snapshot
