"""Initial schema: tenants, API keys, corpora, checkpoints, runs and their metrics, events, checkpoints.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Types are spelled out here (not imported from app.models) so that this revision stays what it was when
the models change.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
RUN_STATUSES = ("queued", "preparing", "running", "cancelling", "succeeded", "failed", "cancelled")


def timestamp(name: str, *, nullable: bool = False) -> sa.Column[sa.DateTime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def newest_first_index(table: str) -> None:
    """The keyset-pagination index: a tenant's rows, newest first."""
    op.create_index(
        f"ix_{table}_tenant_id_created_at_id",
        table,
        ["tenant_id", sa.literal_column("created_at DESC"), sa.literal_column("id DESC")],
    )


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(12), nullable=False),
        timestamp("created_at"),
        timestamp("revoked_at", nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_api_keys_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index(op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"])

    op.create_table(
        "corpora",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("storage_key", sa.String(512), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("documents", sa.BigInteger(), nullable=False),
        sa.Column("sentences", sa.BigInteger(), nullable=False),
        sa.Column("stats", JSON, nullable=False),
        sa.Column("warnings", JSON, nullable=False),
        timestamp("created_at"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_corpora_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_corpora")),
        sa.UniqueConstraint("tenant_id", "sha256", name=op.f("uq_corpora_tenant_id_sha256")),
    )
    newest_first_index("corpora")

    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("storage_key", sa.String(512), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("has_pretraining_heads", sa.Boolean(), nullable=False),
        sa.Column("parameters", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        timestamp("created_at"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_checkpoints_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
    )
    newest_first_index("checkpoints")

    op.create_table(
        "runs",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column(
            "status",
            sa.Enum(*RUN_STATUSES, name="run_status", native_enum=False, create_constraint=True, length=16),
            nullable=False,
        ),
        sa.Column("base_model", sa.String(300), nullable=False),
        sa.Column("corpus_id", sa.String(40), nullable=True),
        sa.Column("eval_corpus_id", sa.String(40), nullable=True),
        sa.Column("reference_corpus_id", sa.String(40), nullable=True),
        sa.Column("hyperparameters", JSON, nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        timestamp("created_at"),
        timestamp("started_at", nullable=True),
        timestamp("finished_at", nullable=True),
        sa.Column("progress", JSON, nullable=False),
        sa.Column("latest", JSON, nullable=False),
        sa.Column("baseline", JSON, nullable=False),
        sa.Column("warnings", JSON, nullable=False),
        sa.Column("error", JSON, nullable=True),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=True),
        timestamp("heartbeat_at", nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("output_storage_key", sa.String(512), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_runs_tenant_id_tenants")),
        # A finished run outlives the corpora it used (an active one blocks their deletion).
        *(
            sa.ForeignKeyConstraint(
                [column], ["corpora.id"], name=op.f(f"fk_runs_{column}_corpora"), ondelete="SET NULL"
            )
            for column in ("corpus_id", "eval_corpus_id", "reference_corpus_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name=op.f("uq_runs_tenant_id_idempotency_key")),
    )
    for column in ("corpus_id", "eval_corpus_id", "reference_corpus_id", "status"):
        op.create_index(op.f(f"ix_runs_{column}"), "runs", [column])
    newest_first_index("runs")

    op.create_table(
        "run_metrics",
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("split", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_metrics_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "split", "name", "step", name=op.f("pk_run_metrics")),
    )
    op.create_table(
        "run_events",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(40), nullable=False),
        timestamp("created_at"),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_events_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_events")),
    )
    op.create_index("ix_run_events_run_id_id", "run_events", ["run_id", "id"])
    op.create_table(
        "run_checkpoints",
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        timestamp("created_at"),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("storage_key", sa.String(512), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_checkpoints_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "step", name=op.f("pk_run_checkpoints")),
    )


def downgrade() -> None:
    for table in (
        "run_checkpoints",
        "run_events",
        "run_metrics",
        "runs",
        "checkpoints",
        "corpora",
        "api_keys",
    ):
        op.drop_table(table)
    op.drop_table("tenants")
