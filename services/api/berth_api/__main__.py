"""`python -m berth_api`: serve the API with uvicorn, one process per configured worker."""

from __future__ import annotations

import os
from wsgiref.simple_server import WSGIServer

import uvicorn
from prometheus_client import CollectorRegistry, start_http_server

from berth_api.monitoring import ApiMetrics
from berth_api.server import uvicorn_options
from berth_common.logconfig import configure_logging
from berth_common.metrics import MergedCollector, SnapshotDirectory
from berth_common.settings import ApiSettings, load_or_exit


def main() -> None:
    # Read and check the settings here, once, so a bad .env stops the container with a clear
    # message before uvicorn starts worker processes that would each fail the same way.
    settings = load_or_exit(ApiSettings)
    configure_logging(settings.log_level, settings.log_format)
    # Read by OpenMP and BLAS when the worker processes load them: without it every process
    # starts a thread per core, and API_WORKERS processes fight over the cores (a
    # HistGradientBoosting model then gets slower with every process added).
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(settings.model_threads))
    serve_metrics(settings)
    uvicorn.run(
        "berth_api.app:create_app",
        factory=True,
        host="0.0.0.0",  # noqa: S104 - inside the container; compose decides what is published
        port=8000,
        workers=settings.api_workers,
        **uvicorn_options(settings),
    )


def serve_metrics(settings: ApiSettings) -> WSGIServer | None:
    """Starts over the figures of this run, and serves them on the metrics port, from this
    process (the one that starts the workers): whichever worker is busy, the port answers with
    the sum of all of them. The server runs in a thread of its own for as long as the process."""
    directory = SnapshotDirectory(settings.metrics_dir)
    directory.reset()
    if not settings.metrics_port:
        return None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MergedCollector(ApiMetrics().set, directory, live=False))
    server, _ = start_http_server(settings.metrics_port, addr="0.0.0.0", registry=registry)  # noqa: S104
    return server


if __name__ == "__main__":
    main()
