"""The dashboard's time grid and the training reference's quantiles, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from berth_api.dashboard.figures import (
    DAYS,
    MAX_MINUTES,
    MAX_POINTS,
    Window,
    label_text,
    reference_quantile,
)

UNTIL = datetime(2026, 12, 1, 10, 30, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("minutes", "step"), [(5, 60), (60, 60), (120, 60), (360, 180), (1440, 720), (10080, 5040)]
)
def test_the_step_keeps_a_chart_within_its_points(minutes: int, step: int) -> None:
    window = Window(minutes, UNTIL)
    assert window.step_seconds == step
    assert len(window.buckets) <= MAX_POINTS + 1


def test_buckets_start_at_multiples_of_the_step_and_cover_the_window() -> None:
    window = Window(60, UNTIL)
    buckets = window.buckets
    assert all(b % 60 == 0 for b in buckets)
    assert buckets[0] <= window.since.timestamp() < buckets[0] + 60
    assert buckets[-1] <= UNTIL.timestamp() < buckets[-1] + 60
    assert window.since == UNTIL - timedelta(hours=1)
    assert Window(MAX_MINUTES, UNTIL).buckets[1] - Window(MAX_MINUTES, UNTIL).buckets[0] == 5040


def test_the_days_are_the_last_fortnight_in_utc() -> None:
    late_evening_elsewhere = datetime(2026, 12, 1, 1, 0, tzinfo=UTC).astimezone()
    days = Window(60, late_evening_elsewhere).days
    assert len(days) == DAYS
    assert days[-1] == UNTIL.date()
    assert days[0] == UNTIL.date() - timedelta(days=DAYS - 1)


def bins(*specs: tuple[float | None, float | None, object, float]) -> list[SimpleNamespace]:
    return [SimpleNamespace(lower=lo, upper=up, category=c, expected=e) for lo, up, c, e in specs]


def test_reference_quantiles_interpolate_inside_their_bin() -> None:
    reference = bins((None, 1.0, None, 0.25), (1.0, 2.0, None, 0.5), (2.0, None, None, 0.25))
    assert reference_quantile(reference, 0.1) == 1.0  # unbounded below: its one bound
    assert reference_quantile(reference, 0.5) == pytest.approx(1.5)
    assert reference_quantile(reference, 0.3) == pytest.approx(1.1)
    assert reference_quantile(reference, 0.9) == 2.0  # unbounded above: its one bound


def test_categories_and_the_catch_all_bin_have_no_quantile() -> None:
    assert reference_quantile([], 0.5) is None
    assert reference_quantile(bins((None, None, "a", 0.5), (None, None, None, 0.5)), 0.5) is None


def test_labels_read_as_sql_writes_them() -> None:
    assert [label_text(v) for v in ("setosa", 1, 2.5, True)] == ["setosa", "1", "2.5", "true"]
