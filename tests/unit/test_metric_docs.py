"""Every metric the API and the worker export is documented in the README."""

from __future__ import annotations

from berth_api.monitoring import ApiMetrics
from berth_worker.monitoring import WorkerMetrics
from tests.conftest import ROOT


def test_every_metric_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    names = [i.name for i in (*ApiMetrics().set.instruments, *WorkerMetrics().set.instruments)]
    assert len(names) > 30
    missing = [name for name in names if f"`{name}`" not in readme]
    assert not missing, f"metrics missing from the README: {missing}"
