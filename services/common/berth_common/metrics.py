"""Prometheus metrics that cost a request almost nothing, summed over every process that serves.

prometheus-client's multiprocess mode writes a memory-mapped file under a lock on every update:
about 2 µs for a counter and 3 µs for a histogram, some 15 µs for what one request records, which
alone would cost the API several percent of its throughput. Here every process counts in plain
dictionaries (a tenth of a microsecond an update, no lock: the API updates them on its event loop,
the worker on its one thread), and publishes a snapshot of them to a file of its own once a
second. A scrape merges the snapshots of every process into prometheus-client metric families:
counters and histograms are summed, including those of processes that have exited (a restarted
process starts again from zero, and the sum goes on rising); gauges are summed over live
processes, or the newest value is taken, as each gauge says. So whichever process or port answers
a scrape, it answers for all of them, at most one publishing interval behind.
"""

from __future__ import annotations

import bisect
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

Labels = tuple[str, ...]

# Seconds: from 1 ms to a minute, for request, model-call and store durations and ledger lag.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip
# Rows per model call or per stored batch.
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
# A probability.
PROBABILITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class Merge(Enum):
    """How a gauge's values from several processes become one."""

    SUM = "sum"  # summed over live processes (requests in progress)
    LATEST = "latest"  # the most recently published value (a figure every process measures alike)


@dataclass
class Counter:
    name: str
    documentation: str
    labelnames: Sequence[str] = ()
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount


@dataclass
class Gauge:
    name: str
    documentation: str
    labelnames: Sequence[str] = ()
    merge: Merge = Merge.SUM
    values: dict[Labels, float] = field(default_factory=dict)

    def set(self, labels: Labels, value: float) -> None:
        self.values[labels] = value

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def dec(self, labels: Labels = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) - amount


@dataclass
class Histogram:
    name: str
    documentation: str
    labelnames: Sequence[str] = ()
    buckets: Sequence[float] = DURATION_BUCKETS
    # per label set: the count in each bucket (not cumulative; the last is +Inf), then the sum
    values: dict[Labels, list[float]] = field(default_factory=dict)

    def observe(self, labels: Labels, value: float) -> None:
        counts = self.values.get(labels)
        if counts is None:
            counts = self.values[labels] = [0.0] * (len(self.buckets) + 2)
        counts[bisect.bisect_left(self.buckets, value)] += 1
        counts[-1] += value

    def observe_many(self, labels: Labels, values: Iterable[float]) -> None:
        for value in values:
            self.observe(labels, value)


@dataclass
class Info:
    """A constant series with value 1 whose labels carry the information (version, sha)."""

    name: str
    documentation: str
    labelnames: Sequence[str]
    values: dict[Labels, float] = field(default_factory=dict)

    def set(self, labels: Labels) -> None:
        self.values[labels] = 1.0


Instrument = Counter | Gauge | Histogram | Info


class MetricSet:
    """A process's instruments, which it updates; what it publishes and what a scrape renders.

    Disabled (METRICS_ENABLED=false, to measure what metrics cost), every update does nothing.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self._instruments: dict[str, Instrument] = {}
        self.enabled = enabled

    def add(self, instrument: Instrument) -> Any:
        if instrument.name in self._instruments:
            raise ValueError(f"metric {instrument.name} is defined twice")
        self._instruments[instrument.name] = instrument
        if not self.enabled:
            for method in ("inc", "dec", "set", "observe", "observe_many"):
                if hasattr(instrument, method):
                    setattr(instrument, method, _ignore)
        return instrument

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        counter: Counter = self.add(Counter(name, documentation, labelnames))
        return counter

    def gauge(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        merge: Merge = Merge.SUM,
    ) -> Gauge:
        gauge: Gauge = self.add(Gauge(name, documentation, labelnames, merge))
        return gauge

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DURATION_BUCKETS,
    ) -> Histogram:
        histogram: Histogram = self.add(Histogram(name, documentation, labelnames, buckets))
        return histogram

    def info(self, name: str, documentation: str, labelnames: Sequence[str]) -> Info:
        info: Info = self.add(Info(name, documentation, labelnames))
        return info

    @property
    def instruments(self) -> list[Instrument]:
        return list(self._instruments.values())

    def snapshot(self) -> dict[str, list[list[Any]]]:
        """The values now, JSON-able: name -> [[labels, value or bucket counts], ...]. Copies are
        taken first, so a scrape thread may call it while the owner updates."""
        return {
            name: [
                [list(labels), list(value) if isinstance(value, list) else value]
                for labels, value in instrument.values.copy().items()
            ]
            for name, instrument in self._instruments.copy().items()
        }


@dataclass(frozen=True)
class ProcessSnapshot:
    pid: int
    published_at: float
    alive: bool
    values: dict[str, list[list[Any]]]


class SnapshotDirectory:
    """Where each process of one server publishes its snapshot: `<pid>-<token>.json`, replaced
    whole. The token tells apart two servers in one process (tests run several)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.token = uuid.uuid4().hex[:12]

    def reset(self) -> None:
        """Called once, before any process of the server starts: old snapshots belong to an
        earlier run of the server, whose counts a new run must not continue."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in self.directory.glob("*.json"):
            path.unlink(missing_ok=True)

    @property
    def name(self) -> str:
        return f"{os.getpid()}-{self.token}"

    def publish(self, metrics: MetricSet) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        document = {
            "pid": os.getpid(),
            "published_at": time.time(),
            "values": metrics.snapshot(),
        }
        # a name of its own per write: two writes at once (a last one at shutdown) never collide
        temporary = self.directory / f".{self.name}.{uuid.uuid4().hex[:8]}.tmp"
        temporary.write_text(json.dumps(document, separators=(",", ":")))
        temporary.replace(self.directory / f"{self.name}.json")

    def read(self, *, without: str | None = None) -> list[ProcessSnapshot]:
        """Every published snapshot but the one named `without`."""
        snapshots = []
        for path in sorted(self.directory.glob("*.json")):
            if path.stem == without:
                continue
            try:
                document = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # replaced while being read, or torn by a crash: the next scrape has it
            pid = int(document["pid"])
            snapshots.append(
                ProcessSnapshot(
                    pid, float(document["published_at"]), _alive(pid), document["values"]
                )
            )
        return snapshots


class MergedCollector(Collector):
    """Renders `metrics`' definitions with values merged from every process's snapshot.

    `live` (optional) replaces the published snapshot of the process that scrapes, so that its
    own values are current rather than up to one interval old.
    """

    def __init__(
        self,
        metrics: MetricSet,
        directory: SnapshotDirectory | None,
        *,
        live: bool = True,
    ) -> None:
        self._metrics = metrics
        self._directory = directory
        self._live = live

    def collect(self) -> Iterator[Metric]:
        live = self._live or self._directory is None
        snapshots = []
        if self._directory is not None:
            snapshots = self._directory.read(without=self._directory.name if live else None)
        if live:
            snapshots.append(
                ProcessSnapshot(os.getpid(), time.time(), True, self._metrics.snapshot())
            )
        for instrument in self._metrics.instruments:
            yield _family(instrument, snapshots)


def _family(instrument: Instrument, snapshots: list[ProcessSnapshot]) -> Metric:
    name = instrument.name
    labelnames = list(instrument.labelnames)
    if isinstance(instrument, Histogram):
        histogram = HistogramMetricFamily(name, instrument.documentation, labels=labelnames)
        for labels, counts in _summed(name, snapshots).items():
            cumulative, buckets = 0.0, []
            bounds = [*instrument.buckets, float("inf")]
            for bound, count in zip(bounds, counts[:-1], strict=True):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            histogram.add_metric(list(labels), buckets, counts[-1])
        return histogram
    if isinstance(instrument, Counter):
        counter = CounterMetricFamily(
            name.removesuffix("_total"), instrument.documentation, labels=labelnames
        )
        for labels, value in _summed(name, snapshots).items():
            counter.add_metric(list(labels), value)
        return counter
    if isinstance(instrument, Info):
        info = InfoMetricFamily(name.removesuffix("_info"), instrument.documentation)
        for labels in _latest(name, snapshots):
            info.add_metric([], dict(zip(labelnames, labels, strict=True)))
        return info
    gauge = GaugeMetricFamily(name, instrument.documentation, labels=labelnames)
    if instrument.merge is Merge.SUM:
        values = _summed(name, [s for s in snapshots if s.alive])
    else:
        values = _latest(name, snapshots)
    for labels, value in values.items():
        gauge.add_metric(list(labels), value)
    return gauge


def _summed(name: str, snapshots: list[ProcessSnapshot]) -> dict[Labels, Any]:
    totals: dict[Labels, Any] = {}
    for snapshot in snapshots:
        for labels, value in snapshot.values.get(name, []):
            key = tuple(labels)
            if isinstance(value, list):
                current = totals.get(key)
                totals[key] = (
                    list(value)
                    if current is None
                    else [a + b for a, b in zip(current, value, strict=True)]
                )
            else:
                totals[key] = totals.get(key, 0.0) + value
    return totals


def _latest(name: str, snapshots: list[ProcessSnapshot]) -> dict[Labels, float]:
    latest: dict[Labels, tuple[float, float]] = {}
    for snapshot in snapshots:
        for labels, value in snapshot.values.get(name, []):
            key = tuple(labels)
            if key not in latest or snapshot.published_at >= latest[key][0]:
                latest[key] = (snapshot.published_at, value)
    return {key: value for key, (_, value) in latest.items()}


def _ignore(*_: Any) -> None:
    return None


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
