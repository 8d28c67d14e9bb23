"""BERT's metric names on every split: the training split's mlm_loss, mlm_accuracy, nsp_loss and
nsp_accuracy become masked_lm_loss, masked_lm_accuracy, next_sentence_loss and next_sentence_accuracy (the
evaluation splits always had these names). Renames the stored points and the metrics kept in JSON: a run's
latest metrics and its checkpoints' metrics.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Fixed here, not imported: a migration must keep meaning what it meant when it was written.
RENAMES = {
    "mlm_loss": "masked_lm_loss",
    "mlm_accuracy": "masked_lm_accuracy",
    "nsp_loss": "next_sentence_loss",
    "nsp_accuracy": "next_sentence_accuracy",
}

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
run_metrics = sa.table("run_metrics", sa.column("split", sa.String), sa.column("name", sa.String))
# JSON columns holding ``{split: {metric: value}}``: the training split's metrics are renamed.
JSON_COLUMNS = (("runs", "id", "latest"), ("run_checkpoints", ("run_id", "step"), "metrics"))


def _renamed(by_split: Any, renames: Mapping[str, str]) -> Any:
    if not isinstance(by_split, dict) or not isinstance(by_split.get("train"), dict):
        return by_split
    train = {renames.get(name, name): value for name, value in by_split["train"].items()}
    return {**by_split, "train": train}


def _rename(renames: Mapping[str, str]) -> None:
    for old, new in renames.items():
        op.execute(
            run_metrics.update()
            .where(run_metrics.c.split == "train", run_metrics.c.name == old)
            .values(name=new)
        )
    connection = op.get_bind()
    for table_name, key, column in JSON_COLUMNS:
        keys = (key,) if isinstance(key, str) else key
        table = sa.table(table_name, *(sa.column(k) for k in keys), sa.column(column, JSON))
        for row in connection.execute(sa.select(*(table.c[k] for k in keys), table.c[column])):
            value = row[-1]
            renamed = _renamed(value, renames)
            if renamed != value:
                where = sa.and_(*(table.c[k] == row[i] for i, k in enumerate(keys)))
                connection.execute(table.update().where(where).values({column: renamed}))


def upgrade() -> None:
    _rename(RENAMES)


def downgrade() -> None:
    _rename({new: old for old, new in RENAMES.items()})
