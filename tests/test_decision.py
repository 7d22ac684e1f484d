"""Decision values: reasons as a closed enum whose strings are the wire and metric labels."""

from __future__ import annotations

import pytest

from airflow_gpu_webhook.core.decision import Decision, Reason, Violation

DENIED = Violation(Reason.UNKNOWN_PROFILE, "no such profile")


@pytest.mark.parametrize("member, text", [
    (Reason.MUTATED, "mutated"),
    (Reason.ALREADY_VOIDED, "already-voided"),
    (Reason.QUOTA_EXCEEDED, "quota-exceeded"),
    (Reason.USAGE_NOT_SYNCED, "usage-not-synced"),
    (Reason.INTERNAL_ERROR, "internal-error"),
], ids=lambda v: str(v))
def test_a_reason_is_its_stable_string_in_comparisons_formatting_and_labels(member, text):
    assert member == text and str(member) == text and f"{member}" == text and Reason(text) is member


def test_every_reason_is_a_lower_case_hyphenated_code():
    assert all(r.value == r.name.lower().replace("_", "-") for r in Reason)


CASES = [
    ("a denial let through by warn keeps its reason, is marked warned, and is allowed without message",
     Decision.deny([DENIED]).as_warning(),
     dict(allowed=True, reason=Reason.UNKNOWN_PROFILE, warned=True, label="warned:unknown-profile", message="")),
    ("an allow stays as it is under warn",
     Decision.allow(Reason.MUTATED).as_warning(),
     dict(allowed=True, reason=Reason.MUTATED, warned=False, label="mutated")),
    ("a denial takes the first violation's reason and joins the messages",
     Decision.deny([DENIED, Violation(Reason.NO_TENANT, "no tenant")]),
     dict(allowed=False, reason=Reason.UNKNOWN_PROFILE, message="no such profile; no tenant", code=403)),
    ("an error is a 500 denial with reason internal-error",
     Decision.error("boom"), dict(allowed=False, reason=Reason.INTERNAL_ERROR, code=500, label="internal-error")),
]


@pytest.mark.parametrize("description, decision, expected", CASES, ids=[c[0] for c in CASES])
def test_decisions(description, decision, expected):
    assert {key: getattr(decision, key) for key in expected} == expected


def test_a_warned_decision_differs_from_the_plain_allow_of_the_same_reason():
    assert Decision.deny([DENIED]).as_warning() != Decision(True, Reason.UNKNOWN_PROFILE)


def test_a_plain_allow_is_one_shared_value_per_reason():
    assert Decision.allow(Reason.UNLABELLED) is Decision.allow(Reason.UNLABELLED)
