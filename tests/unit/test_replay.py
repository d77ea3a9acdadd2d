"""The replay's scoring and figures, without a database: a fake model, rows made here."""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from berth_api.bundles.bundle import BundleMetadata, FeatureSpec
from berth_api.errors import FieldError, UnpredictableInput
from berth_api.ledger.replay import (
    MAX_SKIP_REASONS,
    OTHER_REASONS,
    CandidateScorer,
    Progress,
    ReplayReport,
    StoredRow,
    VersionReplay,
    agrees,
    render,
    same_label,
)
from berth_api.serving.predictor import ModelOutput

REFUSED = 666.0


def metadata(task: str) -> BundleMetadata:
    return BundleMetadata(
        name="m",
        version="2",
        created_at=datetime.now(UTC),
        task=task,  # type: ignore[arg-type]
        estimator="X",
        features=[FeatureSpec(name="x", type="number"), FeatureSpec(name="y", type="number")],
        classes=["low", "high"] if task == "classification" else None,
        python_version="3.11",
        sklearn_version="1",
        joblib_version="1",
        sha256="0" * 64,
    )


class ThresholdModel:
    """Answers "high" when x + y > 10; refuses, as the API's predictor does, any batch that holds
    a row with x == REFUSED."""

    engine = "fake"

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, rows: list[list[Any]]) -> list[ModelOutput]:
        self.calls += 1
        if any(row[0] == REFUSED for row in rows):
            raise UnpredictableInput("refused", [FieldError("instances", "refused by the model")])
        return [ModelOutput("high" if x + y > 10 else "low", None) for x, y in rows]


def stored(x: Any, y: Any, served: Any, actual: Any = None, version: str = "1") -> StoredRow:
    return StoredRow(version, {"x": x, "y": y}, served, actual)


def test_labels_are_equal_as_json_values() -> None:
    assert same_label("a", "a")
    assert same_label(1, 1.0)
    assert not same_label(True, 1)
    assert not same_label("1", 1)
    assert not same_label("a", None)


def test_regressors_agree_within_the_tolerance() -> None:
    assert agrees("regression", 100.0, 100.0)
    assert agrees("regression", 100.0009, 100.0)  # 9e-6 of 100
    assert not agrees("regression", 100.002, 100.0)
    assert agrees("regression", 5e-6, 0.0)  # near zero the tolerance is absolute
    assert not agrees("regression", 2e-5, 0.0)
    assert not agrees("regression", 1.0, "1")
    assert not agrees("regression", math.nan, math.nan)
    assert agrees("classification", "high", "high")
    assert not agrees("classification", 1.0, 1.00001)


def test_rows_are_scored_or_skipped_with_the_reason() -> None:
    model = ThresholdModel()
    scorer = CandidateScorer(metadata("classification"), model, max_string_length=100)
    batch = [
        stored(1, 2, "low", actual="low"),
        stored(REFUSED, 2, "low"),
        stored(8, 8, "low", actual="high"),
        stored("8", 8, "high"),  # a value of another type
        StoredRow("0", {"x": 1, "z": 2}, "low", None),  # another feature set
        stored(9, 9, "high", actual="low"),
        stored(0, 0, "low"),
    ]
    tallies: dict[str, VersionReplay] = {}
    scorer.score(batch, tallies)

    one, zero = tallies["1"], tallies["0"]
    assert (one.rows, one.agreed, one.skipped) == (4, 3, 2)
    assert one.skip_reasons == {"model: refused by the model": 1, "features: x must be a number": 1}
    assert (one.labelled, one.served_correct, one.candidate_correct) == (3, 1, 2)
    assert (zero.rows, zero.skipped) == (0, 1)
    assert zero.skip_reasons == {"features: unknown feature names: 'z'; missing features: y": 1}
    # the refused row was found by halving the batch, not by calling the model once a row
    assert model.calls < 10


def test_skip_reasons_are_bounded() -> None:
    tally = VersionReplay("1")
    for i in range(MAX_SKIP_REASONS + 5):
        tally.skip(f"reason {i}")
    tally.skip("reason 0")
    assert tally.skipped == MAX_SKIP_REASONS + 6
    assert len(tally.skip_reasons) == MAX_SKIP_REASONS + 1
    assert tally.skip_reasons[OTHER_REASONS] == 5
    assert tally.skip_reasons["reason 0"] == 2


def test_regression_errors_are_on_the_labelled_rows() -> None:
    tally = VersionReplay("1")
    tally.add("regression", 12.0, 10.0, 11.0)
    tally.add("regression", 5.0, 5.0, 8.0)
    tally.add("regression", 5.0, 5.0, None)
    tally.add("regression", 5.0, 5.0, "unknown")
    figures = tally.figures("regression")
    assert (figures["rows"], figures["agreed"], figures["labelled"]) == (4, 3, 2)
    assert figures["served_mae"] == pytest.approx((1 + 3) / 2)
    assert figures["candidate_mae"] == pytest.approx((1 + 3) / 2)
    assert figures["served_rmse"] == pytest.approx(math.sqrt((1 + 9) / 2))
    assert figures["served_correct"] is None
    assert VersionReplay("1").figures("regression")["served_mae"] is None


def test_progress_is_written_at_most_every_interval() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream, 3000, "replay m/2", interval=2.0, clock=lambda: now[0])
    for _ in range(3):
        now[0] += 1.0
        progress.advance(1000)
    progress.finish()
    assert stream.getvalue().splitlines() == [
        "replay m/2: 2,000 / 3,000 rows (67%), 1,000 rows/s, 2.0 s",
        "replay m/2: 3,000 / 3,000 rows (100%), 1,000 rows/s, 3.0 s",
    ]


def report(task: str, versions: list[VersionReplay]) -> ReplayReport:
    started = datetime(2026, 12, 1, tzinfo=UTC)
    return ReplayReport(
        replay_id="r1",
        model_name="m",
        candidate_version="2",
        task=task,  # type: ignore[arg-type]
        engine="scikit-learn",
        since=started - timedelta(days=1),
        until=None,
        started_at=started,
        finished_at=started + timedelta(seconds=2),
        versions=versions,
    )


def test_the_table_says_what_the_figures_say() -> None:
    tally = VersionReplay("1", rows=1000, agreed=950, labelled=400)
    tally.served_correct, tally.candidate_correct = 360, 380
    tally.skip("features: unknown feature names: 'z'")
    text = render(report("classification", [tally]))
    lines = text.splitlines()
    assert lines[1] == "  2026-11-30T00:00:00+00:00 .. now; 1,001 rows read in 2.0 s"
    assert lines[2].split() == [
        "served", "by", "rows", "agreed", "agreement", "skipped", "labelled", "served", "acc.",
        "candidate", "acc.",
    ]  # fmt: skip
    assert lines[3].split() == ["1", "1,000", "950", "95.0%", "1", "400", "90.0%", "95.0%"]
    assert lines[-1] == "    served by 1: 1 x features: unknown feature names: 'z'"

    regression = VersionReplay("1")
    regression.add("regression", 12.0, 10.0, 11.0)
    text = render(report("regression", [regression]))
    assert text.splitlines()[3].split() == ["1", "1", "0", "0.0%", "0", "1", "1", "1", "1", "1"]
    assert "agrees within 1e-05 x max(1, |served value|)" in text
    assert "no stored rows of m" in render(report("regression", []))
