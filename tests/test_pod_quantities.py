"""The core's GPU quantity reader (``core/pod.py`` ``gpu_quantity``) against Kubernetes' own parser.

The core has no quantity parser (it may not import kubernetes: tests/test_layout.py): it reads
only canonical whole counts. Where it accepts a quantity, it must read the value
``kubernetes.utils.quantity.parse_quantity`` reads; every quantity it refuses is listed with the
reason, and with whether Kubernetes' parser would have read a number from it. Only tests import
kubernetes for this.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.utils.quantity import parse_quantity

from airflow_gpu_webhook.core.pod import MAX_QUANTITY_DIGITS, gpu_quantity

ACCEPTED = [
    # (id, quantity): the core reads it, and reads what Kubernetes reads
    ("the JSON integer 0", 0),
    ("the JSON integer 1", 1),
    ("the JSON integer 8", 8),
    ("the largest JSON integer of nine digits", 10 ** MAX_QUANTITY_DIGITS - 1),
    ('"0"', "0"),
    ('"1"', "1"),
    ('"2"', "2"),
    ('"10"', "10"),
    ('the largest string of nine digits, "999999999"', "9" * MAX_QUANTITY_DIGITS),
]

#: (id, quantity, why the core refuses it, does Kubernetes' parser read a number from it?)
REFUSED = [
    ("a suffixed count, 2k", "2k", "a device count has no SI suffix: 2k GPUs is a typo, not 2000", True),
    ("a binary suffix, 1Ki", "1Ki", "a device count has no binary suffix", True),
    ("an exponent, 1e3", "1e3", "not canonical: the API server would store it as 1k", True),
    ("an exponent of zero, 1e0", "1e0", "not canonical: an exponent for a plain count", True),
    ("a fraction, 1.5", "1.5", "extended resources are whole numbers: the API server refuses 1.5 GPUs", True),
    ("a whole number with a decimal point, 1.0", "1.0", "not canonical: a count is digits only", True),
    ("a trailing point, 2.", "2.", "not canonical: a count is digits only", True),
    ("milli-units, 100m", "100m", "a tenth of a device is not a count", True),
    ("milli-units that make a whole, 1000m", "1000m", "not canonical: the API server stores it as 1", True),
    ("a plus sign, +1", "+1", "not canonical: a sign on a count", True),
    ("a negative count, -1", "-1", "a count is never negative", True),
    ("negative zero, -0", "-0", "not canonical: a sign on a count", True),
    ("a leading space", " 1", "not canonical: whitespace in a quantity", True),
    ("a trailing space", "1 ", "not canonical: whitespace in a quantity", True),
    ("a leading zero, 01", "01", "not canonical: the API server stores it as 1", True),
    ("two zeros, 00", "00", "not canonical: the API server stores it as 0", True),
    ("digit separators, 1_000", "1_000", "Python's Decimal reads it; the API server does not", True),
    ("an Arabic-Indic digit one", "\u0661", "only ASCII digits: Python's Decimal reads any Unicode digit", True),
    ("a superscript two", "\u00b2", "only ASCII digits", False),
    ("NaN", "NaN", "not a number: comparisons with it are always false, so no quota could hold it", True),
    ("Infinity", "Infinity", "not a count", True),
    ("inf", "inf", "not a count", True),
    ("hexadecimal, 0x1", "0x1", "not a quantity", False),
    ("the empty string", "", "no count at all", False),
    ("ten digits, 1000000000", "1" + "0" * MAX_QUANTITY_DIGITS,
     "more devices than any node has: at most nine digits are ever read", True),
    ("a thousand-digit string", "9" * 1000, "at most nine digits are ever read (no parse of a huge string)", True),
    ("the JSON integer 10^9", 10 ** MAX_QUANTITY_DIGITS, "more devices than any node has", True),
    ("a huge JSON integer", 10 ** 100, "more devices than any node has", True),
    ("a negative JSON integer", -1, "a count is never negative", True),
    ("the JSON float 1.0", 1.0, "a float is not a count, even a whole one", True),
    ("the JSON float 2.5", 2.5, "a float is not a count", True),
    ("true", True, "a boolean is not a count (bool is an int in Python)", True),
    ("false", False, "a boolean is not a count", True),
    ("null", None, "no count at all", False),
]


def kubernetes_reads(quantity: object) -> Decimal | None:
    """What Kubernetes' Python parser makes of ``quantity``; None when it raises."""
    try:
        return parse_quantity(quantity)
    except (ValueError, TypeError):
        return None


@pytest.mark.parametrize("quantity", [q for _, q in ACCEPTED], ids=[i for i, _ in ACCEPTED])
def test_what_the_core_accepts_it_reads_as_kubernetes_does(quantity):
    value = gpu_quantity(quantity)
    assert value is not None
    assert value == kubernetes_reads(quantity)


@pytest.mark.parametrize(("quantity", "why", "kubernetes_reads_a_number"), [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])
def test_what_the_core_refuses_and_why(quantity, why, kubernetes_reads_a_number):
    assert why
    assert gpu_quantity(quantity) is None
    assert (kubernetes_reads(quantity) is not None) == kubernetes_reads_a_number


@given(st.integers(min_value=0, max_value=10 ** MAX_QUANTITY_DIGITS - 1))
def test_every_canonical_count_reads_as_kubernetes_reads_it(count):
    assert gpu_quantity(count) == gpu_quantity(str(count)) == kubernetes_reads(str(count)) == count


@given(st.text(alphabet="0123456789.+-eEkKmMi ", max_size=6))
def test_the_core_accepts_a_string_only_where_it_agrees_with_kubernetes(text):
    value = gpu_quantity(text)
    if value is not None:
        assert text == str(value) and value == kubernetes_reads(text)
