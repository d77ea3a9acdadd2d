"""How a model is timed when it is loaded, and which models' answers are cached: timed on a clock
the test model advances, so the figures are exact and the test does not depend on the machine's
speed."""

from __future__ import annotations

import pytest

from berth_api.bundles.bundle import BundleMetadata
from berth_api.errors import UnpredictableInput
from berth_api.serving import timing
from berth_api.serving.cache_policy import CachePolicy, decide
from berth_api.serving.features import Value
from berth_api.serving.predictor import ModelOutput
from berth_api.serving.timing import ModelTiming, time_model
from tests.factories import make_metadata

MIN_ROW = 20e-6  # CACHE_MIN_ROW_US=20
BATCH = 64


class TimedModel:
    """A model whose call takes `fixed` seconds plus `per_row` seconds a row on the test's clock
    (`first` more the first time), and which remembers how many rows each call had."""

    engine = "test"

    def __init__(
        self, fixed: float, per_row: float, first: float = 0.0, fails: bool = False
    ) -> None:
        self.now = 0.0
        self.calls: list[int] = []
        self._fixed, self._per_row, self._first, self._fails = fixed, per_row, first, fails

    def clock(self) -> float:
        return self.now

    def predict(self, rows: list[list[Value]]) -> list[ModelOutput]:
        self.now += self._fixed + self._per_row * len(rows) + (0 if self.calls else self._first)
        self.calls.append(len(rows))
        if self._fails:
            raise UnpredictableInput("the model refused the row")
        return [ModelOutput(label="a", probabilities=None) for _ in rows]


def metadata(example: dict[str, float | str] | None = None) -> BundleMetadata:
    return make_metadata(("a", "number"), ("b", "number"), example=example)


EXAMPLE = {"a": 1.0, "b": 2.0}


def policy(
    model: TimedModel,
    monkeypatch: pytest.MonkeyPatch,
    meta: BundleMetadata | None = None,
    *,
    enabled: bool = True,
    min_row: float = MIN_ROW,
) -> CachePolicy:
    monkeypatch.setattr(timing, "perf_counter", model.clock)
    timed = time_model(model, meta or metadata(EXAMPLE), batch_rows=BATCH)
    return decide(timed, enabled=enabled, min_row_seconds=min_row)


def test_a_model_quicker_than_the_cache_for_one_row_is_not_cached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = TimedModel(fixed=5e-6, per_row=1e-6)
    found = policy(model, monkeypatch)
    assert found.cache is False
    assert found.alone_seconds == pytest.approx(6e-6)
    assert found.batched_seconds == pytest.approx((5e-6 + 64e-6) / 64)
    assert model.calls == [1, 1, 1, 64, 64, 64]
    assert "6.0 µs" in found.reason
    assert "CACHE_MIN_ROW_US=20" in found.reason


def test_a_model_whose_calls_are_dear_but_rows_cheap_is_not_cached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the compiled demo forest: about 60 µs a call, a few µs a row once batched
    model = TimedModel(fixed=60e-6, per_row=3e-6)
    found = policy(model, monkeypatch)
    assert found.cache is False
    assert found.alone_seconds == pytest.approx(63e-6)
    assert found.batched_seconds == pytest.approx((60e-6 + 64 * 3e-6) / 64)
    assert model.calls == [1, 1, 1, 64, 64, 64]


def test_a_model_dear_even_per_row_of_a_full_batch_is_cached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the demo forest in scikit-learn: about 8 ms a call, 125 µs a row in a batch of 64
    model = TimedModel(fixed=8e-3, per_row=2e-6)
    found = policy(model, monkeypatch)
    assert found.cache is True
    assert found.batched_seconds == pytest.approx((8e-3 + 64 * 2e-6) / 64)
    assert "at least CACHE_MIN_ROW_US=20" in found.reason


def test_the_quickest_call_counts_not_the_cold_first(monkeypatch: pytest.MonkeyPatch) -> None:
    model = TimedModel(fixed=10e-6, per_row=0.0, first=5e-3)
    assert policy(model, monkeypatch).alone_seconds == pytest.approx(10e-6)


def test_a_model_too_slow_to_time_in_a_full_batch_is_cached_untimed_in_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = TimedModel(fixed=0.0, per_row=50e-3)  # 64 rows would take 3.2 s
    found = policy(model, monkeypatch)
    assert found.cache is True
    assert found.batched_seconds is None
    assert model.calls == [1, 1, 1]


def test_timing_stops_once_another_call_would_pass_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = TimedModel(fixed=0.6, per_row=0.0)
    assert policy(model, monkeypatch).cache is True
    assert model.calls == [1]


@pytest.mark.parametrize(
    ("meta", "fails", "why"),
    [
        (metadata(None), False, "no example row"),
        (metadata({"a": "x", "b": 2.0}), False, "no example row"),
        (metadata(EXAMPLE), True, "could not be timed on its example row: the model refused"),
    ],
    ids=["no example", "example invalid", "model refuses"],
)
def test_a_model_that_cannot_be_timed_is_cached(
    monkeypatch: pytest.MonkeyPatch, meta: BundleMetadata, fails: bool, why: str
) -> None:
    model = TimedModel(fixed=1e-6, per_row=0.0, fails=fails)
    found = policy(model, monkeypatch, meta)
    assert found.cache is True
    assert why in found.reason
    assert found.alone_seconds is None


def test_the_settings_decide_whatever_the_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    quick = TimedModel(fixed=1e-6, per_row=0.0)
    every = policy(quick, monkeypatch, min_row=0.0)
    assert every.cache is True
    assert every.reason == "CACHE_MIN_ROW_US=0 caches every model"
    slow = TimedModel(fixed=10e-3, per_row=0.0)
    off = policy(slow, monkeypatch, enabled=False)
    assert off.cache is False
    assert off.reason == "CACHE_ENABLED=false"
    # timed all the same: the batcher uses it, and GET /v1/models shows it
    assert off.alone_seconds == pytest.approx(10e-3)


def test_a_call_is_expected_to_cost_on_the_line_through_one_row_and_a_full_batch() -> None:
    found = ModelTiming(
        alone_seconds=60e-6, batched_seconds=(60e-6 + 63 * 3e-6) / 64, batch_rows=64
    )
    assert found.call_seconds(1) == pytest.approx(60e-6)
    assert found.call_seconds(64) == pytest.approx(60e-6 + 63 * 3e-6)
    assert found.call_seconds(100) == pytest.approx(60e-6 + 99 * 3e-6)  # past the batch
    assert found.call_seconds(16) == pytest.approx(60e-6 + 15 * 3e-6)


def test_a_call_size_the_timing_did_not_cover_has_no_expected_cost() -> None:
    assert ModelTiming(untimed="no example").call_seconds(1) is None
    one_only = ModelTiming(alone_seconds=0.1, batch_rows=64)  # a batch was too slow to time
    assert one_only.call_seconds(1) == pytest.approx(0.1)
    assert one_only.call_seconds(2) is None
