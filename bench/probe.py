"""Measurements `make bench` takes inside the api container, where the stack's settings, the
model bundle and the project's own code are: piped in as `python - <command> [args]`.

  floor              the model call alone, in this process: scikit-learn and the compiled graph
  backlog            ledger entries not yet stored (unread + pending in the stream, and spooled)
  lag SINCE UNTIL    waits for the backlog to drain, then served -> stored delay of the rows
                     served in [SINCE, UNTIL) (ISO times), from the predictions table
  memory             resident memory of each of the container's processes but this one
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

from berth_api.ledger.spool import LedgerSpool
from berth_api.monitoring import ApiMetrics
from berth_api.serving.compiled import CompiledPredictor
from berth_api.serving.predictor import Predictor, Predicts
from berth_api.serving.registry import ModelRegistry
from berth_common.backlog import NoGroup, read_backlog
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
    """What the ledger still has to store, counted as /readyz and the audit count it: the group's
    own `lag` went on reporting entries for an empty stream once Redis had restarted from its
    AOF (1,390 here), and every run waited two minutes for them."""
    client = redis.Redis(**settings.redis_kwargs())
    try:
        waiting = read_backlog(client, settings.ledger_stream, settings.ledger_group)
    except NoGroup:
        unread = pending = 0
    else:
        unread, pending = waiting.unread, waiting.pending
    finally:
        client.close()
    return {
        "unread": unread,
        "pending": pending,
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


# What each process of the api container is, by its command line: uvicorn's supervisor starts
# API_WORKERS processes through multiprocessing's spawn, with its resource tracker beside them.
ROLES = (
    ("docker-init", "init"),
    ("multiprocessing.spawn", "API process"),
    ("multiprocessing.resource_tracker", "resource tracker"),
    ("berth_api.healthcheck", "health check"),
    ("berth_api", "supervisor"),
)


def memory() -> dict[str, Any]:
    """VmRSS of every process in the container (the supervisor and each API process), from
    /proc: the slim image has no ps."""
    processes: list[dict[str, Any]] = []
    for status in sorted(Path("/proc").glob("[0-9]*/status"), key=lambda p: int(p.parent.name)):
        pid = int(status.parent.name)
        if pid == os.getpid():
            continue
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
            command = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").strip()
        except OSError:  # it ended meanwhile
            continue
        if "VmRSS" not in fields:  # a kernel thread
            continue
        name = command.decode(errors="replace") or fields["Name"].strip()
        processes.append(
            {
                "pid": pid,
                "role": next((role for part, role in ROLES if part in name), "other"),
                "name": name[:80],
                "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            }
        )
    return {"processes": processes, "total_rss_mb": round(sum(p["rss_mb"] for p in processes), 1)}


def main(argv: list[str]) -> int:
    settings = ApiSettings()
    command = argv[0] if argv else ""
    if command == "floor":
        result: Any = floor(settings)
    elif command == "backlog":
        result = backlog(settings)
    elif command == "memory":
        result = memory()
    elif command == "lag" and len(argv) == 3:
        result = lag(settings, argv[1], argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
