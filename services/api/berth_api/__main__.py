"""`python -m berth_api`: serve the API with uvicorn, one process per configured worker."""

from __future__ import annotations

import os

import uvicorn

from berth_api.server import uvicorn_options
from berth_common.logconfig import configure_logging
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
    uvicorn.run(
        "berth_api.app:create_app",
        factory=True,
        host="0.0.0.0",  # noqa: S104 - inside the container; compose decides what is published
        port=8000,
        workers=settings.api_workers,
        **uvicorn_options(settings),
    )


if __name__ == "__main__":
    main()
