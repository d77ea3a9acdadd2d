"""The served model versions and their training references, recorded in the database.

The quality and drift views read what each model version answers (`model_versions`) and what
its training data looked like (`reference_bins`, from the bundle's metadata: reference.py). Every
API process records each bundle it loaded when it starts. A bundle version never changes, so a
version already recorded with the same sha256 is left alone; one recorded with another sha256
was replaced in place by an operator (`make repackage` writes the same model in a new file), and
its rows are replaced, with an error in the log since a version should not change under its
name. The database may be down when the API starts: recording runs in the background and
retries until it is done, and never holds up start-up or serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import Connection, Engine, delete, insert, null, select, update
from sqlalchemy.dialects.postgresql import insert as upsert
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from berth_api.bundles.bundle import BundleMetadata, DistributionSpec
from berth_api.coalesce import pause
from berth_common.tables import model_versions, reference_bins

logger = logging.getLogger(__name__)

Recorded = Literal["recorded", "unchanged", "replaced"]

RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0


def version_row(metadata: BundleMetadata) -> dict[str, Any]:
    """The bundle's `model_versions` row, without its key."""
    return {
        "task": metadata.task,
        "classes": metadata.classes,
        "features": [feature.model_dump() for feature in metadata.features],
        "sha256": metadata.sha256,
        "reference_rows": metadata.reference.rows if metadata.reference is not None else None,
    }


def bin_rows(metadata: BundleMetadata) -> list[dict[str, Any]]:
    """The bundle's `reference_bins` rows: none without a reference."""
    reference = metadata.reference
    if reference is None:
        return []
    distributions: list[tuple[str, str, DistributionSpec]] = [
        ("feature", name, distribution) for name, distribution in reference.features.items()
    ]
    distributions.append(("prediction", "", reference.prediction))
    return [
        {
            "model_name": metadata.name,
            "model_version": metadata.version,
            "subject": subject,
            "name": name,
            "bin": index,
            "lower": spec.lower,
            "upper": spec.upper,
            # SQL NULL, not JSON null: "no category" is what the views look for
            "category": null() if spec.category is None else spec.category,
            "expected": spec.expected,
        }
        for subject, name, distribution in distributions
        for index, spec in enumerate(distribution.bins)
    ]


def record_version(engine: Engine, metadata: BundleMetadata) -> Recorded:
    """Blocking: records one bundle, in a transaction of its own; what was done."""
    with engine.begin() as connection:
        return _record(connection, metadata)


def _record(connection: Connection, metadata: BundleMetadata) -> Recorded:
    """Concurrent API processes are safe: the first insert wins, and the others find its row,
    which they lock (waiting for the first to commit) before they compare it."""
    key = {"model_name": metadata.name, "model_version": metadata.version}
    row = version_row(metadata)
    inserted = connection.execute(
        upsert(model_versions)
        .values(**key, **row)
        .on_conflict_do_nothing()
        .returning(model_versions.c.sha256)
    ).first()
    if inserted is None:
        stored = connection.execute(
            select(model_versions.c.sha256)
            .where(*(model_versions.c[column] == value for column, value in key.items()))
            .with_for_update()
        ).scalar_one()
        if stored == metadata.sha256:
            return "unchanged"
        logger.error(
            "model version %s was recorded with model file sha256 %s and is now served with %s: "
            "the bundle was replaced under the same version; replacing its model_versions and "
            "reference_bins rows (give a changed model a new version)",
            metadata.key,
            stored,
            metadata.sha256,
        )
        connection.execute(
            update(model_versions)
            .where(*(model_versions.c[column] == value for column, value in key.items()))
            .values(**row)
        )
    connection.execute(
        delete(reference_bins).where(
            *(reference_bins.c[column] == value for column, value in key.items())
        )
    )
    bins = bin_rows(metadata)
    if bins:
        connection.execute(insert(reference_bins).values(bins))
    return "recorded" if inserted is not None else "replaced"


async def record_versions_forever(
    engine: Engine,
    bundles: Sequence[BundleMetadata],
    stop: asyncio.Event,
    *,
    retry_first_seconds: float = RETRY_FIRST_SECONDS,
    retry_max_seconds: float = RETRY_MAX_SECONDS,
) -> None:
    """Records the bundles, retrying with a growing pause until the database takes them all or
    `stop` is set. A bundle the database refuses does not hold up the others: it goes to the
    back of the queue."""
    pending = list(bundles)
    delay = retry_first_seconds
    while pending and not stop.is_set():
        metadata = pending.pop(0)
        try:
            outcome = await asyncio.to_thread(record_version, engine, metadata)
        except SQLAlchemyError as exc:
            pending.append(metadata)
            logger.warning(
                "%d model version(s) not recorded in the database yet (the drift views wait for "
                "them); retrying in %g s: %s",
                len(pending),
                delay,
                _first_line(exc),
            )
            await pause(stop, delay)
            delay = min(delay * 2, retry_max_seconds)
            continue
        delay = retry_first_seconds
        reference = metadata.reference
        logger.info(
            "model version %s %s in the database (%s)",
            metadata.key,
            outcome,
            f"training reference of {reference.rows} rows"
            if reference is not None
            else "no training reference: no drift figures for it",
        )


def _first_line(exc: SQLAlchemyError) -> str:
    """A driver error's first line: the rest repeats the statement and its parameters."""
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    return str(cause).strip().split("\n")[0]
