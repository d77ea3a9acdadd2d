"""How `python -m berth_api` runs uvicorn: its options, for the supervisor and the tests.

Kept apart from the protocol (`http/protocol.py`) and everything it imports: the supervisor
process, which only starts the API processes and serves their merged metrics, then does not load
scikit-learn, pandas and the app (it held 194 MB of them for nothing).
"""

from __future__ import annotations

from typing import Any

from berth_common.settings import ApiSettings


def uvicorn_options(settings: ApiSettings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run / uvicorn.Config, apart from the app."""
    return {
        "loop": "uvloop",
        # an import string: uvicorn starts its worker processes by spawning, which pickles this
        "http": "berth_api.http.protocol:GuardedHttpToolsProtocol",
        "log_config": None,
        "access_log": False,  # berth.access logs each request with its request id instead
        "timeout_graceful_shutdown": 30,
        "timeout_keep_alive": settings.keep_alive_timeout_seconds,
        "proxy_headers": False,
    }
