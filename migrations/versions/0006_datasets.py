"""datasets: uploaded labelled datasets for downstream evaluation.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

Types are spelled out here (not imported from app.models) so that this revision stays what it was when
the models change.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("storage_key", sa.String(512), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("examples", sa.BigInteger(), nullable=False),
        sa.Column("test_filename", sa.String(255), nullable=True),
        sa.Column("test_format", sa.String(8), nullable=True),
        sa.Column("test_storage_key", sa.String(512), nullable=True),
        sa.Column("test_bytes", sa.BigInteger(), nullable=True),
        sa.Column("test_examples", sa.BigInteger(), nullable=True),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("has_text_pair", sa.Boolean(), nullable=False),
        sa.Column("ignored_columns", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_datasets_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("tenant_id", "sha256", name=op.f("uq_datasets_tenant_id_sha256")),
    )
    # The keyset-pagination index: a tenant's datasets, newest first.
    op.create_index(
        "ix_datasets_tenant_id_created_at_id",
        "datasets",
        ["tenant_id", sa.literal_column("created_at DESC"), sa.literal_column("id DESC")],
    )


def downgrade() -> None:
    op.drop_index("ix_datasets_tenant_id_created_at_id", table_name="datasets")
    op.drop_table("datasets")
