"""Bringing a ledger written by an earlier regsearch up to this one's schema, in place.

Each step adds what its version lacks, with Alembic's operations (the dialect's own DDL),
and skips what is there already: workers opening one ledger at once may both run a step.
Rows already recorded are kept as they are; a column a step adds is NULL in them.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations


def _add_train_eval_loss(op: Operations, inspector: sa.Inspector) -> None:
    """Version 2: the trials' training loss with dropout off (the generalization gap)."""
    if "train_eval_loss" not in {c["name"] for c in inspector.get_columns("regsearch_trials")}:
        op.add_column("regsearch_trials", sa.Column("train_eval_loss", sa.Double, nullable=True))


#: The step that takes a ledger from version N to N + 1.
STEPS: dict[int, Callable[[Operations, sa.Inspector], None]] = {1: _add_train_eval_loss}


def upgrade(connection: sa.Connection, found: int, wanted: int) -> None:
    """Run the steps from version `found` to `wanted` on `connection`."""
    operations = Operations(MigrationContext.configure(connection))
    for version in range(found, wanted):
        STEPS[version](operations, sa.inspect(connection))
