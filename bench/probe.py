"""Measurements `make bench` takes inside the api container, where the stack's settings, the
model bundle and the project's own code are: piped in as `python - <command> [args]`.

  floor              the model call alone, in this process: scikit-learn and the compiled graph
  backlog            ledger entries not yet stored (unread + pending in the stream, and spooled)
  lag SINCE UNTIL    waits for the backlog to drain, then served -> stored delay of the rows
                     served in [SINCE, UNTIL) (ISO times), from the predictions table
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import create_engine, text

from berth_api.ledger.spool import LedgerSpool
from berth_api.monitoring import ApiMetrics
from berth_api.serving.compiled import CompiledPredictor
from berth_api.serving.predictor import Predictor, Predicts
from berth_api.serving.registry import ModelRegistry
from berth_common.settings import ApiSettings

ROW = [5.1, 3.5, 1.4, 0.2]


def _timings(predictor: Predicts, rows: list[list[Any]], calls: int) -> dict[str, float]:
    for _ in range(20):
        predictor.predict(rows)
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        predictor.predict(rows)
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return {
        "p50_us": round(statistics.median(samples), 1),
        "p99_us": round(samples[int(len(samples) * 0.99) - 1], 1),
        "calls": calls,
    }


def floor(settings: ApiSettings) -> dict[str, Any]:
    registry = ModelRegistry.load(settings, ApiMetrics())
    served = registry.default()
    bundle = served.bundle
    engines: dict[str, Predicts] = {"scikit-learn": Predictor.for_bundle(bundle)}
    if bundle.compiled is not None:
        engines["onnxruntime"] = CompiledPredictor.for_bundle(
            bundle, threads=settings.model_threads
        )
    result: dict[str, Any] = {
        "model": f"{bundle.name}/{bundle.version}",
        "estimator": bundle.metadata.estimator,
        "served_engine": served.predictor.engine,
    }
    for name, predictor in engines.items():
        calls = 300 if name == "scikit-learn" else 3000
        result[name] = {
            "1_row": _timings(predictor, [ROW], calls),
            "100_rows": _timings(predictor, [ROW] * 100, calls // 3),
        }
    registry.close()
    return result


def backlog(settings: ApiSettings) -> dict[str, int]:
    client = redis.Redis(**settings.redis_kwargs())
    try:
        groups = client.xinfo_groups(settings.ledger_stream)
    except redis.ResponseError:
        groups = []
    group = next((g for g in groups if g["name"] in (b"writers", "writers")), None)
    client.close()
    return {
        "unread": int(group["lag"] or 0) if group else 0,
        "pending": int(group["pending"]) if group else 0,
        "spooled": LedgerSpool(settings.spool_dir).count_entries(),
    }


def lag(settings: ApiSettings, since: str, until: str) -> dict[str, Any]:
    waited = time.monotonic()
    while sum(backlog(settings).values()) > 0:
        if time.monotonic() - waited > 120:
            break
        time.sleep(0.1)
    drained_after = time.monotonic() - waited
    engine = create_engine(settings.database_url)
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT count(*) AS rows,"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,"
                " percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99,"
                " max(lag) AS max"
                " FROM (SELECT extract(epoch FROM stored_at - served_at) * 1000 AS lag"
                "       FROM predictions WHERE served_at >= :since AND served_at < :until) AS l"
            ),
            {"since": datetime.fromisoformat(since), "until": datetime.fromisoformat(until)},
        ).one()
    engine.dispose()
    return {
        "rows": int(row.rows),
        "lag_p50_ms": round(float(row.p50 or 0), 1),
        "lag_p99_ms": round(float(row.p99 or 0), 1),
        "lag_max_ms": round(float(row.max or 0), 1),
        "drained_after_s": round(drained_after, 2),
        "backlog_left": backlog(settings),
    }


def main(argv: list[str]) -> int:
    settings = ApiSettings()
    command = argv[0] if argv else ""
    if command == "floor":
        result: Any = floor(settings)
    elif command == "backlog":
        result = backlog(settings)
    elif command == "lag" and len(argv) == 3:
        result = lag(settings, argv[1], argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
