"""Table definitions: the one source for the Alembic migrations, the worker and the API reads."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
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


class ModelVersion(Base):
    """A model version an API has loaded: what its answers are, for the quality and drift views.

    Written by the API at start-up from the bundle's metadata (a bundle version never changes).
    """

    __tablename__ = "model_versions"

    model_name: Mapped[str] = mapped_column(Text, primary_key=True)
    model_version: Mapped[str] = mapped_column(Text, primary_key=True)
    task: Mapped[str] = mapped_column(Text)  # classification or regression
    classes: Mapped[list[Any] | None] = mapped_column(JSONB, nullable=True)
    # [{"name": ..., "type": ...}] in the model's order
    features: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    sha256: Mapped[str] = mapped_column(Text)
    # rows the training reference (reference_bins) was computed on; null without one
    reference_rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    first_loaded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    __table_args__ = (CheckConstraint("task IN ('classification', 'regression')", name="task"),)


class ReferenceBin(Base):
    """One bin of a model version's training reference, and the share of training rows in it.

    A numeric value v falls in the bin where lower <= v < upper (a null bound is unbounded); a
    categorical value (a string or boolean feature, a class label) in the bin whose `category`
    equals it as JSON, or else in the bin with no category and no bounds, "anything else".
    `subject` is `feature` (with the feature's `name`) or `prediction` (name '').
    """

    __tablename__ = "reference_bins"

    model_name: Mapped[str] = mapped_column(Text, primary_key=True)
    model_version: Mapped[str] = mapped_column(Text, primary_key=True)
    subject: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    bin: Mapped[int] = mapped_column(Integer, primary_key=True)
    lower: Mapped[float | None] = mapped_column(Double, nullable=True)
    upper: Mapped[float | None] = mapped_column(Double, nullable=True)
    category: Mapped[Any] = mapped_column(JSONB, nullable=True)
    expected: Mapped[float] = mapped_column(Double)

    __table_args__ = (CheckConstraint("subject IN ('feature', 'prediction')", name="subject"),)


class ReceivedFeedback:
    """A value of feedback as the API accepted it: the columns an actual and a duplicate share."""

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # given by the API to each row it accepts: a redelivered entry is stored once
    feedback_id: Mapped[str] = mapped_column(Text, unique=True)
    request_id: Mapped[str] = mapped_column(Text)
    row_index: Mapped[int] = mapped_column(Integer)
    actual: Mapped[Any] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(Text)  # api (one request) or bulk (a file of them)


class Feedback(ReceivedFeedback, Base):
    """The true outcome of a served row, sent later. Every distinct value sent for a row is kept:
    the newest (by `received_at`) is its actual, the others its history."""

    __tablename__ = "feedback"

    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        Index(None, "request_id", "row_index", "received_at"),
        Index(None, "received_at"),
    )


class FeedbackDuplicate(ReceivedFeedback, Base):
    """Feedback that repeated the value in effect when it was received (the row's newest value
    received before it): not an actual, since nothing changed, but a receipt, so that every row
    of feedback accepted is accounted for exactly once (the audit) whatever order entries were
    stored in. `duplicate_of` is the feedback row whose value it repeats."""

    __tablename__ = "feedback_duplicates"

    duplicate_of: Mapped[str] = mapped_column(Text)
    detected_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    __table_args__ = (
        Index(None, "request_id", "row_index"),
        Index(None, "received_at"),
    )


class Replay(Base):
    """One replay of a model's stored traffic through a candidate version (make replay), per
    version that served the traffic: how often the candidate agrees, and how both do on the rows
    that have feedback."""

    __tablename__ = "replays"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    replay_id: Mapped[str] = mapped_column(Text)
    model_name: Mapped[str] = mapped_column(Text)
    candidate_version: Mapped[str] = mapped_column(Text)
    served_version: Mapped[str] = mapped_column(Text)
    since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    rows: Mapped[int] = mapped_column(BigInteger)
    # rows where the candidate answers what was served
    agreed: Mapped[int] = mapped_column(BigInteger)
    labelled: Mapped[int] = mapped_column(BigInteger)
    # classifiers: labelled rows each answered correctly; regressors: null
    served_correct: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    candidate_correct: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # regressors: mean absolute and root mean squared error on the labelled rows
    served_mae: Mapped[float | None] = mapped_column(Double, nullable=True)
    candidate_mae: Mapped[float | None] = mapped_column(Double, nullable=True)
    served_rmse: Mapped[float | None] = mapped_column(Double, nullable=True)
    candidate_rmse: Mapped[float | None] = mapped_column(Double, nullable=True)

    __table_args__ = (
        Index(None, "model_name", "finished_at"),
        UniqueConstraint("replay_id", "served_version"),
    )


# Core-level handles for bulk statements; declarative tables are always Table instances.
predictions = cast(Table, Prediction.__table__)
ledger_dead_letters = cast(Table, LedgerDeadLetter.__table__)
ledger_conflicts = cast(Table, LedgerConflict.__table__)
model_versions = cast(Table, ModelVersion.__table__)
reference_bins = cast(Table, ReferenceBin.__table__)
feedback = cast(Table, Feedback.__table__)
feedback_duplicates = cast(Table, FeedbackDuplicate.__table__)
replays = cast(Table, Replay.__table__)
