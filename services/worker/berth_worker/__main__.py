"""Entry point: `python -m berth_worker` runs the worker, `--check` is its container HEALTHCHECK.

The process is meant to be PID 1 of its container (exec-form CMD), so it installs its own SIGTERM
and SIGINT handlers: the kernel applies no default action to PID 1, and without them `docker stop`
would wait for its timeout and then kill the worker in the middle of a batch.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server

from berth_common.heap import settle_heap
from berth_common.logconfig import configure_logging
from berth_common.metrics import MergedCollector
from berth_common.settings import WorkerSettings, load_or_exit
from berth_worker.clients import check_redis, worker_engine, worker_redis
from berth_worker.consumer import LedgerConsumer
from berth_worker.health import check_health
from berth_worker.monitoring import WorkerMetrics
from berth_worker.writer import LedgerWriter

log = logging.getLogger("berth_worker")


class ColdStop(BaseException):
    """Raised by the second signal. A BaseException so that no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class ShutdownHandler:
    """First SIGTERM/SIGINT: warm stop. Second: cold stop, leaving the batch in hand pending."""

    def __init__(self, consumer: LedgerConsumer) -> None:
        self._consumer = consumer

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        # No logging here: a handler that writes to stderr while the interrupted code is writing
        # to it fails with a reentrant-call error. The consumer logs the reason when it stops.
        if self._consumer.stopping:
            raise ColdStop(signum)
        self._consumer.stop(f"{signal.Signals(signum).name}, warm stop")

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m berth_worker",
        description="Stores the Berth prediction ledger from Redis into PostgreSQL.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if this host's worker heartbeat is fresh in Redis, else 1 (for HEALTHCHECK)",
    )
    args = parser.parse_args(argv)
    if args.check:
        return check()
    settings = load_or_exit(WorkerSettings)
    configure_logging(settings.log_level, settings.log_format)
    return run(settings)


def check() -> int:
    try:
        settings = load_or_exit(WorkerSettings)
    except SystemExit:
        # Docker reserves a health check's exit code 2; a bad environment is simply unhealthy.
        return 1
    client = check_redis(settings)
    try:
        status = check_health(settings, client)
    finally:
        client.close()
    print(status.reason, file=sys.stdout if status.healthy else sys.stderr)
    return 0 if status.healthy else 1


def run(settings: WorkerSettings) -> int:
    engine = worker_engine(settings)
    client = worker_redis(settings)
    writer = LedgerWriter(engine, max_deliveries=settings.worker_max_deliveries)
    metrics = WorkerMetrics()
    consumer = LedgerConsumer(settings, client, writer, metrics=metrics)
    if settings.worker_metrics_port:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MergedCollector(metrics.set, None))
        start_http_server(settings.worker_metrics_port, addr="0.0.0.0", registry=registry)  # noqa: S104
    ShutdownHandler(consumer).install()
    # Every batch makes thousands of short-lived objects, and each full collection they trigger
    # would walk every object of the libraries imported above, about a tenth of the worker's CPU
    # while it drains a backlog. Those objects live as long as the process: leave them out, and
    # let a batch's objects come and go without a collection.
    settle_heap()
    try:
        try:
            consumer.run()
        finally:
            client.close()
            engine.dispose()
    except ColdStop as exc:
        log.warning(
            "second %s: stopped at once; the batch in hand stays pending and is read again",
            signal.Signals(exc.signum).name,
        )
        return 128 + exc.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
