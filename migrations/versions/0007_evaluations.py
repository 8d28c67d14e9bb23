"""evaluations: downstream comparisons of models on a labelled dataset, queued to the workers like runs;
runs.downstream: a run's downstream settings (its evaluation is queued when it succeeds).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

Types are spelled out here (not imported from app.models) so that this revision stays what it was when
the models change.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
EVALUATION_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


def timestamp(name: str, *, nullable: bool = False) -> sa.Column[sa.DateTime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("dataset_id", sa.String(40), nullable=True),
        sa.Column("run_id", sa.String(40), nullable=True),
        sa.Column("models", JSON, nullable=False),
        sa.Column("resolved_models", JSON, nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("seeds", sa.Integer(), nullable=False),
        sa.Column("hyperparameters", JSON, nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                *EVALUATION_STATUSES,
                name="evaluation_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("worker_id", sa.String(200), nullable=True),
        timestamp("heartbeat_at", nullable=True),
        timestamp("sent_at", nullable=True),
        sa.Column("progress", JSON, nullable=False),
        sa.Column("result", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        timestamp("created_at"),
        timestamp("started_at", nullable=True),
        timestamp("finished_at", nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_evaluations_tenant_id_tenants")),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_evaluations_dataset_id_datasets"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_evaluations_run_id_runs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    op.create_index(op.f("ix_evaluations_dataset_id"), "evaluations", ["dataset_id"])
    # One downstream evaluation per run (NULLs, the evaluations of no run, are all distinct).
    op.create_index(op.f("ix_evaluations_run_id"), "evaluations", ["run_id"], unique=True)
    op.create_index(op.f("ix_evaluations_status"), "evaluations", ["status"])
    # The keyset-pagination index: a tenant's evaluations, newest first.
    op.create_index(
        "ix_evaluations_tenant_id_created_at_id",
        "evaluations",
        ["tenant_id", sa.literal_column("created_at DESC"), sa.literal_column("id DESC")],
    )
    with op.batch_alter_table("runs") as batch:  # batch: SQLite cannot alter a table in place
        batch.add_column(sa.Column("downstream", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("downstream")
    op.drop_index("ix_evaluations_tenant_id_created_at_id", table_name="evaluations")
    op.drop_index(op.f("ix_evaluations_status"), table_name="evaluations")
    op.drop_index(op.f("ix_evaluations_run_id"), table_name="evaluations")
    op.drop_index(op.f("ix_evaluations_dataset_id"), table_name="evaluations")
    op.drop_table("evaluations")
