"""The ledger's tables: flat `regsearch_*` rows meant for plain SQL (SQLAlchemy 2.0 models).

One row per study, per trial and per trial-epoch, and per confirmation run (a configuration
trained again with a fresh seed) and its epochs. `Ledger` writes and reads them.
"""

from __future__ import annotations

import math
from datetime import datetime, UTC

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from regsearch.space import RegConfig

SCHEMA_VERSION = 2  # `regsearch.recorders.migrations` brings older ledgers up to it
# MySQL/MariaDB DATETIME drops fractions of a second unless asked for 6 digits.
Timestamp = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def now() -> datetime:
    return datetime.now(UTC)


def finite(value: float | None) -> float | None:
    """NaN/inf become NULL: MySQL cannot store them, and SQL aggregates would choke."""
    return value if value is not None and math.isfinite(value) else None


class Base(DeclarativeBase):
    pass


class MetaRow(Base):
    __tablename__ = "regsearch_meta"
    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(255))


class StudyRow(Base):
    __tablename__ = "regsearch_studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    spec_hash: Mapped[str] = mapped_column(sa.String(64))
    spec: Mapped[str] = mapped_column(sa.Text)
    created: Mapped[datetime] = mapped_column(Timestamp, default=now)
    data_description: Mapped[str] = mapped_column(sa.Text)
    metric: Mapped[str] = mapped_column(sa.String(32))
    direction: Mapped[str] = mapped_column(sa.String(8))
    trials: Mapped[list[TrialRow]] = relationship(back_populates="study",
                                                  order_by="TrialRow.number")


class LockRow(Base):
    """One row per study, locked while a process checks the budget and asks for trials.

    A table of its own, with no foreign keys: inserting trial rows must not wait on it.
    """

    __tablename__ = "regsearch_locks"
    name: Mapped[str] = mapped_column(sa.String(100), primary_key=True)


class EngineStateRow(Base):
    """A KerasTuner study's oracle, as JSON (`regsearch.engines`): the workers of the study
    share it through here, and a resumed study continues it. Written under the study's
    lock; `revision` counts the writes, so a process reads the document only when it
    changed."""

    __tablename__ = "regsearch_engine_states"
    name: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    revision: Mapped[int]
    state: Mapped[str] = mapped_column(sa.Text().with_variant(mysql.LONGTEXT, "mysql",
                                                              "mariadb"))


class TrialRow(Base):
    __tablename__ = "regsearch_trials"
    __table_args__ = (sa.UniqueConstraint("study_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(sa.ForeignKey("regsearch_studies.id"), index=True)
    number: Mapped[int]
    state: Mapped[str] = mapped_column(sa.String(16))
    regularizer: Mapped[str] = mapped_column(sa.String(8))
    l1: Mapped[float] = mapped_column(sa.Double)
    l2: Mapped[float] = mapped_column(sa.Double)
    dropout: Mapped[float] = mapped_column(sa.Double)
    value: Mapped[float | None] = mapped_column(sa.Double)
    best_epoch: Mapped[int | None]
    train_loss: Mapped[float | None] = mapped_column(sa.Double)
    val_loss: Mapped[float | None] = mapped_column(sa.Double)
    #: training data loss at the best epoch, dropout off (`TrialOutcome.train_eval_loss`)
    train_eval_loss: Mapped[float | None] = mapped_column(sa.Double)
    penalty: Mapped[float | None] = mapped_column(sa.Double)
    near_zero_share: Mapped[float | None] = mapped_column(sa.Double)
    test_metric: Mapped[float | None] = mapped_column(sa.Double)
    epochs_run: Mapped[int] = mapped_column(default=0)
    seconds: Mapped[float | None] = mapped_column(sa.Double)
    worker_host: Mapped[str] = mapped_column(sa.String(255))
    mlflow_run_id: Mapped[str | None] = mapped_column(sa.String(64))
    mlflow_synced: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str | None] = mapped_column(sa.Text)
    started: Mapped[datetime] = mapped_column(Timestamp, default=now)
    finished: Mapped[datetime | None] = mapped_column(Timestamp)
    study: Mapped[StudyRow] = relationship(back_populates="trials")
    epochs: Mapped[list[EpochRow]] = relationship(order_by="EpochRow.epoch",
                                                  cascade="all, delete-orphan")
    members: Mapped[list[MemberRow]] = relationship(order_by="MemberRow.member",
                                                    cascade="all, delete-orphan")

    @property
    def config(self) -> RegConfig:
        return RegConfig(self.regularizer, l1=self.l1, l2=self.l2, dropout=self.dropout)


class EpochRow(Base):
    __tablename__ = "regsearch_epochs"
    trial_id: Mapped[int] = mapped_column(sa.ForeignKey("regsearch_trials.id"), primary_key=True)
    epoch: Mapped[int] = mapped_column(primary_key=True)
    train_loss: Mapped[float | None] = mapped_column(sa.Double)
    val_loss: Mapped[float | None] = mapped_column(sa.Double)
    val_metric: Mapped[float | None] = mapped_column(sa.Double)
    penalty: Mapped[float | None] = mapped_column(sa.Double)




class MemberRow(Base):
    """One of the models that score a trial (a fold or a repeat): its objective at the
    trial's best epoch."""

    __tablename__ = "regsearch_trial_members"
    trial_id: Mapped[int] = mapped_column(sa.ForeignKey("regsearch_trials.id"), primary_key=True)
    member: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[float | None] = mapped_column(sa.Double)


class ConfirmationRow(Base):
    """One configuration trained again with one fresh seed, after the search."""

    __tablename__ = "regsearch_confirmations"
    __table_args__ = (sa.UniqueConstraint("study_id", "config_key", "seed_index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(sa.ForeignKey("regsearch_studies.id"), index=True)
    config_key: Mapped[str] = mapped_column(sa.String(255))
    #: the search trial whose configuration this is (None: the default, not searched)
    trial: Mapped[int | None]
    is_default: Mapped[bool] = mapped_column(default=False)
    seed_index: Mapped[int]
    seed: Mapped[int]
    state: Mapped[str] = mapped_column(sa.String(16))
    regularizer: Mapped[str] = mapped_column(sa.String(8))
    l1: Mapped[float] = mapped_column(sa.Double)
    l2: Mapped[float] = mapped_column(sa.Double)
    dropout: Mapped[float] = mapped_column(sa.Double)
    value: Mapped[float | None] = mapped_column(sa.Double)
    best_epoch: Mapped[int | None]
    epochs_run: Mapped[int] = mapped_column(default=0)
    train_loss: Mapped[float | None] = mapped_column(sa.Double)
    val_loss: Mapped[float | None] = mapped_column(sa.Double)
    penalty: Mapped[float | None] = mapped_column(sa.Double)
    test_metric: Mapped[float | None] = mapped_column(sa.Double)
    seconds: Mapped[float | None] = mapped_column(sa.Double)
    reason: Mapped[str | None] = mapped_column(sa.Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(sa.String(64))
    mlflow_synced: Mapped[bool] = mapped_column(default=False)
    finished: Mapped[datetime | None] = mapped_column(Timestamp)
    epochs: Mapped[list[ConfirmationEpochRow]] = relationship(
        order_by="ConfirmationEpochRow.epoch", cascade="all, delete-orphan")

    @property
    def config(self) -> RegConfig:
        return RegConfig(self.regularizer, l1=self.l1, l2=self.l2, dropout=self.dropout)


class ConfirmationEpochRow(Base):
    __tablename__ = "regsearch_confirmation_epochs"
    confirmation_id: Mapped[int] = mapped_column(sa.ForeignKey("regsearch_confirmations.id"),
                                                 primary_key=True)
    epoch: Mapped[int] = mapped_column(primary_key=True)
    train_loss: Mapped[float | None] = mapped_column(sa.Double)
    val_loss: Mapped[float | None] = mapped_column(sa.Double)
    val_metric: Mapped[float | None] = mapped_column(sa.Double)
    penalty: Mapped[float | None] = mapped_column(sa.Double)
