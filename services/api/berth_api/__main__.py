"""`python -m berth_api`: serve the API with uvicorn, one process per configured worker."""

from __future__ import annotations

import uvicorn

from berth_common.logconfig import configure_logging
from berth_common.settings import ApiSettings, load_or_exit


def main() -> None:
    # Read and check the settings here, once, so a bad .env stops the container with a clear
    # message before uvicorn starts worker processes that would each fail the same way.
    settings = load_or_exit(ApiSettings)
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        "berth_api.app:create_app",
        factory=True,
        host="0.0.0.0",  # noqa: S104 - inside the container; compose decides what is published
        port=8000,
        workers=settings.api_workers,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,  # berth.access logs each request with its request id instead
        timeout_graceful_shutdown=30,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
