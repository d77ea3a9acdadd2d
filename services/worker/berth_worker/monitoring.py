"""What the worker tells a monitoring system: the ledger as it is stored.

One process, one thread: the consumer counts into plain dictionaries (see
`berth_common.metrics`), and the metrics port's thread renders copies of them.
"""

from __future__ import annotations

import os

from berth_common.ledger_metrics import BacklogGauges, define_build_info
from berth_common.metrics import DURATION_BUCKETS, SIZE_BUCKETS, Merge, MetricSet

# Served-to-stored lag: milliseconds when the worker keeps up, up to an hour through an outage.
LAG_BUCKETS = (*DURATION_BUCKETS, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class WorkerMetrics:
    def __init__(self) -> None:
        metrics = self.set = MetricSet()
        self.rows_stored = metrics.counter(
            "berth_ledger_rows_stored_total", "Prediction rows written to `predictions`."
        )
        self.entries_acknowledged = metrics.counter(
            "berth_ledger_entries_acknowledged_total",
            "Stream entries acknowledged after their transaction committed.",
        )
        self.dead_letters = metrics.counter(
            "berth_ledger_dead_letters_total",
            "Stream entries that could never be stored, kept in `ledger_dead_letters`.",
        )
        self.conflicts = metrics.counter(
            "berth_ledger_conflicts_total",
            "Records whose request id the ledger holds for another request, kept in "
            "`ledger_conflicts`.",
        )
        self.feedback_stored = metrics.counter(
            "berth_feedback_rows_stored_total",
            "Feedback rows written to `feedback`: a row's first actual or a correction.",
        )
        self.feedback_duplicates = metrics.counter(
            "berth_feedback_duplicates_total",
            "Feedback rows that repeated the value in effect when they were received, kept as "
            "receipts in `feedback_duplicates` instead.",
        )
        self.store_duration = metrics.histogram(
            "berth_ledger_store_duration_seconds",
            "Time to store one batch of entries, the commit included.",
        )
        self.batch_rows = metrics.histogram(
            "berth_ledger_store_batch_rows",
            "Prediction rows per stored batch.",
            buckets=SIZE_BUCKETS,
        )
        self.lag = metrics.histogram(
            "berth_ledger_lag_seconds",
            "From a row's answer to its commit in PostgreSQL, per stored row.",
            buckets=LAG_BUCKETS,
        )
        self.backlog = BacklogGauges.define(metrics)
        self.redis_up = metrics.gauge(
            "berth_worker_redis_up",
            "1 while the worker reaches Redis, 0 while it retries.",
            (),
            Merge.LATEST,
        )
        self.database_up = metrics.gauge(
            "berth_worker_database_up",
            "1 while the worker writes to PostgreSQL, 0 while it retries.",
            (),
            Merge.LATEST,
        )
        self.last_heartbeat = metrics.gauge(
            "berth_worker_last_heartbeat_timestamp_seconds",
            "Unix time of the worker's last heartbeat: its loop still turns.",
            (),
            Merge.LATEST,
        )
        define_build_info(metrics, "worker", os.environ.get("BERTH_VERSION", "0.1.0"))
