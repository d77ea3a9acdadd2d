"""Metrics the API and the worker both export: the ledger's backlog as each measures it, and what
build is running. Both measure the same stream, so both define them here, once."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from berth_common.backlog import Backlog
from berth_common.metrics import Gauge, Merge, MetricSet


@dataclass(frozen=True)
class BacklogGauges:
    entries: Gauge
    oldest_pending_age: Gauge
    oldest_waiting_age: Gauge

    @classmethod
    def define(cls, metrics: MetricSet) -> BacklogGauges:
        return cls(
            metrics.gauge(
                "berth_ledger_backlog_entries",
                "Stream entries the workers have yet to store: unread, or pending (delivered, "
                "not acknowledged).",
                ("state",),
                Merge.LATEST,
            ),
            metrics.gauge(
                "berth_ledger_oldest_pending_age_seconds",
                "Age of the oldest entry delivered to a worker and not yet acknowledged; 0 when "
                "none.",
                (),
                Merge.LATEST,
            ),
            metrics.gauge(
                "berth_ledger_oldest_waiting_age_seconds",
                "Age of the oldest stream entry not yet stored (unread or pending); 0 when none.",
                (),
                Merge.LATEST,
            ),
        )

    def record(self, backlog: Backlog) -> None:
        self.entries.set(("unread",), float(backlog.unread))
        self.entries.set(("pending",), float(backlog.pending))
        self.oldest_pending_age.set((), backlog.oldest_pending_age_seconds or 0.0)
        self.oldest_waiting_age.set((), backlog.oldest_waiting_age_seconds or 0.0)


def define_build_info(metrics: MetricSet, service: str, version: str) -> None:
    """`berth_build_info{service, version, git_sha, python}` (the image sets BERTH_GIT_SHA)."""
    info = metrics.info(
        "berth_build_info",
        "The running build: service, version, git commit and Python.",
        ("service", "version", "git_sha", "python"),
    )
    info.set(
        (service, version, os.environ.get("BERTH_GIT_SHA", "unknown"), platform.python_version())
    )
