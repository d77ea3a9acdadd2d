"""Turns JSON instances into model rows, checking each value against the bundle's features.

Everything a client can get wrong about a row is caught here, before the model sees it, and
reported per field (`instances[0].petal_length`), so that bad input is a 422 that names the
problem rather than whatever exception scikit-learn would raise deep inside predict().
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from berth_api.bundles.bundle import BundleMetadata, FeatureSpec
from berth_api.errors import FieldError, InvalidInput

Value = str | int | float | bool
MAX_REPORTED_ERRORS = 20
# What an integer feature can hold: the models and the ONNX graphs compute in 64 bits.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def rows_from_instances(
    metadata: BundleMetadata, instances: Sequence[Any], *, max_rows: int, max_string_length: int
) -> list[list[Value]]:
    if not instances:
        raise InvalidInput(
            "instances must hold at least one row", [FieldError("instances", "empty")]
        )
    if len(instances) > max_rows:
        raise InvalidInput(
            f"{len(instances)} rows sent; at most {max_rows} are allowed per request",
            [FieldError("instances", f"at most {max_rows} rows")],
        )
    errors: list[FieldError] = []
    width = len(metadata.features) if _all_numbers(metadata.features) else 0
    rows = [
        instance
        if width and _finite_floats(instance, width)
        else _row(metadata.features, instance, f"instances[{i}]", errors, max_string_length)
        for i, instance in enumerate(instances)
    ]
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        detail = "; ".join(f"{e.field}: {e.message}" for e in shown[:3])
        if len(errors) > 3:
            detail += f" (and {len(errors) - 3} more)"
        raise InvalidInput(detail, shown)
    return rows


def _all_numbers(features: list[FeatureSpec]) -> bool:
    return all(spec.type == "number" for spec in features)


def _finite_floats(instance: Any, width: int) -> bool:
    """Whether a row is already what `_row` would make of it: a list of `width` finite floats,
    the usual row of a numeric model, which then needs no check value by value (a tenth of the
    API's time on a 100-row request). Any other row, ints included, takes `_row`."""
    return (
        type(instance) is list
        and len(instance) == width
        and all(type(value) is float for value in instance)
        # a NaN or an infinity makes the sum one; so can finite values whose sum overflows,
        # which `_row` then accepts one by one
        and math.isfinite(sum(instance))
    )


def _row(
    features: list[FeatureSpec],
    instance: Any,
    where: str,
    errors: list[FieldError],
    max_string_length: int,
) -> list[Value]:
    if isinstance(instance, list):
        if len(instance) != len(features):
            names = ", ".join(f.name for f in features)
            errors.append(
                FieldError(where, f"expected {len(features)} values ({names}), got {len(instance)}")
            )
            return []
        return [
            _value(spec, value, f"{where}[{i}]", errors, max_string_length)
            for i, (spec, value) in enumerate(zip(features, instance, strict=True))
        ]
    if isinstance(instance, dict):
        known = {f.name for f in features}
        unknown = sorted(k for k in instance if k not in known)
        missing = [f.name for f in features if f.name not in instance]
        if unknown:
            shown = ", ".join(repr(k[:64]) for k in unknown[:10])
            errors.append(FieldError(where, f"unknown feature names: {shown}"))
        if missing:
            errors.append(FieldError(where, f"missing features: {', '.join(missing)}"))
        if unknown or missing:
            return []
        return [
            _value(spec, instance[spec.name], f"{where}.{spec.name}", errors, max_string_length)
            for spec in features
        ]
    errors.append(
        FieldError(where, "each instance must be a list of values or an object keyed by feature")
    )
    return []


def _value(
    spec: FeatureSpec, value: Any, where: str, errors: list[FieldError], max_string_length: int
) -> Value:
    if spec.type == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(FieldError(where, f"{spec.name} must be a number"))
            return 0.0
        try:
            number = float(value)
        except OverflowError:  # an integer written out with hundreds of digits
            errors.append(
                FieldError(where, f"{spec.name} is out of range for a number (at most ~1.8e308)")
            )
            return 0.0
        if not math.isfinite(number):
            errors.append(FieldError(where, f"{spec.name} must be a finite number"))
        return number
    if spec.type == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(FieldError(where, f"{spec.name} must be an integer"))
            return 0
        if not INT64_MIN <= value <= INT64_MAX:
            errors.append(FieldError(where, f"{spec.name} is out of range for a 64-bit integer"))
            return 0
        return value
    if spec.type == "boolean":
        if not isinstance(value, bool):
            errors.append(FieldError(where, f"{spec.name} must be true or false"))
            return False
        return value
    if not isinstance(value, str):
        errors.append(FieldError(where, f"{spec.name} must be a string"))
        return ""
    if len(value) > max_string_length:
        errors.append(
            FieldError(where, f"{spec.name} is longer than {max_string_length} characters")
        )
    elif "\x00" in value:
        # PostgreSQL's jsonb cannot store U+0000; refused here, the record could never be stored
        errors.append(FieldError(where, f"{spec.name} must not contain NUL characters"))
    return value
