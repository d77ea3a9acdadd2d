"""The writer's parts that need no database."""

from __future__ import annotations

from berth_common.tables import predictions
from berth_worker.writer import RECORD_COLUMNS


def test_a_record_fills_every_column_but_the_servers_own() -> None:
    # COPY fills the columns named after the record's fields; a field without a column, or a
    # column without a field, must fail here rather than in the worker.
    table_columns = {column.name for column in predictions.columns}

    assert set(RECORD_COLUMNS) == table_columns - {"stored_at"}
