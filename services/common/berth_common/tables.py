"""Table definitions: the one source for the Alembic migrations, the worker and the API reads."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Double,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so migrations can name what they alter and `alembic check`
# compares like with like.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ServedRow:
    """What was asked and answered for one row, by which model, and when: the columns a stored
    prediction and a conflicting one share."""

    model_name: Mapped[str] = mapped_column(Text)
    model_version: Mapped[str] = mapped_column(Text)
    features: Mapped[dict[str, Any]] = mapped_column(JSONB)
    prediction: Mapped[Any] = mapped_column(JSONB)
    probabilities: Mapped[dict[str, float] | None] = mapped_column(JSONB, nullable=True)
    cached: Mapped[bool] = mapped_column(Boolean)
    latency_ms: Mapped[float] = mapped_column(Double)
    served_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Prediction(ServedRow, Base):
    """One served row. The primary key makes storing a record twice a no-op."""

    __tablename__ = "predictions"

    request_id: Mapped[str] = mapped_column(Text, primary_key=True)
    row_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Fingerprint of the request (model, version, rows) when its client named it with
    # X-Request-ID; null for ids Berth made up.
    request_hash: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        Index(None, "served_at"),
        Index(None, "model_name", "model_version", "served_at"),
    )


class LedgerConflict(ServedRow, Base):
    """A served row whose request id the ledger already holds for a different request.

    The API refuses a reused request id with a 409 while Redis remembers it; a record that got
    past that (served while Redis was unreachable, from the spool, or after the id was
    forgotten) is kept here for an operator rather than stored over the first request or
    dropped. `stored_request_hash` is the fingerprint of the request the ledger holds.
    """

    __tablename__ = "ledger_conflicts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    request_id: Mapped[str] = mapped_column(Text)
    row_index: Mapped[int] = mapped_column(Integer)
    request_hash: Mapped[str] = mapped_column(Text)
    stored_request_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    detected_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    __table_args__ = (
        # the same conflicting record delivered twice is kept once
        UniqueConstraint("request_id", "row_index", "request_hash"),
        Index(None, "detected_at"),
    )


class LedgerDeadLetter(Base):
    """A stream entry that could not be stored, kept with its raw payload and the reason."""

    __tablename__ = "ledger_dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    stream_id: Mapped[str] = mapped_column(Text, unique=True)
    payload: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    delivery_count: Mapped[int] = mapped_column(Integer)
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# Core-level handles for bulk statements; declarative tables are always Table instances.
predictions = cast(Table, Prediction.__table__)
ledger_dead_letters = cast(Table, LedgerDeadLetter.__table__)
ledger_conflicts = cast(Table, LedgerConflict.__table__)
