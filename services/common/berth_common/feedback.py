"""What a true outcome (an "actual") may be for a served row, decided the same way by the API,
which answers the client, and by the worker, which checks again what the API could not.

A classifier's actual must be one of the model's classes, and is kept as that class, typed as the
model's classes are: a text form is accepted where the class is a number or a boolean ("1" for
class 1, "true" for class True), and a number where the class is text that reads as that number
(1 for class "1"), because CSV has no types and JSON clients often send labels either way. A
boolean is never a number. A value that matches two classes (1 when the classes are 1 and "1")
must match one of them exactly. A regressor's actual is a finite number, or text that reads as
one, kept as a number.

When the model version's classes are not known (no `model_versions` row for it), the kind of
answer the model gave stands in for them: an actual must be of the predicted label's kind: text
for text labels, and for numbers or booleans the value or a text form of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Actual = str | int | float | bool
Task = Literal["classification", "regression"]

# The classes named in a refusal, at most.
_CLASSES_SHOWN = 10


class ActualRefused(ValueError):
    """The value cannot be an outcome of the model that served the row; the message says why,
    without quoting the value."""


@dataclass(frozen=True, slots=True)
class OutcomeSpec:
    """What a model version answers: its task and, for a classifier, its classes when known, or
    else an answer it gave (`like`), whose kind stands in for them."""

    task: Task
    classes: tuple[Actual, ...] | None = None
    like: Any = None


def infer_spec(
    task: str | None, classes: Sequence[Any] | None, prediction: Any, has_probabilities: bool
) -> OutcomeSpec:
    """The spec from a `model_versions` row (task, classes) when there is one; otherwise inferred
    from a stored prediction, as the quality views infer it: a classifier when it answered
    probabilities or a label that is not a number, a regressor otherwise."""
    if task == "classification":
        return OutcomeSpec("classification", tuple(classes) if classes else None, prediction)
    if task == "regression":
        return OutcomeSpec("regression")
    if has_probabilities or not _is_number(prediction):
        return OutcomeSpec("classification", None, prediction)
    return OutcomeSpec("regression")


def normalize_actual(value: Any, spec: OutcomeSpec) -> Actual:
    """The actual as it is stored, or ActualRefused."""
    if value is None or isinstance(value, list | dict):
        raise ActualRefused("an actual is a single label or number")
    if isinstance(value, str) and "\x00" in value:
        # PostgreSQL's text and jsonb cannot hold it
        raise ActualRefused("the actual holds a NUL character")
    if spec.task == "regression":
        return _number(value, "a regressor's actual must be a finite number")
    if spec.classes is not None:
        return _class_of(value, spec.classes)
    return _like(value, spec.like)


def same_actual(a: Any, b: Any) -> bool:
    """Whether two stored actuals are the same value: numbers by value (1 and 1.0), a boolean
    never a number, as PostgreSQL compares jsonb."""
    return _kind(a) == _kind(b) and bool(a == b)


def _class_of(value: Actual, classes: Sequence[Actual]) -> Actual:
    matches = [c for c in classes if _matches(value, c)]
    exact = [c for c in matches if _kind(c) == _kind(value)]
    if len(matches) == 1:
        return matches[0]
    if len(exact) == 1:
        return exact[0]
    if matches:
        raise ActualRefused("the actual matches several of the model's classes; send it typed")
    shown = ", ".join(str(c) for c in classes[:_CLASSES_SHOWN])
    more = f" and {len(classes) - _CLASSES_SHOWN} more" if len(classes) > _CLASSES_SHOWN else ""
    raise ActualRefused(f"the actual is not one of the model's classes ({shown}{more})")


def _like(value: Actual, like: Any) -> Actual:
    kind = _kind(like)
    if kind == "text":
        if isinstance(value, str):
            return value
        raise ActualRefused("the model answers text labels; send the label as text")
    if kind == "boolean":
        parsed = _boolean(value)
        if parsed is None:
            raise ActualRefused("the model answers true or false")
        return parsed
    return _number(value, "the model answers numeric labels; send a number")


def _matches(value: Actual, cls: Actual) -> bool:
    value_kind, class_kind = _kind(value), _kind(cls)
    if value_kind == class_kind:
        return value == cls
    if value_kind == "text" and class_kind == "number":
        return _reads_as(str(value), cls)
    if value_kind == "number" and class_kind == "text":
        return _reads_as(str(cls), value)
    if value_kind == "text" and class_kind == "boolean":
        return _boolean(value) is cls
    if value_kind == "boolean" and class_kind == "text":
        return _boolean(cls) is value
    return False  # a boolean is never a number


def _reads_as(text: str, number: Any) -> bool:
    try:
        return bool(_parse_number(text) == number)
    except ActualRefused:
        return False


def _number(value: Actual, message: str) -> int | float:
    if isinstance(value, bool):
        raise ActualRefused(message)
    try:
        number = _parse_number(value) if isinstance(value, str) else value
    except ActualRefused:
        raise ActualRefused(message) from None
    try:
        finite = math.isfinite(float(number))
    except OverflowError:
        finite = False
    if not finite:
        raise ActualRefused(message)
    return number


def _parse_number(text: str) -> int | float:
    stripped = text.strip()
    try:
        return int(stripped)
    except ValueError:
        pass
    try:
        number = float(stripped)
    except ValueError:
        raise ActualRefused("the actual is not a number") from None
    if not math.isfinite(number):
        raise ActualRefused("the actual is not a finite number")
    return number


def _boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.strip().lower())
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    return type(value).__name__
