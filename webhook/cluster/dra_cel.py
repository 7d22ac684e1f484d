"""DRA device selectors (CEL) as Kubernetes evaluates them, on cel-python, for the device book.

The scheduler's allocator (k8s.io/dynamic-resource-allocation/cel) gives a selector one
variable, ``device``:

- ``device.driver``: the slice's driver;
- ``device.attributes["<domain>"].<name>``: typed values (string, int, bool, version; lists of
  them with DRAListTypeAttributes). A bare attribute name in a ResourceSlice is qualified with
  the driver as its domain, as Kubernetes does; an unknown domain is an empty map, so
  ``"x" in device.attributes["other.example.com"]`` is false, while reading a missing name is
  an error;
- ``device.capacity["<domain>"].<name>``: quantities;
- ``device.allowMultipleAllocations``.

Kubernetes' ``semver`` and ``quantity`` libraries (``semver("1.2.3")``, ``.isGreaterThan``,
``.compareTo``, ``.major()``...; ``quantity("40Gi")``, ``.isLessThan``, ``.asInteger()``...) and
``includes`` are provided here. What cel-python cannot do (``cel.bind``, the string, list, URL
and IP extensions) fails to evaluate, and :meth:`Selectors.matches` then answers None: *not
known*, never "no". Kubernetes itself fails the allocation when a selector errs on a device.

Compiling costs about a millisecond and evaluating 0.25-1 ms on this machine, so selectors are
compiled once per expression and evaluated only when slices, classes or the policy change
(webhook/cluster/devices.py), never per admission.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from functools import total_ordering
from typing import Any

import celpy
from celpy import celtypes

__all__ = ["DeviceError", "Quantity", "Selectors", "Semver", "device_value"]


class DeviceError(ValueError):
    """A device Kubernetes would not evaluate either (an attribute it cannot convert)."""


# ---------------------------------------------------------------- semver and quantity values
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                     r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
                     r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$")
_NUMBERS = re.compile(r"^([0-9.]*)(.*)$", re.DOTALL)


@total_ordering
class Semver:
    """A semantic version (blang/semver's precedence: build metadata ignored, a pre-release
    below its release, numeric identifiers below alphanumeric ones)."""

    __slots__ = ("_key", "major", "minor", "patch")

    def __init__(self, text: str, normalize: bool = False) -> None:
        if normalize:   # Kubernetes' semver(s, true): a "v" prefix, missing parts, leading zeros
            core, rest = _NUMBERS.match(text.removeprefix("v")).groups()  # type: ignore[union-attr]
            numbers = core.split(".")
            if 1 <= len(numbers) <= 3 and all(n.isascii() and n.isdigit() for n in numbers):
                text = ".".join(str(int(n)) for n in numbers + ["0"] * (3 - len(numbers))) + rest
        found = _SEMVER.match(text)
        if not found:
            raise ValueError(f"{text!r} is not a semantic version")
        self.major, self.minor, self.patch = (int(found.group(i)) for i in (1, 2, 3))
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in (found.group(4) or "").split(".") if p)
        self._key = (self.major, self.minor, self.patch, not pre, pre)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Semver) and self._key == other._key

    def __lt__(self, other: Semver) -> bool:
        return self._key < other._key

    def __hash__(self) -> int:
        return hash(self._key)


class Quantity:
    """A Kubernetes quantity, exact (``kubernetes.utils.quantity.parse_quantity``)."""

    __slots__ = ("value",)

    def __init__(self, value: Decimal) -> None:
        self.value = value

    @classmethod
    def parse(cls, text: str) -> Quantity:
        from kubernetes.utils.quantity import parse_quantity

        return cls(parse_quantity(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Quantity) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)


_INT64 = 2**63


def _string(value: Any) -> str:
    if not isinstance(value, celtypes.StringType):
        raise TypeError("expects a string")
    return str(value)


def _semver(text: Any, normalize: Any = False) -> Semver:
    return Semver(_string(text), bool(normalize))


def _is_semver(text: Any, normalize: Any = False) -> celtypes.BoolType:
    try:
        _semver(text, normalize)
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _quantity(text: Any) -> Quantity:
    return Quantity.parse(_string(text))


def _is_quantity(text: Any) -> celtypes.BoolType:
    try:
        _quantity(text)
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _compare(a: Any, b: Any) -> int:
    if isinstance(a, Quantity) and isinstance(b, Quantity):
        return (a.value > b.value) - (a.value < b.value)
    if isinstance(a, Semver) and isinstance(b, Semver):
        return (a > b) - (a < b)
    raise TypeError("compares two quantities or two versions")


def _quantity_of(value: Any) -> Quantity:
    if not isinstance(value, Quantity):
        raise TypeError("expects a quantity")
    return value


def _operand(value: Any) -> Decimal:
    if isinstance(value, Quantity):
        return value.value
    if isinstance(value, celtypes.IntType) and not isinstance(value, celtypes.BoolType):
        return Decimal(int(value))
    raise TypeError("expects a quantity or an int")


def _as_integer(value: Any) -> celtypes.IntType:
    number = _quantity_of(value).value
    if number != number.to_integral_value() or not -_INT64 <= number < _INT64:
        raise ValueError("not an integer that fits 64 bits")
    return celtypes.IntType(int(number))


def _semver_of(value: Any) -> Semver:
    if not isinstance(value, Semver):
        raise TypeError("expects a version")
    return value


def _includes(target: Any, item: Any) -> celtypes.BoolType:
    return celtypes.BoolType(item in target if isinstance(target, celtypes.ListType) else target == item)


#: Kubernetes' semver, quantity and ``includes`` functions; a call on the wrong type raises,
#: which cel-python turns into an evaluation error (an unknown answer), as CEL's "no such overload".
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "semver": _semver,
    "isSemver": _is_semver,
    "quantity": _quantity,
    "isQuantity": _is_quantity,
    "compareTo": lambda a, b: celtypes.IntType(_compare(a, b)),
    "isGreaterThan": lambda a, b: celtypes.BoolType(_compare(a, b) > 0),
    "isLessThan": lambda a, b: celtypes.BoolType(_compare(a, b) < 0),
    "major": lambda v: celtypes.IntType(_semver_of(v).major),
    "minor": lambda v: celtypes.IntType(_semver_of(v).minor),
    "patch": lambda v: celtypes.IntType(_semver_of(v).patch),
    "sign": lambda q: celtypes.IntType((_quantity_of(q).value > 0) - (_quantity_of(q).value < 0)),
    "isInteger": lambda q: celtypes.BoolType(_quantity_of(q).value == _quantity_of(q).value.to_integral_value()),
    "asInteger": _as_integer,
    "asApproximateFloat": lambda q: celtypes.DoubleType(float(_quantity_of(q).value)),
    "add": lambda q, other: Quantity(_quantity_of(q).value + _operand(other)),
    "sub": lambda q, other: Quantity(_quantity_of(q).value - _operand(other)),
    "includes": _includes,
}


# ---------------------------------------------------------------- the device variable
class _Domains(celtypes.MapType):
    """``device.attributes`` / ``device.capacity``: an unknown domain reads as an empty map."""

    def __getitem__(self, key: Any) -> Any:
        try:
            return super().__getitem__(key)
        except KeyError:
            return celtypes.MapType()


_SCALARS: dict[str, Callable[[Any], Any]] = {
    "string": lambda v: celtypes.StringType(str(v)),
    "int": lambda v: celtypes.IntType(int(v)),
    "bool": lambda v: celtypes.BoolType(bool(v)),
    "version": lambda v: Semver(str(v)),
}
_LISTS = {"strings": "string", "ints": "int", "bools": "bool", "versions": "version"}


def _attribute(value: Any) -> Any:
    """A ResourceSlice attribute (``{"string": "x"}``, ``{"ints": [1, 2]}``...) as a CEL value."""
    if isinstance(value, Mapping):
        for form, convert in _SCALARS.items():
            if value.get(form) is not None:
                return convert(value[form])
        for form, scalar in _LISTS.items():
            if isinstance(value.get(form), list):
                return celtypes.ListType([_SCALARS[scalar](v) for v in value[form]])
    raise DeviceError(f"unsupported attribute value {value!r}")


def _qualified(name: str, driver: str) -> tuple[str, str]:
    domain, sep, rest = name.partition("/")
    return (domain, rest) if sep else (driver, name)


def _domains(entries: Any, driver: str, convert: Callable[[Any], Any]) -> _Domains:
    domains: dict[str, dict[celtypes.StringType, Any]] = {}
    for name, value in (entries or {}).items():
        domain, item = _qualified(str(name), driver)
        try:
            domains.setdefault(domain, {})[celtypes.StringType(item)] = convert(value)
        except (ValueError, TypeError, AttributeError) as err:
            raise DeviceError(f"{name}: {err}") from None
    return _Domains({celtypes.StringType(d): celtypes.MapType(m) for d, m in domains.items()})


def device_value(device: Mapping[str, Any], driver: str) -> celtypes.MapType:
    """The ``device`` variable for one device of a slice of ``driver``; :class:`DeviceError` when
    Kubernetes could not evaluate a selector on it either (a version that is no semver...)."""
    return celtypes.MapType({
        celtypes.StringType("driver"): celtypes.StringType(driver),
        celtypes.StringType("allowMultipleAllocations"):
            celtypes.BoolType(bool(device.get("allowMultipleAllocations"))),
        celtypes.StringType("attributes"): _domains(device.get("attributes"), driver, _attribute),
        celtypes.StringType("capacity"): _domains(device.get("capacity"), driver,
                                                  lambda c: Quantity.parse(str(c["value"]))),
    })


# ---------------------------------------------------------------- compiled selectors
class Selectors:
    """Compiled selector expressions, each compiled once; not thread-safe (one user: the device
    book, under its lock)."""

    def __init__(self) -> None:
        self._env = celpy.Environment()
        self._programs: dict[str, Any] = {}   # expression -> a program, or the compile error's text

    def compile(self, expression: str) -> str | None:
        """None when ``expression`` compiles, else why not."""
        if expression not in self._programs:
            try:
                self._programs[expression] = self._env.program(self._env.compile(expression), functions=FUNCTIONS)
            except Exception as err:  # noqa: BLE001 - any parser failure is "cannot evaluate here"
                self._programs[expression] = f"{type(err).__name__}: {err}"
        program = self._programs[expression]
        return program if isinstance(program, str) else None

    def matches(self, expressions: Sequence[str], device: celtypes.MapType) -> bool | None:
        """Whether the device passes every expression, in order, as the allocator checks a class's
        selectors and then a request's: False at the first that says no; None (not known) at the
        first that cannot be compiled or evaluated, or returns no bool."""
        for expression in expressions:
            if self.compile(expression) is not None:
                return None
            try:
                result = self._programs[expression].evaluate({"device": device})
            except Exception:  # noqa: BLE001 - an evaluation error is an unknown answer, never a "no"
                return None
            if not isinstance(result, celtypes.BoolType):
                return None
            if not result:
                return False
        return True

    def forget_unused(self, expressions: set[str]) -> None:
        """Drop compiled programs no class or profile uses any more (bounded by what is in use)."""
        self._programs = {e: p for e, p in self._programs.items() if e in expressions}
