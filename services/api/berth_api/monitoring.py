"""What the API tells a monitoring system: every metric it exports, and where each is recorded.

Each API process counts into its own `ApiMetrics` (see `berth_common.metrics` for why plain
dictionaries) and publishes them once a second; `/metrics` (and the metrics port, served by the
process that starts the workers) merges every process's figures. Label values are bounded: route
templates, never raw paths; model names and versions that were loaded; class labels of the
model's own classes.
"""

from __future__ import annotations

from collections.abc import Sequence

from berth_api import __version__
from berth_common.ledger_metrics import BacklogGauges, define_build_info
from berth_common.metrics import (
    DURATION_BUCKETS,
    PROBABILITY_BUCKETS,
    SIZE_BUCKETS,
    Merge,
    MetricSet,
)

# A regressor's predicted values: signed, spanning several orders of magnitude.
VALUE_BUCKETS = (
    -1e6, -1e5, -1e4, -1e3, -100.0, -10.0, -1.0, 0.0, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6
)  # fmt: skip
UNMATCHED_ROUTE = "<unmatched>"


class ApiMetrics:
    def __init__(self, *, enabled: bool = True) -> None:
        metrics = self.set = MetricSet(enabled=enabled)
        # ---- HTTP
        self.requests = metrics.counter(
            "berth_http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
        )
        self.request_duration = metrics.histogram(
            "berth_http_request_duration_seconds",
            "Time from a request's arrival to its last response byte, by route template.",
            ("route",),
        )
        self.in_progress = metrics.gauge(
            "berth_http_requests_in_progress", "Requests being answered now."
        )
        # ---- serving
        self.predictions = metrics.counter(
            "berth_predictions_total",
            "Rows answered by a classifier, by model, version and predicted label.",
            ("model", "version", "label"),
        )
        self.predicted_values = metrics.histogram(
            "berth_prediction_value",
            "Values answered by a regressor, by model and version.",
            ("model", "version"),
            VALUE_BUCKETS,
        )
        self.top_probability = metrics.histogram(
            "berth_prediction_top_probability",
            "Probability of the predicted class, per row answered by a classifier.",
            ("model", "version"),
            PROBABILITY_BUCKETS,
        )
        self.cache_lookups = metrics.counter(
            "berth_cache_lookups_total",
            "Rows looked up in the prediction cache, by model and result (hit or miss).",
            ("model", "version", "result"),
        )
        self.model_calls = metrics.counter(
            "berth_model_calls_total",
            "Calls of a model (continuously batched), by model, version and engine.",
            ("model", "version", "engine"),
        )
        self.model_call_rows = metrics.histogram(
            "berth_model_call_rows",
            "Rows per model call: how much continuous batching shares calls.",
            ("model", "version", "engine"),
            SIZE_BUCKETS,
        )
        self.model_call_duration = metrics.histogram(
            "berth_model_call_duration_seconds",
            "Time a model call takes, by model, version and engine.",
            ("model", "version", "engine"),
        )
        self.idempotency = metrics.counter(
            "berth_request_ids_total",
            "Requests named by their client (X-Request-ID) by outcome: first (served and "
            "recorded), replayed (a retry answered from the first), conflict (refused, 409), "
            "unchecked (Redis could not be asked).",
            ("outcome",),
        )
        self.model_ready = metrics.gauge(
            "berth_model_ready",
            "1 for each model version this API serves; the default model's absence means not "
            "ready.",
            ("model", "version", "default"),
            Merge.LATEST,
        )
        self.bundles_refused = metrics.gauge(
            "berth_bundles_refused",
            "Bundles in the models directory that this API refused to load (see /readyz).",
            (),
            Merge.LATEST,
        )
        self.model_info = metrics.info(
            "berth_model_info",
            "Each served model version: engine, model file format and sha256.",
            ("model", "version", "engine", "format", "sha256"),
        )
        # ---- ledger, as the API sees it
        self.records_appended = metrics.counter(
            "berth_ledger_records_appended_total",
            "Ledger records (one per served row) kept before answering, by where: the Redis "
            "stream or, while Redis cannot take them, the spool.",
            ("destination",),
        )
        self.append_failures = metrics.counter(
            "berth_ledger_append_failures_total",
            "Appends to the Redis stream that failed (their records went to the spool).",
        )
        self.records_lost = metrics.counter(
            "berth_ledger_records_refused_total",
            "Records neither Redis nor the spool could keep; their requests were answered 503.",
        )
        self.feedback_received = metrics.counter(
            "berth_feedback_rows_received_total",
            "Feedback rows accepted (202) and kept in the Redis stream or the spool, by source: "
            "one request's feedback (api) or a bulk upload (bulk).",
            ("source",),
        )
        self.spool_entries = metrics.gauge(
            "berth_ledger_spool_entries",
            "Stream entries waiting in this API's spool for Redis.",
            (),
            Merge.LATEST,
        )
        self.spool_oldest_age = metrics.gauge(
            "berth_ledger_spool_oldest_age_seconds",
            "Age of the oldest spool segment with entries waiting (0 when the spool is empty).",
            (),
            Merge.LATEST,
        )
        self.backlog = BacklogGauges.define(metrics)
        self.redis_available = metrics.gauge(
            "berth_ledger_redis_available",
            "1 while the API can reach Redis for the ledger, 0 while it spools.",
            (),
            Merge.LATEST,
        )
        self.workers = metrics.gauge(
            "berth_ledger_workers",
            "Ledger workers with a fresh heartbeat, by state.",
            ("state",),
            Merge.LATEST,
        )
        define_build_info(metrics, "api", __version__)

    def record_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.inc((route, method, str(status)))
        self.request_duration.observe((route,), seconds)

    def record_answers(
        self,
        model: str,
        version: str,
        labels: Sequence[object],
        top_probabilities: Sequence[float] | None,
        *,
        classifier: bool,
    ) -> None:
        key = (model, version)
        if classifier:
            for label in labels:
                self.predictions.inc((model, version, str(label)))
        else:
            for value in labels:
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.predicted_values.observe(key, float(value))
        if top_probabilities is not None:
            for probability in top_probabilities:
                self.top_probability.observe(key, probability)

    def record_model_call(
        self, model: str, version: str, engine: str, rows: int, seconds: float
    ) -> None:
        key = (model, version, engine)
        self.model_calls.inc(key)
        self.model_call_rows.observe(key, rows)
        self.model_call_duration.observe(key, seconds)


__all__ = ["DURATION_BUCKETS", "UNMATCHED_ROUTE", "ApiMetrics"]
