"""runs.replay_corpus_id: the general-domain corpus a run replays against forgetting (``replay_ratio``).

Like the other corpus columns: a foreign key set to NULL when the corpus is deleted after the run ended
(deleting it is refused while an active run uses it), and indexed for that check.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:  # batch: SQLite cannot alter a table in place
        batch.add_column(sa.Column("replay_corpus_id", sa.String(40), nullable=True))
        batch.create_foreign_key(
            op.f("fk_runs_replay_corpus_id_corpora"),
            "corpora",
            ["replay_corpus_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index(op.f("ix_runs_replay_corpus_id"), ["replay_corpus_id"])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index(op.f("ix_runs_replay_corpus_id"))
        batch.drop_constraint(op.f("fk_runs_replay_corpus_id_corpora"), type_="foreignkey")
        batch.drop_column("replay_corpus_id")
