from __future__ import annotations

import math
from typing import Any

import pytest

from berth_api.bundles.bundle import BundleMetadata
from berth_api.errors import InvalidInput
from berth_api.serving.features import rows_from_instances
from tests.factories import make_metadata

metadata = make_metadata
IRIS = metadata(("a", "number"), ("b", "number"))
MIXED = metadata(("age", "integer"), ("plan", "string"), ("active", "boolean"))


def rows(meta: BundleMetadata, instances: list[Any], max_rows: int = 10) -> list[list[Any]]:
    return rows_from_instances(meta, instances, max_rows=max_rows, max_string_length=5)


def test_lists_and_objects_give_the_same_row() -> None:
    assert rows(IRIS, [[1, 2.5], {"b": 2.5, "a": 1}]) == [[1.0, 2.5], [1.0, 2.5]]


def test_mixed_types_are_checked_per_feature() -> None:
    assert rows(MIXED, [{"age": 3.0, "plan": "pro", "active": True}]) == [[3, "pro", True]]


def errors_of(meta: BundleMetadata, instances: list[Any], max_rows: int = 10) -> dict[str, str]:
    with pytest.raises(InvalidInput) as info:
        rows(meta, instances, max_rows)
    return {e.field: e.message for e in info.value.errors}


@pytest.mark.parametrize(
    ("instances", "field", "message"),
    [
        ([[1.0]], "instances[0]", "expected 2 values (a, b), got 1"),
        ([[1.0, 2.0, 3.0]], "instances[0]", "got 3"),
        ([[1.0, "x"]], "instances[0][1]", "b must be a number"),
        ([[1.0, True]], "instances[0][1]", "b must be a number"),
        ([[1.0, None]], "instances[0][1]", "b must be a number"),
        ([[math.nan, 1.0]], "instances[0][0]", "a must be a finite number"),
        ([[1.0, math.inf]], "instances[0][1]", "b must be a finite number"),
        ([{"a": 1, "b": 2, "zz": 3}], "instances[0]", "unknown feature names: 'zz'"),
        ([{"a": 1}], "instances[0]", "missing features: b"),
        (["nope"], "instances[0]", "each instance must be a list"),
        ([], "instances", "empty"),
    ],
)
def test_bad_rows_name_the_field(instances: list[Any], field: str, message: str) -> None:
    found = errors_of(IRIS, instances)
    assert field in found, found
    assert message in found[field]


def test_too_many_rows_are_refused_before_validation() -> None:
    found = errors_of(IRIS, [[1, 2]] * 4, max_rows=3)
    assert found == {"instances": "at most 3 rows"}


def test_mixed_type_errors() -> None:
    found = errors_of(MIXED, [{"age": 1.5, "plan": "toolong", "active": 1}])
    assert found == {
        "instances[0].age": "age must be an integer",
        "instances[0].plan": "plan is longer than 5 characters",
        "instances[0].active": "active must be true or false",
    }


def test_nul_characters_are_refused() -> None:
    assert errors_of(MIXED, [{"age": 1, "plan": "a\x00b", "active": True}]) == {
        "instances[0].plan": "plan must not contain NUL characters"
    }


def test_errors_never_echo_the_submitted_value() -> None:
    with pytest.raises(InvalidInput) as info:
        rows(IRIS, [[1.0, "secret-value-123"]])
    assert "secret-value-123" not in info.value.detail
    assert all("secret-value-123" not in e.message for e in info.value.errors)


def test_rows_of_plain_floats_are_what_the_checks_would_make_of_them() -> None:
    # rows of finite floats skip the per-value checks: they must come out as the checks give them
    instances: list[Any] = [[5.1, 3.5], [1e308, 1e308], [-0.0, 2.0**-1074]]
    assert rows(IRIS, instances) == [[5.1, 3.5], [1e308, 1e308], [-0.0, 2.0**-1074]]
    assert rows(IRIS, [[1e308, 1e308], [1, 2.0]]) == [[1e308, 1e308], [1.0, 2.0]]
    # and a NaN or an infinity among floats is still refused, by name
    found = errors_of(IRIS, [[5.1, 3.5], [-math.inf, 1.0], [2.0, math.nan]])
    assert found == {
        "instances[1][0]": "a must be a finite number",
        "instances[2][1]": "b must be a finite number",
    }
