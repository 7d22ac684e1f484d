"""Version parsing and numeric comparison (airflow_gpu_webhook.validator.versions)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_gpu_webhook.validator.versions import VersionError, cuda_version_from_int, parse_version


@pytest.mark.parametrize(
    ("found", "minimum", "meets"),
    [
        ("535.104.05", "535.104.05", True),
        ("535.104.05", "535.104.5", True),
        ("535.104.05", "535.54.03", True),
        ("535.54.03", "535.104.05", False),
        ("550.54.15", "535", True),
        ("535", "535.0.0", True),
        ("535.0.1", "535", True),
        ("470.82.01", "535.104.05", False),
        ("12.4", "12.10", False),
        ("13.0", "12.8", True),
    ],
    ids=lambda v: str(v),
)
def test_versions_compare_as_numbers_not_strings(found, minimum, meets):
    assert (parse_version(found) >= parse_version(minimum)) is meets


@pytest.mark.parametrize(
    "text",
    ["", "abc", "v535", "535.", ".535", "535..1", "535.104.05-beta", "1 2", "-1", "1.0rc1", "1!2.0", "535+local",
     "\uff15\uff13\uff15"],
    ids=["empty", "letters", "v-prefix", "trailing-dot", "leading-dot", "double-dot", "suffix", "space", "negative",
         "pre-release (PEP 440 accepts it)", "epoch (PEP 440 accepts it)", "local part (PEP 440 accepts it)",
         "full-width digits"],
)
def test_a_malformed_version_is_rejected(text):
    with pytest.raises(VersionError):
        parse_version(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [(12040, "12.4"), (12020, "12.2"), (11080, "11.8"), (13000, "13.0"), (12090, "12.9")],
    ids=lambda v: str(v),
)
def test_nvml_cuda_integer_becomes_major_dot_minor(value, text):
    assert str(cuda_version_from_int(value)) == text


def test_a_zero_cuda_integer_is_not_a_version():
    with pytest.raises(VersionError):
        cuda_version_from_int(0)


def test_equal_versions_with_trailing_zeros_hash_alike():
    assert {parse_version("535"), parse_version("535.0.0")} == {parse_version("535")}


parts = st.lists(st.integers(min_value=0, max_value=999), min_size=1, max_size=4)


@given(parts, parts)
def test_ordering_matches_zero_padded_tuples(a, b):
    width = max(len(a), len(b))
    pa, pb = tuple(a) + (0,) * (width - len(a)), tuple(b) + (0,) * (width - len(b))
    va, vb = parse_version(".".join(map(str, a))), parse_version(".".join(map(str, b)))
    assert (va < vb) == (pa < pb)
    assert (va == vb) == (pa == pb)


@pytest.mark.parametrize("text", ["535.104.05", "550.54.15", "12.4"])
def test_a_version_keeps_its_spelling_for_messages(text):
    assert str(parse_version(text)) == text   # packaging.version would print 535.104.5
