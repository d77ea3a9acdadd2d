"""The process `python -m berth_api` starts first only starts the API processes and serves their
merged metrics: it must not load the libraries that serve models (they held 194 MB in it)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("sklearn", "pandas", "scipy", "numpy", "onnxruntime", "fastapi", "starlette")


def test_the_supervisor_loads_no_model_or_web_library() -> None:
    code = (
        f"import sys, berth_api.__main__; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
